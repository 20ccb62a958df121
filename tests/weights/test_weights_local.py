"""Weight sync inside one process: layout, versions, freeing, and the gate (no child processes)."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

from forge_core.weights import (
    ALIGN, StaleWeightsError, WeightPublisher, WeightSyncError, WeightsGate, WeightsHandle, plan_layout,
)
from weight_actors import make_model, memfd_descriptors, memfd_mappings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_cached_mappings():
    """A replica keeps its last mappings; here the replica is this process: start clean."""
    from forge_weight_sync.shm import _mappings

    _mappings.clear()
    yield
    _mappings.clear()


def odd_state_dict() -> dict[str, torch.Tensor]:
    """Dtypes, shapes and strides a real model has, and a few it rarely has."""
    return {
        "w": torch.randn(33, 17),
        "t": torch.randn(17, 33).t(),  # not contiguous
        "half": torch.randn(5, 3).to(torch.bfloat16),
        "ids": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
    }


def test_layout_aligns_every_tensor():
    layout, total = plan_layout(list(odd_state_dict().items()))
    assert all(spec.offset % ALIGN == 0 for spec in layout)
    assert total >= sum(spec.nbytes for spec in layout)
    assert [spec.name for spec in layout] == list(odd_state_dict())


@pytest.mark.parametrize("backend", ["shm", "tcp"])
async def test_fetch_returns_the_published_tensors_bit_for_bit(backend):
    state = odd_state_dict()
    async with WeightPublisher(backend) as publisher:
        handle = await publisher.publish(state, version=1)
        assert [name for name, _ in handle.sources] == [backend]
        fetched = await handle.fetch()
    assert list(fetched) == list(state)
    for name, tensor in state.items():
        assert fetched[name].dtype == tensor.dtype and torch.equal(fetched[name], tensor), name


async def test_auto_offers_shm_then_tcp_for_cpu_tensors():
    async with WeightPublisher() as publisher:
        handle = await publisher.publish(make_model(0).state_dict(), version=1)
        assert [name for name, _ in handle.sources] == ["shm", "tcp"]
        assert "shm|tcp" in repr(handle)


async def test_versions_must_increase_and_stale_loads_are_no_ops(caplog):
    trainer, policy = make_model(0), make_model(1)
    async with WeightPublisher("shm") as publisher:
        first = await publisher.publish(trainer.state_dict(), version=1)
        with pytest.raises(ValueError, match="not newer than version 1"):
            await publisher.publish(trainer.state_dict(), version=1)
        with torch.no_grad():
            trainer[0].weight.add_(1)
        second = await publisher.publish(trainer.state_dict(), version=2)
        assert await second.load_into(policy) is True
        with caplog.at_level("INFO", logger="forge_core.weights"):
            assert await first.load_into(policy) is False  # older: nothing copied
        assert "already holds version 2" in caplog.text
        assert torch.equal(policy[0].weight, trainer[0].weight)


async def test_a_mismatched_model_is_refused_before_anything_is_copied():
    async with WeightPublisher("shm") as publisher:
        handle = await publisher.publish(make_model(0, width=32).state_dict(), version=1)
        policy = make_model(1, width=64)
        before = {k: v.clone() for k, v in policy.state_dict().items()}
        with pytest.raises(ValueError, match="published shape"):
            await handle.load_into(policy)
        assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())


@pytest.mark.parametrize("backend", ["shm", "tcp"])
async def test_old_versions_are_freed(backend):
    model = make_model(0)
    publisher = WeightPublisher(backend, keep=2)
    handles = [await publisher.publish(model.state_dict(), version=v) for v in range(1, 6)]
    if backend == "shm":
        assert memfd_descriptors() == 2  # double buffering, however many versions
    with pytest.raises(StaleWeightsError):
        await handles[0].fetch()  # its memory holds version 5 (or 4) now
    await handles[-1].fetch()
    await publisher.aclose()
    with pytest.raises(WeightSyncError, match="closed or exited|no longer offered"):
        await handles[-1].fetch()
    from forge_weight_sync.shm import _mappings

    _mappings.clear()  # what a replica holds until its next read (or its exit)
    assert memfd_descriptors() == 0


async def test_a_reader_in_the_middle_of_a_copy_keeps_its_version_intact():
    """The publisher never rewrites memory a reader holds: it takes a new segment instead."""
    from forge_core.weights import Chunk, _views
    from forge_weight_sync.shm import _mappings

    model = make_model(0)
    async with WeightPublisher("shm", keep=1) as publisher:
        handle = await publisher.publish(model.state_dict(), version=1)
        expected = {k: v.clone() for k, v in model.state_dict().items()}
        mapping = _mappings.open(handle.sources[0][1])  # what a reader holds while it copies
        try:
            with torch.no_grad():
                model[0].weight.add_(1)
            await publisher.publish(model.state_dict(), version=2)  # keep=1: version 1 retired
            await publisher.publish(model.state_dict(), version=3)
            held = _views(handle.layout, Chunk(0, len(handle.layout), mapping.data))
            for name, tensor in expected.items():
                assert torch.equal(held[name], tensor), name
        finally:
            mapping.unlock()
        with pytest.raises(WeightSyncError):
            await handle.fetch()  # the reader let go: version 1 is gone
        _mappings.clear()
        assert memfd_descriptors() == 1  # keep=1: one segment, reused for versions 2 and 3
        latest = await publisher.publish(model.state_dict(), 4)
        assert torch.equal((await latest.fetch())["0.weight"], model[0].weight)


def test_handles_are_small_and_picklable():
    import pickle

    async def main():
        async with WeightPublisher("shm") as publisher:
            handle = await publisher.publish(make_model(0).state_dict(), version=7)
            copy = pickle.loads(pickle.dumps(handle))
            assert isinstance(copy, WeightsHandle) and copy.version == 7
            assert len(pickle.dumps(handle)) < 4096
            assert torch.equal((await copy.fetch())["0.weight"], make_model(0)[0].weight)

    asyncio.run(main())


async def test_gate_drains_generations_and_holds_new_ones_during_an_update():
    gate, events = WeightsGate(version=0), []

    class SlowHandle:
        version = 1

        async def load_into(self, target):
            events.append("load start")
            await asyncio.sleep(0.05)
            events.append("load end")
            return True

    async def generation(name: str, seconds: float):
        async with gate.generating() as version:
            events.append(f"{name} start v{version}")
            await asyncio.sleep(seconds)
            events.append(f"{name} end")

    first = asyncio.ensure_future(generation("a", 0.05))
    await asyncio.sleep(0.01)
    update = asyncio.ensure_future(gate.update(SlowHandle(), None))
    await asyncio.sleep(0.01)
    late = asyncio.ensure_future(generation("b", 0.01))
    await asyncio.gather(first, update, late)
    assert events == ["a start v0", "a end", "load start", "load end", "b start v1", "b end"]
    assert await gate.update(SlowHandle(), None) is False  # same version: no pause, no load
    assert gate.version == 1


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
async def test_nothing_is_left_in_dev_shm():
    before = set(os.listdir("/dev/shm"))
    async with WeightPublisher("shm") as publisher:
        await (await publisher.publish(make_model(0).state_dict(), version=1)).fetch()
        assert set(os.listdir("/dev/shm")) == before
    assert set(os.listdir("/dev/shm")) == before


async def test_an_update_that_fails_part_way_stops_generation_until_a_whole_version_loads(
        monkeypatch):
    import forge_core.weights as weights
    import forge_weight_sync.tcp as tcp

    monkeypatch.setattr(tcp, "CHUNK_BYTES", 4096)  # many chunks
    trainer, policy, gate = make_model(0), make_model(1), WeightsGate()
    real_copy, calls = weights._copy_chunk, []

    def copy_then_fail(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("the trainer died mid-transfer")
        real_copy(*args)

    async with WeightPublisher("tcp") as publisher:
        handle = await publisher.publish(trainer.state_dict(), version=1)
        monkeypatch.setattr(weights, "_copy_chunk", copy_then_fail)
        with pytest.raises(WeightSyncError, match="mixes two versions") as failed:
            await gate.update(handle, policy)
        assert failed.value.partial
        with pytest.raises(WeightSyncError, match="serves nothing"):
            async with gate.generating():
                pass
        monkeypatch.setattr(weights, "_copy_chunk", real_copy)
        assert await gate.update(handle, policy)  # the same version, whole this time
        async with gate.generating() as version:
            assert version == 1
        assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(),
                                                     trainer.state_dict().values()))
