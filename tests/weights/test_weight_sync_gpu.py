"""GPU weight sync: CUDA IPC between two processes on one GPU, NCCL with the world the machine
has. Marked ``gpu``: skipped cleanly without a CUDA GPU (the root conftest). On a GPU machine:

    python -m pytest tests/weights -m gpu -v
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import torch

from forge_core import plugins
from forge_core.actor import spawn_procs
from forge_core.errors import PluginError
from forge_core.weights import WeightPublisher
from weight_actors import GpuPolicy, GpuTrainer, NcclProbe, make_model

pytestmark = pytest.mark.timeout(180)
ENV = {"FORGE_TRANSPORT": "tcp"}


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_gpu_backends_say_why_they_cannot_run_by_name():
    """Without cupy or a GPU: (False, reason), never an ImportError; forcing one names it."""
    backends = plugins.weight_sync_backends()
    assert {"cuda_ipc", "nccl"} <= set(backends)
    for name in ["cuda_ipc", "nccl"]:
        ok, why = backends[name].available()
        assert isinstance(ok, bool) and (ok or why)
        if not ok:
            with pytest.raises(PluginError, match=f"{name}.*cannot run here: {why[:20]}"):
                asyncio.run(WeightPublisher(name, group_size=1).publish(
                    make_model(0).state_dict(), 1))
    assert "cupy" not in sys.modules or gpu_count()  # nothing imported cupy on a CPU machine


def assert_equal(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.mark.gpu
async def test_cuda_ipc_between_two_processes_on_one_gpu_is_bit_exact():
    before = set(os.listdir("/dev/shm"))
    procs = spawn_procs({"procs": 2}, env=ENV)  # no "gpus" dimension: both see GPU 0
    try:
        trainer = procs.slice(procs=0).spawn("trainer", GpuTrainer, "cuda_ipc")
        policy = procs.slice(procs=1).spawn("policy", GpuPolicy)
        for version in range(1, 6):
            handle = await trainer.step_and_publish.call_one(version)
            assert [name for name, _ in handle.sources] == ["cuda_ipc"]
            assert await policy.update_weights.call_one(handle)
            expected = await trainer.weights.call_one()
            assert_equal(await policy.weights.call_one(), expected)
        assert_equal(await policy.fetch_on_gpu.call_one(handle), expected)
        auto = await procs.slice(procs=0).spawn("auto", GpuTrainer, "auto").publish.call_one(1)
        assert [name for name, _ in auto.sources] == ["cuda_ipc", "tcp"]
        await trainer.close.call_one()
    finally:
        await procs.stop()
    assert set(os.listdir("/dev/shm")) == before


@pytest.mark.gpu
async def test_nccl_bootstrap_and_broadcast_with_the_world_this_machine_has():
    """A world of one on a one-GPU machine (NCCL cannot put two ranks on a GPU); the same code
    with every GPU as a rank elsewhere."""
    world = min(gpu_count(), 4)
    procs = spawn_procs({"gpus": world}, env=ENV)
    try:
        probes = procs.spawn("probe", NcclProbe)
        unique_id = await probes.slice(gpus=0).unique_id.call_one()  # through an actor message
        await asyncio.gather(*(probes.slice(gpus=rank).join.call_one(world, unique_id, rank)
                               for rank in range(world)))
        expected = {k: v.cpu() for k, v in make_model(0).cuda().state_dict().items()}
        for received in await probes.broadcast_model.call(0):
            assert_equal(received, expected)
        await probes.close.call()
    finally:
        await procs.stop()


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() < 2, reason="NCCL between processes needs two GPUs")
async def test_nccl_publisher_to_replicas_on_other_gpus_is_bit_exact():
    replicas = min(gpu_count() - 1, 3)
    trainer_procs = spawn_procs({"gpus": 1}, env=ENV)
    policy_procs = spawn_procs({"gpus": replicas}, env=ENV)
    try:
        trainer = trainer_procs.spawn("trainer", GpuTrainer, "nccl", group_size=replicas)
        policies = policy_procs.spawn("policy", GpuPolicy)
        for version in range(1, 4):
            handle = await trainer.step_and_publish.call_one(version)
            assert all(await policies.update_weights.call(handle))
            expected = await trainer.weights.call_one()
            for replica in await policies.weights.call():
                assert_equal(replica, expected)
    finally:
        await asyncio.gather(trainer_procs.stop(), policy_procs.stop())
