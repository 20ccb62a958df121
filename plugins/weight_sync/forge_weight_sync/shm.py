"""The ``shm`` backend: CPU snapshots in shared memory, read in place by replicas on the host.

A snapshot lives in a *segment*: an anonymous ``memfd`` file, so no name ever appears in
/dev/shm and the kernel frees the memory once the last process holding a descriptor or a
mapping lets go, also after ``kill -9`` of the trainer. A segment is one header page followed
by the packed tensors::

    magic (8) | segment id (16) | token of the version written (16) | version (8) | ...

A replica on the same host opens the trainer's descriptor through ``/proc/<pid>/fd/<n>`` (same
user, same host: no socket needed to pass it), checks that the segment id matches (descriptor
numbers are reused), maps it once and keeps the mapping for the next versions. The kernel's
reader copies straight out of the mapping into the model: one copy in, one copy out.

Reuse without torn reads: segments are pooled (a fresh 1 GiB segment costs page faults on every
page), and ``flock`` keeps a writer from reusing memory that a replica is reading. A reader
holds a shared lock for the duration of its copy; the publisher only rewrites a retired segment
it can lock exclusively, and clears the token first. A reader that cannot get its shared lock,
or finds another token, has a superseded version (``StaleWeightsError``) and copies nothing.
Locks vanish with the process that held them, so a crashed replica never pins memory.
"""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import struct
import threading
from collections import OrderedDict
from typing import Any, AsyncIterator, Mapping, NamedTuple

from forge_core.weights import (
    Chunk, Snapshot, SourceUnreachable, StaleWeightsError, WeightsHandle, host_identity,
)

HEADER = 4096  # one page, so that tensor data starts page-aligned
_MAGIC = b"FWSEG001"
_CLOSED = b"FWSEG-CL"  # written by a publisher that let go of the segment: readers drop it too
_FIELDS = struct.Struct("<8s16s16sq")
_NO_TOKEN = bytes(16)
READER_CACHE = 2  # mappings a replica keeps (a publisher keeps 2 segments in steady state)


class ShmSource(NamedTuple):
    """Where a replica finds one version (travels in the handle)."""

    host: str
    pid: int
    fd: int
    segment_id: bytes
    token: bytes
    size: int  # of the whole segment, header included


class ShmBackend:
    name = "shm"
    device = "cpu"
    private_chunks = False  # chunks are views of shared memory the publisher will reuse

    def available(self) -> tuple[bool, str]:
        if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
            return False, "needs Linux (memfd_create and /proc/<pid>/fd)"
        return True, ""

    def publisher(self, options: Mapping[str, Any]) -> "ShmPublisher":
        return ShmPublisher()

    async def read(self, handle: WeightsHandle, source: ShmSource) -> AsyncIterator[Chunk]:
        if source.host != host_identity():
            raise SourceUnreachable(f"the segment is on host {source.host.split(':')[0]}")
        mapping = await asyncio.to_thread(open_segment, source)
        try:
            yield Chunk(0, len(handle.layout), mapping.data[:handle.nbytes])
        finally:
            mapping.unlock()


# ---------------------------------------------------------------------------------------------
# The publisher side


