"""GPU and core allocation, checked in the environment each spawned process actually sees.

A stand-in inventory of 8 devices (FORGE_FAKE_GPUS=8) runs the same allocation code as real
GPUs; the gpu-marked test checks the real inventory and torch in each process.
"""

from __future__ import annotations

import os
import warnings

import pytest

from forge_core.actor import Actor, endpoint, spawn_procs
from forge_core.allocation import AllocationError

pytestmark = pytest.mark.timeout(60)

TORCH_DIST = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"]


class Env(Actor):
    @endpoint
    def env(self, names):
        return {n: os.environ.get(n) for n in names}

    @endpoint
    def affinity(self):
        return sorted(os.sched_getaffinity(0))

    @endpoint
    def torch_devices(self):
        import torch

        return torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture
def eight_fake_gpus(monkeypatch):
    monkeypatch.setenv("FORGE_FAKE_GPUS", "8")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("FORGE_STRICT_GPUS", raising=False)


def _envs(procs, names=("CUDA_VISIBLE_DEVICES", *TORCH_DIST)):
    return list(procs.spawn("env", Env).env.call(list(names)).get(timeout=30))


def test_each_gpu_process_gets_its_own_device_and_torch_distributed_env(eight_fake_gpus):
    procs = spawn_procs(per_host={"gpus": 4})
    envs = _envs(procs)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3"]
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"}
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs}) == 1
    procs.stop().get(timeout=10)


def test_meshes_share_a_host_without_overlap_and_devices_return(eight_fake_gpus):
    policy = spawn_procs(per_host={"gpus": 4}, name="policy")
    trainer = spawn_procs(per_host={"gpus": 2}, name="trainer")
    cpu_only = spawn_procs(per_host={"procs": 2})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in _envs(policy)] == ["0", "1", "2", "3"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in _envs(trainer)] == ["4", "5"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in _envs(cpu_only)] == [None, None]
    with pytest.raises(AllocationError, match=r"asks for 4 GPU\(s\) but 2 of 8 are free.*"
                                              r"policy \(4\).*trainer \(2\)"):
        spawn_procs(per_host={"gpus": 4})
    policy.stop().get(timeout=10)
    again = spawn_procs(per_host={"gpus": 4})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in _envs(again)] == ["0", "1", "2", "3"]
    for mesh in (again, trainer, cpu_only):
        mesh.stop().get(timeout=10)


def test_the_parents_visible_devices_are_honoured(monkeypatch, eight_fake_gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3,6")
    procs = spawn_procs(per_host={"gpus": 3})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in _envs(procs)] == ["1", "3", "6"]
    with pytest.raises(AllocationError, match="0 of 3 are free"):
        spawn_procs(per_host={"gpus": 1})
    procs.stop().get(timeout=10)


def test_several_gpus_per_process(eight_fake_gpus):
    procs = spawn_procs(per_host={"procs": 2}, gpus_per_proc=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in _envs(procs)] == ["0,1", "2,3"]
    procs.stop().get(timeout=10)


def test_no_gpu_host_warns_once_and_strict_refuses(monkeypatch):
    monkeypatch.delenv("FORGE_FAKE_GPUS", raising=False)
    monkeypatch.setenv("FORGE_GPU_INVENTORY", "fake")  # the real one would find none here
    import forge_core.allocation as allocation

    monkeypatch.setattr(allocation, "_warned", False)
    with pytest.warns(RuntimeWarning, match="CPU processes"):
        procs = spawn_procs(per_host={"gpus": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = spawn_procs(per_host={"gpus": 1})  # only one warning per process
    assert [e["CUDA_VISIBLE_DEVICES"] for e in _envs(procs)] == [None, None]
    with pytest.raises(AllocationError, match="strict"):
        spawn_procs(per_host={"gpus": 1}, strict=True)
    monkeypatch.setenv("FORGE_STRICT_GPUS", "1")
    with pytest.raises(AllocationError):
        spawn_procs(per_host={"gpus": 1})
    procs.stop().get(timeout=10)
    second.stop().get(timeout=10)


def test_processes_bind_to_their_own_cores():
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    procs = spawn_procs(per_host={"procs": 2}, cpus_per_proc=1)
    affinities = list(procs.spawn("a", Env).affinity.call().get(timeout=30))
    assert affinities == [[cores[0]], [cores[1]]]
    with pytest.raises(AllocationError, match="CPU core"):
        spawn_procs(per_host={"procs": len(cores)}, cpus_per_proc=1)
    procs.stop().get(timeout=10)
    numa = spawn_procs(per_host={"procs": 1}, numa=True)
    assert numa.spawn("a", Env).affinity.call_one().get(timeout=30)
    numa.stop().get(timeout=10)


@pytest.mark.gpu
def test_real_inventory_and_torch_sees_only_its_device(monkeypatch):
    monkeypatch.delenv("FORGE_FAKE_GPUS", raising=False)
    from forge_allocators import NvidiaInventory

    devices = NvidiaInventory().devices()
    assert devices, "a GPU machine must report its GPUs"
    procs = spawn_procs(per_host={"gpus": len(devices)}, strict=True)
    seen = list(procs.spawn("t", Env).torch_devices.call().get(timeout=120))
    assert [count for count, _ in seen] == [1] * len(devices)
    assert [visible for _, visible in seen] == devices
    procs.stop().get(timeout=10)
