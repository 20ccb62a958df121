"""``forge bench``: the quick suite end to end (table, JSON, chart), and its option parsing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from forge_core.bench import report
from forge_core.bench.figures import Figure
from forge_core.bench.options import Options, parse_size
from forge_core.bench.suite import Result


@pytest.mark.timeout(300)  # about 30 s on 2 quiet cores; a shared machine can take longer
def test_forge_bench_quick_writes_a_table_json_and_chart(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    run = subprocess.run(
        [sys.executable, "-m", "forge_core.cli", "bench", "--quick", "--json", str(out_json),
         "--plot", str(out_png)], capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for line in ("machine ", "python ", "packages ", "commit ", "x floor"):
        assert line in run.stdout
    assert "[1/" in run.stderr  # the progress, one line per step off a terminal

    data = json.loads(out_json.read_text())
    assert data["format"] == report.FORMAT and data["options"]["quick"]
    figures = {f["key"]: f for f in data["figures"]}
    for transport in ("in-process", "shm", "tcp"):
        assert f"latency/rtt p50/{transport}" in figures
        assert f"pipelined/pipelined/{transport}" in figures
        assert f"tensor/tensor 1 MiB/{transport}" in figures
    for transport in ("shm", "tcp"):
        assert figures[f"latency/rtt p99/{transport}"]["floor"] == (
            f"{'unix' if transport == 'shm' else 'tcp'} ping-pong p99")
        assert f"mesh/call() 4 procs/{transport}" in figures
        # --quick syncs 64 MiB, and the figure's name says so (never compared with 1 GiB's).
        assert f"weights/sync 64 MiB, GB/s per replica/{transport}" in figures
        assert f"weights/sync 64 MiB, step/{transport}" in figures
    assert "weight sync of 64 MiB to 2 replicas" in run.stdout
    for policy in ("round_robin", "least_loaded", "session_sticky"):
        assert f"services/p99, 1 of 3 replicas slow/{policy}" in figures
    assert "services/route() p50/round_robin" in figures
    assert any("cuda_ipc" in reason for reason in data["skipped"]) or any(
        f["transport"] == "cuda_ipc" for f in data["figures"])

    for figure in data["figures"]:  # medians over repeats, never one run: weight sync too
        assert figure["median"] > 0, figure
        assert figure["repeats"] == len(figure["samples"]) == 3, figure
        assert figure["min"] <= figure["median"] <= figure["max"], figure
        if figure["floor"]:
            assert figure["floor_samples"] and figure["ratio"] > 0, figure

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size > 10_000

    # --compare against itself: every shared figure is "1.00 same".
    result = Result([Figure.from_json(f) for f in data["figures"]], [], data["elapsed_s"])
    table = report.table(result, data["header"], report.load(out_json))
    assert "new/old" in table and "1.00 same" in table and "worse" not in table


def test_options_parse_only_sizes_and_repeat():
    options = Options.make(only="tcp,inproc", sizes="1M,512K,2G", repeat=2)
    assert options.transports == ("in-process", "tcp")
    assert options.weight_backends == ("tcp",)
    assert options.sizes == (1 << 20, 512 << 10, 2 << 30)
    assert options.repeat == 2 and options.sections == Options().sections
    assert Options.make(only="services").transports == Options().transports
    assert Options.make(only="services").sections == ("services",)
    assert Options.make(quick=True).repeat == 3
    with pytest.raises(ValueError, match="unknown rdma"):
        Options.make(only="rdma")
    with pytest.raises(ValueError):
        Options.make(repeat=0)
    assert parse_size("64MiB") == parse_size("64M") == 64 << 20


def test_compare_says_which_way_a_figure_moved():
    def figure(value: float, higher: bool) -> Figure:
        return Figure("latency", "rtt p50", "tcp", "us", higher, [value])

    old = {"figures": [figure(100.0, False).to_json()]}
    assert report.changes([figure(150.0, False)], old) == {"latency/rtt p50/tcp": "1.50 worse"}
    assert report.changes([figure(150.0, True)], old) == {"latency/rtt p50/tcp": "1.50 better"}
    assert report.changes([figure(105.0, False)], old) == {"latency/rtt p50/tcp": "1.05 same"}


def test_bad_options_fail_before_anything_runs():
    run = subprocess.run([sys.executable, "-m", "forge_core.cli", "bench", "--only", "rdma"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "unknown rdma" in run.stderr
