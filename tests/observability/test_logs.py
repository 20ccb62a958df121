"""Every proc's lines reach the client named [mesh rank]; the same line from many ranks
within the window is folded into one with a count; a rank's own lines keep their order;
nothing is lost when a proc dies right after printing; logs="file" keeps them out of the
client's output."""

from __future__ import annotations

import os
import re

import pytest

from forge_core.actor import SupervisionError, spawn_procs

from obs_actors import Worker

pytestmark = pytest.mark.timeout(60)


async def test_the_same_line_from_8_ranks_arrives_once_with_a_count(capfd):
    procs = spawn_procs({"procs": 8}, name="octet")
    workers = procs.spawn("worker", Worker)
    await workers.say.call("loading weights from disk")
    await procs.stop()
    out, _ = capfd.readouterr()
    lines = [line for line in out.splitlines() if "loading weights" in line]
    assert lines == ["[octet x8: 0-7] loading weights from disk"], out


async def test_distinct_lines_keep_their_order_per_rank(capfd):
    procs = spawn_procs({"procs": 4}, name="talkers")
    workers = procs.spawn("worker", Worker)
    # Every rank prints the same lines in another order: folding must not reorder any rank.
    orders = [["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"], ["a", "c", "b"]]
    for rank, order in enumerate(orders):
        workers.slice(procs=rank).say_many.call_one([f"line {x}" for x in order])
    await workers.ping.call()  # each rank has finished printing
    await procs.stop()
    out, _ = capfd.readouterr()
    seen: dict[int, list[str]] = {r: [] for r in range(4)}
    for line in out.splitlines():
        match = re.match(r"\[talkers (?:(\d+)|x\d+: ([\d,-]+))\] (line \w)", line)
        if match is None:
            continue
        for rank in [int(match.group(1))] if match.group(1) else _ranks(match.group(2)):
            seen[rank].append(match.group(3))
    assert seen == {r: [f"line {x}" for x in order] for r, order in enumerate(orders)}, out


def _ranks(spans: str) -> list[int]:
    out = []
    for span in spans.split(","):
        low, _, high = span.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


async def test_nothing_is_lost_when_a_proc_dies_right_after_printing(capfd):
    procs = spawn_procs({"procs": 2}, name="doomed")
    workers = procs.spawn("worker", Worker)
    await workers.ping.call()
    with pytest.raises(SupervisionError):
        await workers.slice(procs=1).say_and_die.call_one("my last words")
    await procs.stop()
    out, _ = capfd.readouterr()
    assert "[doomed 1] my last words" in out.splitlines(), out


async def test_logs_file_keeps_the_lines_out_of_the_clients_output(capfd, tmp_path):
    path = tmp_path / "engines.log"
    procs = spawn_procs({"procs": 2}, name="quiet", logs="file", log_file=str(path))
    workers = procs.spawn("worker", Worker)
    await workers.say.call("only in the file")
    await procs.stop()
    out, _ = capfd.readouterr()
    assert "only in the file" not in out
    assert sorted(path.read_text().splitlines()) == [
        "[quiet 0] only in the file", "[quiet 1] only in the file"]


def test_bad_log_options_fail_before_any_process_starts():
    with pytest.raises(ValueError, match="log_file"):
        spawn_procs({"procs": 1}, logs="file")
    with pytest.raises(ValueError, match="stream, file, both"):
        spawn_procs({"procs": 1}, logs="nowhere")
