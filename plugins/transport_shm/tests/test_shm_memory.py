"""Bulk buffers through shared memory: read in place, never overwritten while held, pooled,
and nothing left behind after stop() or after kill -9 of either side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import forge_transport_shm
from forge_core import _mesh
from forge_core.actor import spawn_procs
from shm_actors import Store
from shm_probes import alive, dev_shm, eventually, in_shared_memory, memfd_fds, memfd_mappings

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def torch_store():
    """One child for the tensor tests: importing torch there takes seconds."""
    pytest.importorskip("torch")
    procs = spawn_procs(per_host={"procs": 1})
    _mesh._live_meshes.discard(procs)  # outlives each test; stopped below
    yield procs.spawn("store", Store)
    procs.stop().get(timeout=10)


@pytest.fixture
def store():
    procs = spawn_procs(per_host={"procs": 1})
    yield procs.spawn("store", Store)
    procs.stop().get(timeout=10)


def test_a_tensor_argument_is_read_in_place_from_shared_memory(torch_store):
    import torch

    tensor = torch.arange(1 << 20, dtype=torch.float32)
    seen = torch_store.inspect.call_one(tensor).get(timeout=60)
    assert seen == {"in_shm": True, "sum": float(tensor.sum()), "type": "Tensor"}  # writable too
    small = torch.arange(100, dtype=torch.float32)  # below the threshold: through the pipe
    assert torch_store.inspect.call_one(small).get(timeout=30)["in_shm"] is False


def test_a_tensor_result_arrives_over_shared_memory(torch_store):
    result = torch_store.full.call_one(1 << 20, 2.0, "torch").get(timeout=30)
    assert type(result).__name__ == "Tensor" and in_shared_memory(result)
    assert float(result.sum()) == 2.0 * (1 << 20)


def test_segments_are_reused_so_pages_are_faulted_once(torch_store):
    import torch

    tensor = torch.rand(4 << 20)  # 16 MiB
    for _ in range(5):  # two segments take turns: a release may still be on its way
        torch_store.total.call_one(tensor).get(timeout=30)
    created = forge_transport_shm.stats()["segments_created"]
    for _ in range(30):
        torch_store.total.call_one(tensor).get(timeout=30)
    assert forge_transport_shm.stats()["segments_created"] - created <= 1


def test_held_tensors_are_never_overwritten_and_reused_once_dropped(torch_store):
    import torch

    tensors = [torch.full((1 << 20,), float(i)) for i in range(8)]  # 4 MiB each
    for tensor in tensors:
        torch_store.hold.call_one(tensor).get(timeout=30)
    for _ in range(3):  # more traffic on the same connection while they are held
        torch_store.total.call_one(torch.full((1 << 20,), -1.0)).get(timeout=30)
    assert torch_store.held_sums.call_one().get(timeout=30) == [float(t.sum()) for t in tensors]
    torch_store.drop.call_one().get(timeout=30)
    created = forge_transport_shm.stats()["segments_created"]
    for tensor in tensors * 3:
        torch_store.total.call_one(tensor).get(timeout=30)
    assert forge_transport_shm.stats()["segments_created"] - created <= 1


def test_numpy_arrays_and_large_bytes_travel_intact(store):
    array = np.arange(1 << 18, dtype=np.float64)
    seen = store.inspect.call_one(array).get(timeout=30)
    assert seen == {"in_shm": True, "sum": float(array.sum()), "type": "ndarray"}
    back = store.echo.call_one(array).get(timeout=30)
    assert isinstance(back, np.ndarray) and (back == array).all() and in_shared_memory(back)
    blob = os.urandom(3 << 20)
    assert store.echo.call_one(blob).get(timeout=30) == blob


def test_nothing_is_left_after_stop():
    shm_before, maps_before, fds_before = dev_shm(), memfd_mappings(), memfd_fds()
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("store", Store)
    pids = mesh.pid.call().get(timeout=30)
    for _ in range(3):
        results = mesh.full.call(1 << 20, 1.0).get(timeout=30)
        mesh.total.call(np.ones(1 << 20)).get(timeout=30)
    assert all(in_shared_memory(r) for r in results)
    procs.stop().get(timeout=10)
    del results
    assert not [p for p in pids if alive(p)]
    assert eventually(lambda: memfd_mappings() <= maps_before and memfd_fds() <= fds_before)
    assert dev_shm() <= shm_before


def test_kill9_of_the_receiver_frees_the_senders_segments():
    maps_before, fds_before = memfd_mappings(), memfd_fds()
    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("store", Store)
    pid = mesh.pid.call_one().get(timeout=30)
    mesh.hold.call_one(np.ones(1 << 20)).get(timeout=30)  # the child holds our segment
    assert memfd_mappings() > maps_before
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: memfd_mappings() <= maps_before and memfd_fds() <= fds_before)
    procs.stop().get(timeout=10)


def test_a_received_array_outlives_kill9_of_its_sender():
    maps_before = memfd_mappings()
    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("store", Store)
    pid = mesh.pid.call_one().get(timeout=30)
    result = mesh.full.call_one(1 << 20, 3.0).get(timeout=30)
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: not alive(pid))
    assert float(result.sum()) == 3.0 * (1 << 20)  # still mapped here, still intact
    del result
    assert eventually(lambda: memfd_mappings() <= maps_before)  # and unmapped once dropped
    procs.stop().get(timeout=10)


def test_kill9_of_the_parent_leaves_nothing(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import time
        import numpy
        from forge_core.actor import spawn_procs
        from shm_actors import Store
        procs = spawn_procs(per_host={"procs": 2})
        mesh = procs.spawn("store", Store)
        pids = mesh.pid.call().get(timeout=30)
        mesh.hold.call(numpy.ones(1 << 20)).get(timeout=30)
        kept = mesh.full.call(1 << 20, 1.0).get(timeout=30)
        print(" ".join(map(str, pids)), flush=True)
        time.sleep(60)
    """))
    shm_before = dev_shm()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert all(memfd_mappings(p) > 0 for p in pids)  # both directions went through shm
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
    assert eventually(lambda: not [p for p in pids if alive(p)])
    assert dev_shm() <= shm_before
