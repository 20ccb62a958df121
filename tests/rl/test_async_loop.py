"""The RL loop on real services (the demo's actors, torch generator): async is sync at age 0,
the staleness bound holds, kills and failing rollouts are survived, a stopped run leaves no
process behind."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest

from forge_rl.demo.loop import DemoConfig, run, start_services, stop_services
from forge_rl.loop import LoopConfig, run_loop
from forge_rl.demo.task import AdditionTask

QUIET = dict(log=lambda line: None)


@pytest.mark.timeout(240)
async def test_async_at_policy_age_zero_is_exactly_the_sync_loop(tmp_path):
    common = dict(steps=6, generator="torch", seed=3, output=str(tmp_path))
    sync = await run(DemoConfig(mode="sync", **common), **QUIET)
    lagless = await run(DemoConfig(mode="async", max_policy_age=0, **common), **QUIET)
    assert [r.samples for r in lagless.steps] == [r.samples for r in sync.steps]
    for a, s in zip(lagless.steps, sync.steps):
        assert a.reward == pytest.approx(s.reward, abs=1e-6)
        assert a.loss == pytest.approx(s.loss, abs=1e-6)
        assert a.policy_age_max == s.policy_age_max == 0
    assert any(r.loss != 0.0 for r in sync.steps)  # the comparison is not of empty steps
    assert lagless.greedy_accuracy == sync.greedy_accuracy


@pytest.mark.timeout(240)
async def test_kill_9_of_a_replica_mid_run_the_bound_holds_and_the_replacement_is_current(tmp_path):
    lines: list[str] = []
    result = await run(DemoConfig(mode="async", max_policy_age=1, steps=40, generator="torch",
                                  kill_replica_at=3, output=str(tmp_path),
                                  json=str(tmp_path / "run.json")), log=lines.append)
    assert len(result.steps) == 40 and result.rollout_failures == 0
    # The bound, from the buffer's own records of every batch it handed out.
    assert len(result.sample_records) == 40
    assert all(r.max_age <= 1 for r in result.sample_records)
    assert all(g >= r.current_version - 1 for r in result.sample_records
               for g in r.policy_versions)
    assert max(r.policy_age_max for r in result.steps) == 1  # it did run ahead
    # The recovery, and the replacement's first answers came from the newest weights.
    match = re.search(r"replaced and serving again .*killed at version (\d+).*replacement's "
                      r"first answer came from weights version (\d+)", result.recovery)
    assert match, "\n".join(lines)
    assert int(match.group(2)) >= int(match.group(1)) == 3
    text = "\n".join(lines)
    assert "reward curve:" in text and (tmp_path / "reward_curve.png").exists()
    for phase in ("wait", "train", "publish", "samples/s", "trainer idle", "policy idle"):
        assert phase in text
    first, last = [statistics.fmean(r.reward for r in part)
                   for part in (result.steps[:5], result.steps[-5:])]
    assert last > 2 * first  # it learns, even across the kill
    summary = (tmp_path / "run.json").read_text()
    assert '"mode": "async"' in summary and '"policy_age_max"' in summary


@pytest.mark.timeout(240)
async def test_a_rollout_whose_policy_call_fails_is_counted_and_skipped(tmp_path):
    from rl_actors import FlakyPolicy

    cfg = DemoConfig(generator="torch", steps=4, output=str(tmp_path))
    services = await start_services(cfg, "torch", policy_class=FlakyPolicy)
    try:
        for mode in ("async", "sync"):
            loop = LoopConfig(mode=mode, steps=4, chunks_per_step=4, group_size=4,
                              rollout_loops=4, seed=1)
            result = await run_loop(loop, services, AdditionTask().prompt_source(1, 4), **QUIET)
            assert len(result.steps) == 4 and result.rollout_failures > 0, mode
            assert sum(r.samples for r in result.steps) > 0
    finally:
        await stop_services(services)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_stopping_a_run_mid_step_leaves_no_process_behind(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "forge_core.cli", "demo", "--generator", "torch", "--steps",
         "1000", "--output", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        for line in demo.stdout:
            if "step   3/1000" in line:
                break
        else:
            pytest.fail("the demo ended before its third step")
        procs = _descendants(demo.pid)
        assert len(procs) >= 5  # fork server, 2 replicas, reward, trainer, buffer
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        demo.communicate(timeout=30)
        deadline = time.monotonic() + 5
        while any(map(_alive, procs)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in procs if _alive(p)]
    finally:
        if demo.poll() is None:
            demo.kill()
