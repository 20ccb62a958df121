"""The ``cuda_ipc`` backend: a replica on the trainer's GPU maps the snapshot and copies it.

The publisher packs each version into a GPU buffer of its own ``cudaMalloc`` (CUDA IPC names
whole allocations, so a buffer never shares one with other tensors) and pools these buffers.
A replica on the same GPU (same host, same device UUID, whatever ``CUDA_VISIBLE_DEVICES``
numbering it has) opens the buffer's IPC handle once, keeps it open for the next versions, and
the kernel's reader copies device to device into the model, then synchronizes.

torch's own CUDA tensor sharing counts one consumer per share and never frees a share nobody
consumed, which does not fit "publish once, any number of readers, maybe none"; so the handles
are cupy's (``cudaIpcGetMemHandle``), and reuse is guarded exactly as in the ``shm`` backend:
each GPU buffer has a memfd lock page (``forge_weight_sync.shm.Segment``), readers hold a shared
``flock`` on it while they copy and check the version's token, and the publisher rewrites or
frees a buffer only under an exclusive lock.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from typing import Any, AsyncIterator, Mapping, NamedTuple

from forge_core.weights import Chunk, Snapshot, SourceUnreachable, WeightsHandle, host_identity
from forge_weight_sync.shm import Segment, ShmSource, open_segment

from . import _gpu

READER_CACHE = 2  # IPC mappings a replica keeps open


class CudaIpcSource(NamedTuple):
    host: str
    device_uuid: str
    buffer_id: bytes
    ipc_handle: bytes
    capacity: int
    lock: ShmSource


class CudaIpcBackend:
    name = "cuda_ipc"
    device = "cuda"
    private_chunks = False  # views of the trainer's buffer, which it reuses

    def available(self) -> tuple[bool, str]:
        cupy, why = _gpu.cupy_or_reason()
        return cupy is not None, why

    def publisher(self, options: Mapping[str, Any]) -> "CudaIpcPublisher":
        return CudaIpcPublisher()

    async def read(self, handle: WeightsHandle, source: CudaIpcSource) -> AsyncIterator[Chunk]:
        if source.host != host_identity():
            raise SourceUnreachable(f"the snapshot is on host {source.host.split(':')[0]}")
        index = _gpu.local_index(source.device_uuid)
        if index is None:
            raise SourceUnreachable(f"the snapshot is on GPU {source.device_uuid}, which this "
                                    f"process does not see")
        lock = await asyncio.to_thread(open_segment, source.lock)  # StaleWeightsError if reused
        try:
            flat = _imports.get(source, index)
            yield Chunk(0, len(handle.layout), flat[:handle.nbytes])
        finally:
            lock.unlock()  # the kernel's reader synchronized after its copies


# ---------------------------------------------------------------------------------------------
# The publisher side


class _GpuBuffer:
    """One pooled GPU allocation, its IPC handle, and the lock page guarding it."""

    def __init__(self, capacity: int, index: int):
        cupy, why = _gpu.cupy_or_reason()
        if cupy is None:
            raise RuntimeError(f"cuda_ipc cannot run here: {why}")
        self.capacity = capacity
        self.index = index
        with cupy.cuda.Device(index):
            self._memory = cupy.cuda.Memory(max(capacity, 1))  # a cudaMalloc of its own
            self.ipc_handle = bytes(cupy.cuda.runtime.ipcGetMemHandle(self._memory.ptr))
        self.flat = _gpu.wrap(cupy, self._memory.ptr, max(capacity, 1), index, self._memory)
        self.uuid = _gpu.device_uuid(index)
        self.id = os.urandom(8)
        self.lock = Segment(0)
        self.snapshot: Snapshot | None = None  # the version it holds (pinned while tcp copies it)

    def free(self) -> None:
        self.lock.close()
        self.snapshot = None
        self.flat = None
        self._memory = None  # cupy frees it; replicas that still map it keep it until they close


class CudaIpcPublisher:
    def __init__(self) -> None:
        self._held: list[_GpuBuffer] = []
        self._spare: list[_GpuBuffer] = []

    def allocate(self, nbytes: int, device: Any) -> Snapshot:
        import torch

        index = device.index if device.type == "cuda" and device.index is not None \
            else torch.cuda.current_device()
        chosen = None
        for buffer in self._spare:
            pinned = buffer.snapshot is not None and buffer.snapshot.pins
            if (buffer.capacity >= nbytes and buffer.index == index and not pinned
                    and buffer.lock.lock_exclusive()):
                chosen = buffer
                break
        if chosen is not None:
            self._spare.remove(chosen)
        else:
            chosen = _GpuBuffer(nbytes, index)
            chosen.lock.lock_exclusive()
        # Free the spares nobody reads; one still being read stays until a later publish.
        for buffer in list(self._spare):
            pinned = buffer.snapshot is not None and buffer.snapshot.pins
            if not pinned and buffer.lock.lock_exclusive():
                self._spare.remove(buffer)
                buffer.free()
        chosen.lock.begin_write()
        self._held.append(chosen)
        chosen.snapshot = Snapshot(chosen.flat[:nbytes], nbytes, owner_state=chosen)
        return chosen.snapshot

    async def export(self, snapshot: Snapshot) -> CudaIpcSource:
        buffer: _GpuBuffer = snapshot.owner_state
        lock = buffer.lock.finish_write(snapshot.version)
        return CudaIpcSource(host_identity(), buffer.uuid, buffer.id, buffer.ipc_handle,
                             buffer.capacity, lock)

    def retire(self, snapshot: Snapshot) -> None:
        buffer = snapshot.owner_state
        if isinstance(buffer, _GpuBuffer) and buffer in self._held:
            self._held.remove(buffer)
            self._spare.append(buffer)

    async def aclose(self) -> None:
        for buffer in self._held + self._spare:
            buffer.free()
        self._held.clear()
        self._spare.clear()


# ---------------------------------------------------------------------------------------------
# The replica side: IPC mappings kept across versions


class _Imports:
    def __init__(self, size: int):
        self._size = size
        self._open: OrderedDict[bytes, tuple[int, Any]] = OrderedDict()  # id -> (pointer, tensor)
        self._lock = threading.Lock()

    def get(self, source: CudaIpcSource, index: int) -> Any:
        cupy, why = _gpu.cupy_or_reason()
        if cupy is None:
            raise SourceUnreachable(why)
        with self._lock:
            entry = self._open.get(source.buffer_id)
            if entry is not None:
                self._open.move_to_end(source.buffer_id)
                return entry[1]
            with cupy.cuda.Device(index):
                pointer = cupy.cuda.runtime.ipcOpenMemHandle(source.ipc_handle)
            tensor = _gpu.wrap(cupy, pointer, max(source.capacity, 1), index)
            self._open[source.buffer_id] = (pointer, tensor)
            while len(self._open) > self._size:
                _, (old_pointer, _) = self._open.popitem(last=False)
                cupy.cuda.runtime.ipcCloseMemHandle(old_pointer)
            return tensor

    def clear(self) -> None:
        cupy, _ = _gpu.cupy_or_reason()
        with self._lock:
            for pointer, _ in self._open.values():
                if cupy is not None:
                    cupy.cuda.runtime.ipcCloseMemHandle(pointer)
            self._open.clear()


_imports = _Imports(READER_CACHE)
