"""The ``nccl`` backend: each version is broadcast from the trainer's GPU to the replicas' GPUs.

One NCCL group per publisher (per service): the trainer is rank 0, and the ``group_size``
replicas that load through it take ranks 1..N in the order they first ask. The communicator is
bootstrapped through actor messages, with no torch.distributed and no extra port: the publisher
makes the NCCL unique id and puts it in the handle, a small ``NcclCoordinator`` actor in the
trainer's process hands out ranks, and every rank builds its communicator in a worker thread
(``ncclCommInitRank`` blocks until the whole group has called it).

A broadcast is a collective: every rank must take part in the same ones, in the same order. So
the coordinator runs a barrier per version: a replica asks to receive version v, and once all N
have asked, the trainer enqueues the broadcast of v's snapshot and tells them to enqueue theirs.
A replica that asks for a version that was superseded gets ``StaleWeightsError`` and nobody
enqueues anything; a barrier that does not fill within ``BARRIER_TIMEOUT`` fails with
``TimeoutError`` naming the ranks that never asked. A world of N is the same code as a world of
1: rank 0 only ever sends, every other rank receives into a fresh buffer of its own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, AsyncIterator, Mapping, NamedTuple

from forge_core.actor import Actor, ActorError, endpoint, this_proc
from forge_core.weights import (
    Chunk, Snapshot, SourceUnreachable, StaleWeightsError, WeightSyncError, WeightsHandle,
)

from . import _gpu

BARRIER_TIMEOUT = float(os.environ.get("FORGE_NCCL_BARRIER_TIMEOUT", "300"))
INIT_TIMEOUT = float(os.environ.get("FORGE_NCCL_INIT_TIMEOUT", "300"))
_MAX_COUNT = 1 << 30  # bytes per ncclBroadcast call (older cupy takes an int count)


class NcclSource(NamedTuple):
    coordinator: Any  # ActorMesh of the NcclCoordinator in the trainer's process
    group_id: str
    unique_id: Any  # NCCL unique id (bytes, or a tuple in older cupy)
    world_size: int


class NcclGroup:
    """One rank's NCCL communicator on one GPU."""

    def __init__(self, world_size: int, unique_id: Any, rank: int, device_index: int):
        nccl, why = _gpu.nccl_or_reason()
        if nccl is None:
            raise RuntimeError(f"nccl cannot run here: {why}")
        import cupy

        self.world_size, self.rank, self.device_index = world_size, rank, device_index
        self._nccl = nccl
        with cupy.cuda.Device(device_index):  # blocks until every rank has called it
            self._comm = nccl.NcclCommunicator(world_size, unique_id, rank)

    @staticmethod
    def new_unique_id() -> Any:
        nccl, why = _gpu.nccl_or_reason()
        if nccl is None:
            raise RuntimeError(f"nccl cannot run here: {why}")
        return nccl.get_unique_id()

    def broadcast(self, tensor: Any, root: int = 0, out: Any = None) -> None:
        """Enqueue a broadcast of ``tensor`` (uint8, contiguous) from ``root`` on the current
        torch stream; receivers get it in ``out`` (default: in place)."""
        import torch

        out = tensor if out is None else out
        stream = torch.cuda.current_stream(self.device_index).cuda_stream
        for start in range(0, tensor.numel(), _MAX_COUNT):
            count = min(_MAX_COUNT, tensor.numel() - start)
            self._comm.broadcast(tensor.data_ptr() + start, out.data_ptr() + start, count,
                                 self._nccl.NCCL_UINT8, root, stream)

    def close(self) -> None:
        if self._comm is not None:
            self._comm.destroy()
            self._comm = None


class NcclBackend:
    name = "nccl"
    device = "cuda"
    private_chunks = True  # every replica receives into a buffer of its own

    def available(self) -> tuple[bool, str]:
        nccl, why = _gpu.nccl_or_reason()
        return nccl is not None, why

    def publisher(self, options: Mapping[str, Any]) -> "NcclPublisher":
        group_size = options.get("group_size")
        if not group_size or group_size < 0:
            raise TypeError("the nccl backend needs WeightPublisher(..., group_size=N): the "
                            "number of replicas that load each version (they all take part "
                            "in every broadcast)")
        return NcclPublisher(group_size + 1, str(options.get("publisher_id") or uuid.uuid4().hex))

    async def read(self, handle: WeightsHandle, source: NcclSource) -> AsyncIterator[Chunk]:
        import torch

        member = await _membership(source)
        try:
            await asyncio.wait_for(source.coordinator.ready.call_one(
                source.group_id, handle.version, member.rank), BARRIER_TIMEOUT + 10)
        except ActorError as exc:
            if isinstance(exc.exception, (StaleWeightsError, TimeoutError)):
                raise exc.exception from None
            raise
        flat = torch.empty(max(handle.nbytes, 1), dtype=torch.uint8,
                           device=f"cuda:{member.device_index}")
        member.broadcast(flat, root=0)
        done = torch.cuda.Event()
        done.record()
        await asyncio.to_thread(done.synchronize)
        yield Chunk(0, len(handle.layout), flat[:handle.nbytes])


# ---------------------------------------------------------------------------------------------
# The replica side: one membership per group, made on the first read


_members: dict[str, "asyncio.Future[NcclGroup]"] = {}


