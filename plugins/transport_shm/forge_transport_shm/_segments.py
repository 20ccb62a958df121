"""Shared-memory segments: anonymous memfd files, mapped once, carved into extents, reused.

Why memfd and not ``/dev/shm``: a memfd has no name anywhere. The sender hands its file
descriptor to the receiver over the connection's Unix socket (SCM_RIGHTS); the memory lives
exactly as long as some process holds a descriptor or a mapping of it, so neither ``stop()``
nor ``kill -9`` of either side can leave anything behind.

Why pooled: writing into freshly created shared memory faults every page in (about 0.5 GB/s
here) while writing into pages touched before runs at memcpy speed (about 9 GB/s). A sender
therefore keeps its segments and reuses an extent as soon as the receiver says it has let go of
the buffers in it. Free segments are kept up to a per-process budget; beyond it the largest
free one is unmapped and the receiver is told to forget it.

Sender side: ``OutboundPool`` (one per connection). Receiver side: ``InboundMaps``.
"""

from __future__ import annotations

import bisect
import ctypes
import fcntl
import mmap
import os
import threading
import weakref
from typing import Callable

ALIGN = 64  # every buffer starts on a cache line (and tensors on their dtype's alignment)
ARENA_BYTES = 8 << 20  # the smallest segment: many small messages share one
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
MEMFD_NAME = "forge-shm"  # shows as /memfd:forge-shm in /proc/PID/maps (tests look for it)


def aligned(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) & ~(ALIGN - 1)


def segment_size_for(nbytes: int) -> int:
    """Arena size, or the next power of two: a free segment then fits the next message of
    about the same size (the common case: the same tensor every step)."""
    if nbytes <= ARENA_BYTES:
        return ARENA_BYTES
    return 1 << (nbytes - 1).bit_length()


class FreeBudget:
    """Bytes of segments that are mapped but hold no live buffer, for the whole process."""

    def __init__(self, limit: int):
        self.limit = limit
        self._free = 0
        self._lock = threading.Lock()  # connections on different loops share it

    def add(self, nbytes: int) -> bool:
        """Count a segment that just became free; False if it should be dropped instead."""
        with self._lock:
            if self._free + nbytes > self.limit:
                return False
            self._free += nbytes
            return True

    def remove(self, nbytes: int) -> None:
        with self._lock:
            self._free -= nbytes

    @property
    def free_bytes(self) -> int:
        return self._free


class Segment:
    """One memfd mapped into the sender, with a first-fit list of free extents."""

    __slots__ = ("id", "size", "fd", "mm", "holes", "allocations", "counted_free")

    def __init__(self, segment_id: int, size: int):
        fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # Sealed, so the receiver can trust that the file never shrinks under its mapping
            # (touching a page past the end of a shrunk file is SIGBUS).
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self.mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.id = segment_id
        self.size = size
        self.fd = fd  # until the receiver has it; then closed (the mapping keeps the memory)
        self.holes: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted by offset
        self.allocations: dict[int, int] = {}  # offset -> size
        self.counted_free = False

    def allocate(self, nbytes: int) -> int | None:
        for index, (offset, size) in enumerate(self.holes):
            if size >= nbytes:
                if size == nbytes:
                    del self.holes[index]
                else:
                    self.holes[index] = (offset + nbytes, size - nbytes)
                self.allocations[offset] = nbytes
                return offset
        return None

    def free(self, offset: int) -> bool:
        """Return an extent; False if there was no such allocation (a confused peer)."""
        nbytes = self.allocations.pop(offset, None)
        if nbytes is None:
            return False
        holes = self.holes
        index = bisect.bisect(holes, (offset, 0))
        end = offset + nbytes
        if index < len(holes) and holes[index][0] == end:  # merge with the hole after
            end += holes[index][1]
            del holes[index]
        if index > 0 and sum(holes[index - 1]) == offset:  # merge with the hole before
            offset = holes[index - 1][0]
            holes[index - 1] = (offset, end - offset)
        else:
            holes.insert(index, (offset, end - offset))
        return True

    @property
    def idle(self) -> bool:
        return not self.allocations

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.close_fd()
        try:
            self.mm.close()
        except BufferError:  # pragma: no cover - a copy in progress on another thread
            pass


