"""`forge grpo --config FILE.yaml key=value...` on tiny random Llama, Qwen2 and Qwen3
directories, as a user runs it (vLLM generates where installed): 3 steps each, finite losses, changed weights, replicas
answering from the trainer's weights after every sync, a checkpoint that transformers loads
and that a run resumes from; a bad config fails before any process starts."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("transformers")
HAS_VLLM = importlib.util.find_spec("vllm") is not None

from hf_models import ARCHITECTURES  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def grpo(tmp_path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forge_core.cli", "grpo", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_three_grpo_steps_through_the_cli(models, arch, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {models[arch]}\nsteps: 3\n")
    # qwen3 runs lock-step and keeps step 2's checkpoint: a resumed run must repeat step 3.
    more = ["mode=sync", "checkpoint_every=2"] if arch == "qwen3" else []
    beta = ["beta=0"] if arch == "llama" else []  # beta 0: no reference model at all
    report_path = tmp_path / "run.json"
    done = grpo(tmp_path, "--config", str(config), *beta, *more, f"output={tmp_path / 'out'}",
                "--json", str(report_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert len(report["losses"]) == 3 and all(math.isfinite(x) for x in report["losses"])
    assert report["weights_changed"]
    assert report["reference"] == (arch != "llama")
    # After the syncs the replica answers from the trainer's weights: vLLM's logprobs of a
    # fixed completion are the trainer's (float32 on the CPU; its kernels differ a little).
    assert report["generator"] == ("vllm" if HAS_VLLM else "torch")
    assert report["sync_max_abs_diff"] < (1e-3 if HAS_VLLM else 1e-5)
    assert "step   3/3" in done.stdout and "INFO" not in done.stdout
    from transformers import AutoModelForCausalLM

    checkpoint = report["checkpoint"]
    assert os.path.isfile(os.path.join(checkpoint, "trainer_state.pt"))
    assert AutoModelForCausalLM.from_pretrained(checkpoint) is not None
    if arch == "qwen3":  # resume from step 2 (vLLM serves that checkpoint): the same step 3
        resumed = resume_from(tmp_path, config, os.path.join(checkpoint, "..", "step-2"))
        assert resumed["first_step"] == 2 and len(resumed["steps"]) == 1
        assert resumed["checkpoint"].endswith("step-3")
        # The uninterrupted run's step 3: its prompts, samples, loss and the weights after it.
        assert resumed["steps"][0]["samples"] == report["steps"][2]["samples"]
        assert abs(resumed["losses"][0] - report["losses"][2]) < 1e-5, (resumed, report)
        assert max_weight_difference(checkpoint, resumed["checkpoint"]) < 1e-5
    if arch == "llama":  # the transformers generator, where vLLM is missing, runs the same
        plain = tmp_path / "plain.json"
        done = grpo(tmp_path, "--config", str(config), "steps=1", "beta=0", "generator=torch",
                    f"output={tmp_path / 'out3'}", "--json", str(plain))
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(plain.read_text())
        assert report["generator"] == "torch" and report["sync_max_abs_diff"] < 1e-5


def resume_from(tmp_path, config, checkpoint: str) -> dict:
    """``forge grpo`` again with the same config (steps=3 in all) from ``checkpoint``."""
    again = tmp_path / "again.json"
    done = grpo(tmp_path, "--config", str(config), "mode=sync", f"resume={checkpoint}",
                f"output={tmp_path / 'out2'}", "--json", str(again))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout and "step   3/3" in done.stdout, done.stdout
    return json.loads(again.read_text())


def max_weight_difference(a: str, b: str) -> float:
    from safetensors.torch import load_file

    [x], [y] = ([load_file(os.path.join(d, f)) for f in os.listdir(d)
                 if f.endswith(".safetensors")] for d in (a, b))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.parametrize("args, message", [
    (["steps=3", "stepz=4"], "unknown key 'stepz'"),
    (["model=/nowhere", "steps=3"], "model: '/nowhere' is not a directory"),
])
def test_a_bad_config_fails_at_once_from_the_cli(tmp_path, args, message):
    started = time.monotonic()
    done = grpo(tmp_path, *args, timeout=60)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert time.monotonic() - started < 20  # no process was started (python's own start only)
    assert not (tmp_path / "forge-grpo-out").exists()


@pytest.mark.gpu
def test_the_same_run_on_cuda_syncs_weights_over_cuda_ipc(models, tmp_path):
    """On a GPU host: the trainer trains on CUDA and its weights reach the replica over
    cuda_ipc (the publisher's choice for CUDA tensors on one host)."""
    report_path = tmp_path / "run.json"
    done = grpo(tmp_path, f"model={models['qwen3']}", "steps=3", "device=cuda",
                f"output={tmp_path / 'out'}", "--json", str(report_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["device"] == "cuda" and report["weights_changed"]
    assert report["sync_max_abs_diff"] < 1e-3
    assert "cuda_ipc" in report["weight_sync_backends"]
