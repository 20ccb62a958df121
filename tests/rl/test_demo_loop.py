"""`forge demo` end to end, shortened: the loop runs on real services and learns."""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys

import pytest

from forge_rl.demo.loop import DemoConfig, run

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _direction(records, window=5):
    rewards = [r.reward for r in records]
    return statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])


@pytest.mark.timeout(300)
async def test_the_loop_learns_with_the_torch_generator(tmp_path):
    lines: list[str] = []
    records = await run(DemoConfig(steps=25, generator="torch", output=str(tmp_path)),
                        log=lines.append)
    first, last = _direction(records)
    assert last > first * 1.5 and last > 0.15, (first, last)
    text = "\n".join(lines)
    assert "reward curve:" in text and (tmp_path / "reward_curve.png").exists()
    for phase in ("generate", "reward", "train", "sync"):
        assert phase in text


@pytest.mark.timeout(300)
async def test_a_killed_policy_replica_is_replaced_and_the_run_goes_on(tmp_path):
    lines: list[str] = []
    records = await run(DemoConfig(steps=12, generator="torch", kill_replica_at=3,
                                   output=str(tmp_path)), log=lines.append)
    assert len(records) == 12
    text = "\n".join(lines)
    assert "killed policy replica" in text
    assert "replaced and serving again" in text, text


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (scripts/setup.sh installs it)")
async def test_the_loop_learns_with_vllm(tmp_path):
    records = await run(DemoConfig(steps=25, generator="vllm", output=str(tmp_path)),
                        log=lambda line: None)
    first, last = _direction(records)
    assert last > first * 1.5, (first, last)


def test_demo_help_lists_the_knobs():
    out = subprocess.run([sys.executable, "-m", "forge_core.cli", "demo", "--help"],
                         capture_output=True, text=True, timeout=60)
    for knob in ("--steps", "--replicas", "--hidden-size", "--seed", "--transport", "--output",
                 "--generator", "--kill-replica-at"):
        assert knob in out.stdout