async def _membership(source: NcclSource) -> NcclGroup:
    joining = _members.get(source.group_id)
    if joining is None:
        joining = _members[source.group_id] = asyncio.ensure_future(_join(source))
    try:
        return await asyncio.shield(joining)
    except BaseException:
        if joining.done():
            _members.pop(source.group_id, None)  # let a later read try again
        raise


async def _join(source: NcclSource) -> NcclGroup:
    import torch

    ok, why = _gpu.torch_cuda()
    if not ok:
        raise SourceUnreachable(why)
    try:
        rank = await source.coordinator.join.call_one(source.group_id)
    except ActorError as exc:
        raise WeightSyncError(f"cannot join the NCCL group: {exc.exception or exc}") from None
    device = torch.cuda.current_device()
    return await asyncio.wait_for(asyncio.to_thread(
        NcclGroup, source.world_size, source.unique_id, rank, device), INIT_TIMEOUT)


# ---------------------------------------------------------------------------------------------
# The trainer side: rank 0, its barrier per version, and the coordinator actor


class _RootGroup:
    """Rank 0 of one group, in the trainer's process (shared with the coordinator actor)."""

    def __init__(self, world_size: int, device_index: int):
        self.world_size = world_size
        self.device_index = device_index
        self.unique_id = NcclGroup.new_unique_id()
        self.group: NcclGroup | None = None
        self._init: asyncio.Future | None = None
        self._next_rank = 1
        self.snapshots: dict[int, Snapshot] = {}
        self._barriers: dict[int, tuple[set[int], asyncio.Future]] = {}

    def join(self) -> int:
        if self._next_rank >= self.world_size:
            raise WeightSyncError(f"the NCCL group is full ({self.world_size - 1} replicas were "
                                  f"announced with group_size)")
        rank, self._next_rank = self._next_rank, self._next_rank + 1
        if self._init is None:
            self._init = asyncio.ensure_future(asyncio.to_thread(
                NcclGroup, self.world_size, self.unique_id, 0, self.device_index))
        return rank

    async def ready(self, version: int, rank: int) -> None:
        if version not in self.snapshots:
            raise StaleWeightsError(f"weights version {version} is no longer offered")
        ranks, released = self._barriers.setdefault(
            version, (set(), asyncio.get_running_loop().create_future()))
        ranks.add(rank)
        if len(ranks) == self.world_size - 1:
            await self._send(version)
        try:
            await asyncio.wait_for(asyncio.shield(released), BARRIER_TIMEOUT)
        except asyncio.TimeoutError:
            missing = sorted(set(range(1, self.world_size)) - ranks)
            raise TimeoutError(f"version {version}: ranks {missing} never asked for it within "
                               f"{BARRIER_TIMEOUT:.0f} s; nothing was broadcast") from None

    async def _send(self, version: int) -> None:
        _, released = self._barriers.pop(version)
        try:
            if self.group is None:
                self.group = await asyncio.wait_for(asyncio.shield(self._init), INIT_TIMEOUT)
            snapshot = self.snapshots[version]
            self.group.broadcast(snapshot.flat[:max(snapshot.nbytes, 1)], root=0)
        except BaseException as exc:
            released.set_exception(exc)
            raise
        released.set_result(None)

    def offer(self, snapshot: Snapshot) -> None:
        self.snapshots[snapshot.version] = snapshot

    def withdraw(self, version: int) -> None:
        self.snapshots.pop(version, None)
        barrier = self._barriers.pop(version, None)
        if barrier is not None and not barrier[1].done():
            barrier[1].set_exception(StaleWeightsError(
                f"weights version {version} was superseded before every replica asked for it"))

    def close(self) -> None:
        for version in list(self._barriers):
            self.withdraw(version)
        if self.group is not None:
            self.group.close()


_roots: dict[str, _RootGroup] = {}
_coordinator: Any = None


class NcclCoordinator(Actor):
    """Hands out ranks and runs the per-version barrier of every group in its process."""

    @endpoint
    def join(self, group_id: str) -> int:
        return _root(group_id).join()

    @endpoint(concurrent=True)
    async def ready(self, group_id: str, version: int, rank: int) -> None:
        await _root(group_id).ready(version, rank)


def _root(group_id: str) -> _RootGroup:
    root = _roots.get(group_id)
    if root is None:
        raise WeightSyncError(f"no NCCL group {group_id!r} here: its publisher closed")
    return root


class NcclPublisher:
    def __init__(self, world_size: int, group_id: str):
        self.world_size = world_size
        self.group_id = group_id

    def allocate(self, nbytes: int, device: Any) -> Snapshot:
        import torch

        if device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        if self.group_id not in _roots:
            _roots[self.group_id] = _RootGroup(self.world_size, device.index or 0)
        # The caching allocator recycles this after retire; the broadcast is ordered before any
        # later use on the same stream, so no pool is needed here.
        return Snapshot(torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device), nbytes,
                        owner_state=self)

    async def export(self, snapshot: Snapshot) -> NcclSource:
        global _coordinator
        if _coordinator is None:
            _coordinator = this_proc().spawn("forge-nccl-coordinator", NcclCoordinator)
        await _coordinator.initialized
        root = _roots[self.group_id]
        root.offer(snapshot)
        return NcclSource(_coordinator, self.group_id, root.unique_id, self.world_size)

    def retire(self, snapshot: Snapshot) -> None:
        root = _roots.get(self.group_id)
        if root is not None:
            root.withdraw(snapshot.version)

    async def aclose(self) -> None:
        root = _roots.pop(self.group_id, None)
        if root is not None:
            root.close()