class Segment:
    """One memfd segment as the publisher holds it. With ``capacity`` 0 it is only a lock page:
    ``cuda_ipc`` guards its GPU buffers with one (same locks, same tokens)."""

    def __init__(self, capacity: int):
        import torch

        self.capacity = capacity
        self.size = HEADER + capacity
        self.id = os.urandom(16)
        self.fd = os.memfd_create("forge-weights", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            # MAP_POPULATE takes every page now, in one go, instead of one fault per page later.
            self.map = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED | _POPULATE,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.map[:_FIELDS.size] = _FIELDS.pack(_MAGIC, self.id, _NO_TOKEN, -1)
        self.data = torch.frombuffer(self.map, dtype=torch.uint8, offset=HEADER,
                                     count=capacity) if capacity else torch.empty(0, dtype=torch.uint8)
        self.snapshot: Snapshot | None = None

    def lock_exclusive(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False  # a replica is still copying the version in it

    def begin_write(self) -> None:
        """Under the exclusive lock: nobody may take what follows for the old version."""
        self.map[:_FIELDS.size] = _FIELDS.pack(_MAGIC, self.id, _NO_TOKEN, -1)

    def finish_write(self, version: int) -> ShmSource:
        """The new version is whole: stamp a fresh token, let readers in, say where it is."""
        token = os.urandom(16)
        self.map[:_FIELDS.size] = _FIELDS.pack(_MAGIC, self.id, token, version)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return ShmSource(host_identity(), os.getpid(), self.fd, self.id, token, self.size)

    def close(self) -> None:
        self.map[:_FIELDS.size] = _FIELDS.pack(_CLOSED, self.id, _NO_TOKEN, -1)
        self.data = None  # type: ignore[assignment]
        self.snapshot = None
        os.close(self.fd)  # replicas that still map it keep the memory until they let go
        try:
            self.map.close()
        except BufferError:
            pass  # a tensor view is still alive in this process: the mapping goes with it


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class ShmPublisher:
    """The segments of one publisher: the versions offered, plus at most one spare."""

    def __init__(self) -> None:
        self._held: list[Segment] = []  # segments of versions still offered
        self._spare: list[Segment] = []  # retired, reusable once no replica reads them

    def allocate(self, nbytes: int, device: Any) -> Snapshot:
        chosen = None
        for segment in self._spare:
            pinned = segment.snapshot is not None and segment.snapshot.pins
            if segment.capacity >= nbytes and not pinned and segment.lock_exclusive():
                chosen = segment
                break
        if chosen is None:
            chosen = Segment(nbytes)
            chosen.lock_exclusive()
        else:
            self._spare.remove(chosen)
        chosen.begin_write()
        # Spares that could not be reused now are closed: a replica still reading one keeps its
        # memory alive until it finishes, and nothing here holds it any longer.
        for segment in self._spare:
            segment.close()
        self._spare.clear()
        self._held.append(chosen)
        snapshot = Snapshot(chosen.data[:nbytes], nbytes, owner_state=chosen)
        chosen.snapshot = snapshot
        return snapshot

    async def export(self, snapshot: Snapshot) -> ShmSource:
        segment: Segment = snapshot.owner_state
        return segment.finish_write(snapshot.version)

    def retire(self, snapshot: Snapshot) -> None:
        segment = snapshot.owner_state
        if isinstance(segment, Segment) and segment in self._held:
            self._held.remove(segment)
            self._spare.append(segment)

    async def aclose(self) -> None:
        for segment in self._held + self._spare:
            segment.close()
        self._held.clear()
        self._spare.clear()

    def __repr__(self) -> str:
        return f"<ShmPublisher held={len(self._held)} spare={len(self._spare)}>"


# ---------------------------------------------------------------------------------------------
# The replica side: mappings kept across versions


class _Mapping:
    """A replica's own descriptor and read-only mapping of one segment."""

    def __init__(self, source: ShmSource):
        import warnings

        import torch

        try:
            self.fd = os.open(f"/proc/{source.pid}/fd/{source.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # publisher gone, another pid namespace, or not our user
            raise SourceUnreachable(f"cannot open the publisher's segment: {exc}") from None
        try:
            if os.fstat(self.fd).st_size != source.size:
                raise SourceUnreachable("descriptor reused: not the published segment")
            self.map = mmap.mmap(self.fd, source.size, flags=mmap.MAP_SHARED | _POPULATE,
                                 prot=mmap.PROT_READ)
        except BaseException:
            os.close(self.fd)
            raise
        magic, segment_id, _, _ = _FIELDS.unpack_from(self.map)
        if magic not in (_MAGIC, _CLOSED) or segment_id != source.segment_id:
            self.close()
            raise SourceUnreachable("descriptor reused: not the published segment")
        self.segment_id = segment_id
        self.inode = os.fstat(self.fd).st_ino
        with warnings.catch_warnings():  # read-only on purpose: torch warns about any such buffer
            warnings.simplefilter("ignore", UserWarning)
            self.data = torch.frombuffer(self.map, dtype=torch.uint8, offset=HEADER,
                                         count=source.size - HEADER) \
                if source.size > HEADER else torch.empty(0, dtype=torch.uint8)
        self._readers = 0  # reads in this process share our one lock
        self._lock = threading.Lock()
        self.evicted = False  # dropped from the cache while being read: closed by the last reader

    def lock_shared(self, source: ShmSource) -> None:
        with self._lock:
            if self._readers == 0:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _stale(source) from None  # the publisher is rewriting it
            self._readers += 1
        if _FIELDS.unpack_from(self.map)[2] != source.token:
            self.unlock()
            raise _stale(source)

    def publisher_alive(self, source: ShmSource) -> bool:
        """Whether the publisher still holds the segment (it exits: its descriptor goes)."""
        try:
            return os.stat(f"/proc/{source.pid}/fd/{source.fd}").st_ino == self.inode
        except OSError:
            return False

    @property
    def abandoned(self) -> bool:
        """The publisher closed this segment: no version will ever be read from it again."""
        return _FIELDS.unpack_from(self.map)[0] == _CLOSED

    def unlock(self) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                if self.evicted:
                    self.close()

    def close(self) -> None:
        self.data = None  # type: ignore[assignment]
        os.close(self.fd)
        try:
            self.map.close()
        except BufferError:
            pass  # a view is still alive: the mapping goes when it does


def _stale(source: ShmSource) -> StaleWeightsError:
    return StaleWeightsError("this weights version was superseded and its shared memory reused; "
                             "load the newer version's handle")


class _Mappings:
    """The few segments a replica keeps mapped, newest use last."""

    def __init__(self, size: int):
        self._size = size
        self._by_id: OrderedDict[bytes, _Mapping] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, source: ShmSource) -> _Mapping:
        """The mapping of ``source``'s segment, share-locked for one read (``unlock`` after)."""
        with self._lock:
            mapping = self._by_id.get(source.segment_id)
            if mapping is not None and not mapping.publisher_alive(source):
                del self._by_id[source.segment_id]  # its memory goes as soon as we let go
                self._evict(mapping)
                raise SourceUnreachable(f"the publisher (pid {source.pid}) no longer holds this "
                                        f"segment: it closed or exited")
            if mapping is not None:
                self._by_id.move_to_end(source.segment_id)
                mapping.lock_shared(source)  # under the cache lock: it cannot be evicted first
                return mapping
        mapping = _Mapping(source)  # slow (maps every page): outside the lock
        with self._lock:
            self._by_id[source.segment_id] = mapping
            mapping.lock_shared(source)
            for segment_id, old in list(self._by_id.items()):
                if len(self._by_id) > self._size or old.abandoned:
                    del self._by_id[segment_id]
                    self._evict(old)
        return mapping

    @staticmethod
    def _evict(mapping: _Mapping) -> None:
        with mapping._lock:
            mapping.evicted = True
            idle = mapping._readers == 0
        if idle:
            mapping.close()

    def clear(self) -> None:
        with self._lock:
            for mapping in self._by_id.values():
                mapping.close()
            self._by_id.clear()


_mappings = _Mappings(READER_CACHE)


def open_segment(source: ShmSource) -> _Mapping:
    """A replica's mapping of ``source``, share-locked and checked to hold ``source.token``
    (``StaleWeightsError`` otherwise). Call ``.unlock()`` once the copy is done. May block."""
    return _mappings.open(source)