class OutboundPool:
    """The segments one connection writes into.

    ``allocate`` finds room for one message's buffers (all in one extent, so one release
    frees them), creating a segment when none has room; ``release`` takes an extent back.
    """

    def __init__(self, budget: FreeBudget):
        self._budget = budget
        self._segments: dict[int, Segment] = {}
        self._by_size: list[Segment] = []  # smallest first: big messages keep big segments
        self._next_id = 1
        self.created = 0  # segments ever created (tests check that pages are reused)

    def allocate(self, nbytes: int) -> tuple[Segment, int, bool]:
        """-> (segment, offset, segment_is_new). Raises OSError if memory cannot be had."""
        for segment in self._by_size:
            if segment.size >= nbytes:
                offset = segment.allocate(nbytes)
                if offset is not None:
                    self._mark_busy(segment)
                    return segment, offset, False
        segment = Segment(self._next_id, segment_size_for(nbytes))
        self._next_id += 1
        self.created += 1
        self._segments[segment.id] = segment
        bisect.insort(self._by_size, segment, key=lambda s: s.size)
        offset = segment.allocate(nbytes)
        assert offset == 0
        return segment, offset, True

    def release(self, segment_id: int, offset: int) -> int | None:
        """Take an extent back. Returns the id of a segment the peer should forget (it was
        unmapped because the process keeps enough free memory already), else None."""
        segment = self._segments.get(segment_id)
        if segment is None or not segment.free(offset) or not segment.idle:
            return None
        if self._budget.add(segment.size):
            segment.counted_free = True
            return None
        self._drop(segment)
        return segment.id

    def discard(self, segment_id: int) -> None:
        """Drop a segment at once, whatever it holds (its descriptor never reached the peer)."""
        segment = self._segments.get(segment_id)
        if segment is not None:
            self._drop(segment)

    def _mark_busy(self, segment: Segment) -> None:
        if segment.counted_free:
            segment.counted_free = False
            self._budget.remove(segment.size)

    def _drop(self, segment: Segment) -> None:
        self._mark_busy(segment)
        del self._segments[segment.id]
        self._by_size.remove(segment)
        segment.close()

    def close(self) -> None:
        """Unmap everything. Extents the peer still holds stay valid there: its own mapping
        keeps the memory until it lets go."""
        for segment in list(self._segments.values()):
            self._drop(segment)

    @property
    def segments(self) -> int:
        return len(self._segments)


class InboundMaps:
    """The peer's segments, mapped here once each, and the views handed to the kernel."""

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}

    def add(self, segment_id: int, fd: int) -> None:
        """Map a segment the peer sent (takes ownership of ``fd``). Raises ValueError if it
        is not a sealed memfd."""
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if seals & _SEALS != _SEALS:
                raise ValueError("shared segment is not sealed against shrinking")
            size = os.fstat(fd).st_size
            if size <= 0 or segment_id in self._maps:
                raise ValueError(f"bad shared segment {segment_id} of {size} bytes")
            self._maps[segment_id] = mmap.mmap(fd, size)
        except OSError as exc:
            raise ValueError(f"peer sent something that is not a shared segment: {exc}") from exc
        finally:
            os.close(fd)

    def size_of(self, segment_id: int) -> int:
        mm = self._maps.get(segment_id)
        return -1 if mm is None else len(mm)

    def views(self, segment_id: int, offset: int, total: int, spans: list[tuple[int, int]],
              on_release: Callable[[int, int], None]) -> list[memoryview]:
        """Views over one message's extent. When every view (and everything built over one,
        such as a tensor) is gone, ``on_release(segment_id, offset)`` runs, on whatever thread
        dropped the last reference."""
        mm = self._maps[segment_id]
        # A ctypes array, unlike a memoryview, can carry a finalizer; it keeps ``mm`` mapped,
        # and every memoryview sliced from it keeps it alive in turn.
        extent = (ctypes.c_ubyte * total).from_buffer(mm, offset)
        finalizer = weakref.finalize(extent, on_release, segment_id, offset)
        finalizer.atexit = False
        whole = memoryview(extent).cast("B")
        return [whole[start:start + nbytes] for start, nbytes in spans]

    def forget(self, segment_id: int) -> None:
        # Not closed: views may still be alive (they keep the mapping; it goes with them).
        self._maps.pop(segment_id, None)

    def clear(self) -> None:
        self._maps.clear()

    def __len__(self) -> int:
        return len(self._maps)
