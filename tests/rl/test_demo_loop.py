"""`forge demo` end to end: the loop runs on real services and learns, in both modes."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys

import pytest

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (scripts/setup.sh installs it)")
def test_async_learns_as_well_as_sync_with_vllm_on_the_default_settings(tmp_path):
    """`forge demo --mode sync` and `--mode async` (the default), same seed, as a user runs
    them: the async run reaches the reward and the greedy accuracy of the sync one."""
    runs = {}
    for mode in ("sync", "async"):
        path = tmp_path / f"{mode}.json"
        done = subprocess.run([sys.executable, "-m", "forge_core.cli", "demo", "--mode", mode,
                               "--output", str(tmp_path / mode), "--json", str(path)],
                              check=True, timeout=280, capture_output=True, text=True)
        runs[mode] = json.loads(path.read_text())
        # The terminal shows the demo's own progress; vLLM's output is in engines.log, named.
        shown = done.stdout + done.stderr
        assert "INFO" not in shown and "[Policy.r" not in shown, shown[-3000:]
        engines = (tmp_path / mode / "engines.log").read_text()
        assert "[Policy.r0 0]" in engines and "[Policy.r1 0]" in engines
    sync, asyn = runs["sync"], runs["async"]
    assert asyn["mode"] == "async" and sync["mode"] == "sync" and len(asyn["steps"]) == 50
    last10 = statistics.fmean(s["reward"] for s in asyn["steps"][-10:])
    assert last10 >= 0.7, last10
    assert asyn["greedy_accuracy"] >= sync["greedy_accuracy"] - 0.05, (asyn, sync)
    assert max(s["policy_age_max"] for s in asyn["steps"]) <= 1
    for key in ("samples_per_s", "greedy_accuracy", "dropped_stale"):
        assert key in asyn and key in sync
    assert set(asyn["steps"][0]) >= {"step", "reward", "success", "seconds", "policy_age_max"}


def test_demo_help_lists_the_knobs():
    out = subprocess.run([sys.executable, "-m", "forge_core.cli", "demo", "--help"],
                         capture_output=True, text=True, timeout=60)
    for knob in ("--steps", "--replicas", "--hidden-size", "--seed", "--transport", "--output",
                 "--generator", "--kill-replica-at", "--mode", "--max-policy-age", "--json",
                 "--verbose", "--dashboard"):
        assert knob in out.stdout
