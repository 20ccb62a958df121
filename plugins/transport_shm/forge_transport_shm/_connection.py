"""One shm connection: frames over a pipe pair, bulk buffers through shared memory.

Each direction is one pipe carrying frames, in the order ``send`` was called::

    u8 kind | pad | u16 count | u32 meta_len | count x descriptor | meta | inline buffers

- ``MSG``: a message. Descriptor ``(segment, offset, nbytes)`` per buffer; segment 0 means the
  bytes follow inline in the pipe (small buffers), otherwise they lie in that shared segment.
- ``RELEASE``: ``count x (segment, offset)``: the receiver no longer holds any buffer of the
  message whose extent starts there, so the sender may write over it.
- ``FORGET``: ``count x segment``: the sender unmapped these segments (they were free and the
  process keeps enough free memory already); the receiver drops its mapping.

A buffer of ``FORGE_SHM_MIN_BYTES`` (default 64 KiB) or more is copied once, by the sender,
into a pooled segment; the receiver gets a memoryview over its own mapping of that memory, and
a tensor rebuilt over it (``torch.frombuffer``) reads it in place. The views of one message
share a finalizer: when the last object built over them is gone, a ``RELEASE`` goes back. A
segment's descriptor reaches the receiver over the Unix socket before the first frame that
uses it (both are written before ``send`` returns, the socket first).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import socket
import struct
import threading
import weakref
from typing import Callable, Sequence

from forge_core.errors import TransportError

from ._hot import hot_loop
from ._segments import FreeBudget, InboundMaps, OutboundPool, aligned

log = logging.getLogger("forge.shm")

MSG, RELEASE, FORGET = 1, 2, 3
HEAD = struct.Struct("<BxHI")
DESC = struct.Struct("<QQQ")
EXTENT = struct.Struct("<QQ")
SEGMENT_ID = struct.Struct("<Q")
SEGMENT_RECORD = struct.Struct("<cQQ")  # b"S", id, size; the memfd rides along (SCM_RIGHTS)

MIN_SHM_BYTES = max(1, int(os.environ.get("FORGE_SHM_MIN_BYTES", str(64 * 1024))))
MAX_META = int(os.environ.get("FORGE_MAX_META_BYTES", str(256 << 20)))
MAX_MESSAGE = int(os.environ.get("FORGE_MAX_MESSAGE_BYTES", str(32 << 30)))
MAX_BUFFERS = 4096
_STAGING = 256 * 1024
_IOV_MAX = 512  # parts per writev (Linux allows 1024)

# Process-wide counters, for tests and benchmarks (``forge_transport_shm.stats()``).
STATS: collections.Counter = collections.Counter()


def _release_later(connection_ref: "weakref.ref[ShmConnection]", segment_id: int,
                   offset: int) -> None:
    """A finalizer: the last view of a message's extent is gone (on any thread)."""
    connection = connection_ref()
    if connection is None or connection.closed:
        return
    try:
        if threading.get_ident() == connection._thread:
            # Not written from here: a finalizer can run in the middle of any code, this
            # connection's own writes included. The loop runs it next, in order.
            connection._loop.call_soon(connection._queue_release, segment_id, offset)
        else:
            connection._loop.call_soon_threadsafe(connection._queue_release, segment_id, offset)
    except Exception:  # its event loop is closed (or the interpreter is exiting): nothing to do
        pass


class ShmConnection:
    """Implements ``forge_core.transport.Connection`` over a pipe pair and a Unix socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, read_fd: int,
                 write_fd: int, budget: FreeBudget, peer: str):
        self._loop = loop
        self._thread = threading.get_ident()  # the loop's thread: connections are made there
        self._sock = sock
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._peer = peer
        self._pool = OutboundPool(budget)
        self._maps = InboundMaps()
        self._hot = hot_loop(loop)
        self._release_cb = functools.partial(_release_later, weakref.ref(self))
        self._out: collections.deque = collections.deque()  # unwritten parts, in order
        self._staging = bytearray(_STAGING)
        self._start = 0
        self._end = 0
        self._frame_len = 0  # length of the frame at _start once its header is parsed
        self._on_message: Callable | None = None
        self._on_closed: Callable | None = None
        self._early: list[tuple[bytes, list]] = []
        self.closed = False
        self._close_error: BaseException | None = None
        STATS["connections"] += 1
        loop.add_reader(read_fd, self._on_readable)
        loop.add_reader(sock.fileno(), self._on_control)

    # -- Connection API ----------------------------------------------------------------------
    def set_receiver(self, on_message: Callable, on_closed: Callable) -> None:
        self._on_message, self._on_closed = on_message, on_closed
        early, self._early = self._early, []
        for meta, buffers in early:
            on_message(meta, buffers)
        if self.closed:
            on_closed(self._close_error)

    def send(self, meta: bytes, buffers: Sequence[memoryview] = ()) -> None:
        if self.closed:
            raise ConnectionResetError(f"shm connection to {self._peer} is closed")
        if buffers:
            self._write(self._frame_with_buffers(meta, buffers))
        else:
            self._write([HEAD.pack(MSG, 0, len(meta)) + meta])
        self._hot.poke()

    def close(self) -> None:
        if self.closed:
            return
        if self._out:
            self._flush()  # one last try: what the pipe takes now still reaches the peer
        self._shutdown(None)

    @property
    def write_buffer_size(self) -> int:
        return sum(len(part) for part in self._out)

    def stats(self) -> dict[str, int]:
        return {"segments": self._pool.segments, "segments_created": self._pool.created,
                "mapped_from_peer": len(self._maps)}

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ShmConnection to {self._peer} {state} segments={self._pool.segments}>"

    # -- sending -----------------------------------------------------------------------------
    def _frame_with_buffers(self, meta: bytes, buffers: Sequence) -> list:
        views = [b if type(b) is memoryview else memoryview(b) for b in buffers]
        if len(views) > MAX_BUFFERS:
            raise TransportError(f"a message may carry at most {MAX_BUFFERS} buffers")
        big = sum(aligned(v.nbytes) for v in views if v.nbytes >= MIN_SHM_BYTES)
        placed = self._place(views, big) if big else None
        descriptors = bytearray()
        inline = []
        for view in views:
            nbytes = view.nbytes
            if placed is not None and nbytes >= MIN_SHM_BYTES:
                segment, offset = placed
                descriptors += DESC.pack(segment, offset, nbytes)
                placed = (segment, offset + aligned(nbytes))
            else:
                descriptors += DESC.pack(0, 0, nbytes)
                if nbytes:
                    inline.append(view)
        header = HEAD.pack(MSG, len(views), len(meta)) + descriptors + meta
        return [header, *inline]

    def _place(self, views: list[memoryview], total: int) -> tuple[int, int] | None:
        """Copy the large buffers into one extent of a segment; None: send them inline."""
        try:
            segment, offset, new = self._pool.allocate(total)
        except OSError as exc:  # out of memory or descriptors: the pipe still works
            STATS["inline_fallbacks"] += 1
            log.warning("shared memory unavailable (%r); sending %d bytes through the pipe",
                        exc, total)
            return None
        if new:
            try:
                socket.send_fds(self._sock, [SEGMENT_RECORD.pack(b"S", segment.id, segment.size)],
                                [segment.fd])
            except OSError as exc:
                self._pool.discard(segment.id)  # the peer cannot map it: never use it
                STATS["inline_fallbacks"] += 1
                log.warning("could not pass a shared segment to %s (%r); sending inline",
                            self._peer, exc)
                return None
            segment.close_fd()  # the mapping keeps the memory; the peer has its own descriptor
            STATS["segments_created"] += 1
        cursor = offset
        mm = segment.mm
        for view in views:
            nbytes = view.nbytes
            if nbytes >= MIN_SHM_BYTES:
                mm[cursor:cursor + nbytes] = view if view.format == "B" else view.cast("B")
                cursor += aligned(nbytes)
        STATS["shm_messages"] += 1
        return segment.id, offset

    def _write(self, parts: list) -> None:
        if self._out:  # earlier frames still wait for the pipe: queue behind them, in order
            self._queue(parts, 0)
            return
        try:
            if len(parts) == 1:
                written = os.write(self._write_fd, parts[0])
            else:
                written = os.writev(self._write_fd, parts[:_IOV_MAX])
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._shutdown(exc)
            raise ConnectionResetError(f"shm connection to {self._peer} broke: {exc}") from exc
        self._queue(parts, written)

    def _queue(self, parts: list, skip: int) -> None:
        """Queue what is left of ``parts`` after ``skip`` bytes were written."""
        for part in parts:
            size = len(part) if type(part) is bytes else memoryview(part).nbytes
            if skip >= size:
                skip -= size
                continue
            view = memoryview(part).cast("B")[skip:] if skip else part
            skip = 0
            # Copied: the caller may reuse its buffer once ``send`` returns. Only small inline
            # buffers and headers are ever queued; large ones went to shared memory.
            self._out.append(view if type(view) is bytes else bytes(view))
        if self._out and not self.closed:
            self._loop.add_writer(self._write_fd, self._flush)

    def _flush(self) -> None:
        out = self._out
        while out:
            batch = [out[i] for i in range(min(len(out), _IOV_MAX))]
            try:
                written = os.writev(self._write_fd, batch)
            except BlockingIOError:
                return
            except OSError as exc:
                self._shutdown(exc)
                return
            while written:
                head = out[0]
                if len(head) <= written:
                    written -= len(head)
                    out.popleft()
                else:
                    out[0] = head[written:]
                    written = 0
        self._loop.remove_writer(self._write_fd)

    # -- releasing what the peer sent --------------------------------------------------------
    def _queue_release(self, segment_id: int, offset: int) -> None:
        """Runs on the loop, never inside other code of this connection: safe to write."""
        if self.closed:
            return
        try:
            self._write([HEAD.pack(RELEASE, 1, 0) + EXTENT.pack(segment_id, offset)])
        except ConnectionError:
            pass

    # -- receiving ---------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self._end == len(self._staging):  # compact, or grow if a frame fills it all
            self._make_room(0 if self._start else 2 * len(self._staging))
        try:
            count = os.readv(self._read_fd, [memoryview(self._staging)[self._end:]])
        except BlockingIOError:
            return
        except OSError as exc:
            self._shutdown(exc)
            return
        if not count:
            self._shutdown(ConnectionResetError(f"peer {self._peer} closed the connection"))
            return
        self._end += count
        self._hot.poke()
        try:
            self._parse()
        except (TransportError, ValueError, struct.error) as exc:
            self._reject(str(exc))

    def _make_room(self, frame_len: int) -> None:
        """Make the frame at ``_start`` fit in the staging buffer."""
        pending = self._end - self._start
        if self._start:
            self._staging[:pending] = self._staging[self._start:self._end]
            self._start, self._end = 0, pending
        if frame_len > len(self._staging):
            self._staging.extend(bytes(frame_len - len(self._staging)))

    def _parse(self) -> None:
        staging = self._staging
        # Fast path: whole frames without buffers (calls and replies with small arguments).
        while not self._frame_len and self._end - self._start >= HEAD.size:
            start = self._start
            kind, count, meta_len = HEAD.unpack_from(staging, start)
            end = start + HEAD.size + meta_len
            if kind != MSG or count or end > self._end or meta_len > MAX_META:
                break
            self._start = end
            self._deliver(bytes(staging[start + HEAD.size:end]), [])
            if self.closed:
                return
        while not self.closed:
            available = self._end - self._start
            if available < HEAD.size:
                break
            if not self._frame_len:
                self._frame_len = self._measure(available)
                if not self._frame_len:
                    break
            if available < self._frame_len:
                if self._frame_len > len(staging) - self._start:
                    self._make_room(self._frame_len)
                    staging = self._staging
                break
            start = self._start
            self._start += self._frame_len
            self._frame_len = 0
            self._handle(start)
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._staging) > 4 * _STAGING:  # a huge frame passed: give its room back
                self._staging = bytearray(_STAGING)

    def _measure(self, available: int) -> int:
        """The length of the frame at ``_start``, or 0 until its descriptors have arrived."""
        kind, count, meta_len = HEAD.unpack_from(self._staging, self._start)
        if count > MAX_BUFFERS:
            raise TransportError(f"frame with {count} buffers exceeds {MAX_BUFFERS}")
        if kind == RELEASE:
            return HEAD.size + count * EXTENT.size
        if kind == FORGET:
            return HEAD.size + count * SEGMENT_ID.size
        if kind != MSG:
            raise TransportError(f"unknown frame kind {kind}")
        if meta_len > MAX_META:
            raise TransportError(f"frame metadata of {meta_len} bytes exceeds {MAX_META}")
        descriptors = HEAD.size + count * DESC.size
        if available < descriptors:
            if descriptors > len(self._staging) - self._start:
                self._make_room(descriptors)
            return 0
        inline = 0
        for index in range(count):
            segment, _, nbytes = DESC.unpack_from(self._staging, self._start + HEAD.size
                                                  + index * DESC.size)
            if not segment:
                inline += nbytes
        if inline > MAX_MESSAGE:
            raise TransportError(f"message of {inline} bytes exceeds {MAX_MESSAGE}")
        return descriptors + meta_len + inline

    def _handle(self, start: int) -> None:
        staging = self._staging
        kind, count, meta_len = HEAD.unpack_from(staging, start)
        position = start + HEAD.size
        if kind == RELEASE:
            forget = []
            for index in range(count):
                segment, offset = EXTENT.unpack_from(staging, position + index * EXTENT.size)
                dropped = self._pool.release(segment, offset)
                if dropped is not None:
                    forget.append(dropped)
            if forget:
                body = b"".join(SEGMENT_ID.pack(s) for s in forget)
                self._write([HEAD.pack(FORGET, len(forget), 0) + body])
            return
        if kind == FORGET:
            for index in range(count):
                self._maps.forget(SEGMENT_ID.unpack_from(staging, position + index * 8)[0])
            return
        descriptors = [DESC.unpack_from(staging, position + i * DESC.size) for i in range(count)]
        position += count * DESC.size
        meta = bytes(staging[position:position + meta_len])
        position += meta_len
        buffers: list = [None] * count
        shared: list[int] = []
        for index, (segment, offset, nbytes) in enumerate(descriptors):
            if segment:
                shared.append(index)
            else:
                buffers[index] = bytearray(staging[position:position + nbytes])
                position += nbytes
        if shared:
            self._map_shared(descriptors, shared, buffers)
        self._deliver(meta, buffers)

    def _map_shared(self, descriptors: list, shared: list[int], buffers: list) -> None:
        segment = descriptors[shared[0]][0]
        base = descriptors[shared[0]][1]
        size = self._maps.size_of(segment)
        if size < 0:  # its descriptor is on the socket already (sent first): read it now
            self._on_control()
            size = self._maps.size_of(segment)
            if size < 0:
                raise TransportError(f"frame refers to unknown shared segment {segment}")
        end = base
        for index in shared:
            seg, offset, nbytes = descriptors[index]
            if seg != segment or offset < base or offset + nbytes > size:
                raise TransportError("frame refers to memory outside its shared segment")
            end = max(end, offset + nbytes)
        spans = [(descriptors[i][1] - base, descriptors[i][2]) for i in shared]
        views = self._maps.views(segment, base, end - base, spans, self._release_cb)
        for index, view in zip(shared, views):
            buffers[index] = view

    def _deliver(self, meta: bytes, buffers: list) -> None:
        if self._on_message is None:
            self._early.append((meta, buffers))
            return
        try:
            self._on_message(meta, buffers)
        except Exception:  # the kernel reports its own errors; never let one kill the reader
            log.exception("error while handling a message from %s", self._peer)

    def _on_control(self) -> None:
        """Segment descriptors from the peer, and its end of the socket closing."""
        while not self.closed:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, SEGMENT_RECORD.size + 1, 1,
                                                  socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:
                # The peer is going. Frames may still wait in the pipe, and the pipe's own
                # end-of-file closes this connection after they are delivered.
                self._loop.remove_reader(self._sock.fileno())
                return
            if len(data) != SEGMENT_RECORD.size or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                self._reject("malformed shared-segment record")
                return
            tag, segment, _ = SEGMENT_RECORD.unpack(data)
            try:
                if tag != b"S" or not segment:
                    os.close(fds[0])
                    raise ValueError("malformed shared-segment record")
                self._maps.add(segment, fds[0])
            except ValueError as exc:
                self._reject(str(exc))
                return

    # -- closing -----------------------------------------------------------------------------
    def _reject(self, reason: str) -> None:
        log.warning("closing shm connection with %s: %s", self._peer, reason)
        self._shutdown(TransportError(reason))

    def abandon_if_orphaned(self) -> bool:
        """Close this connection if its event loop is gone (``asyncio.run`` returned): nobody
        would ever read its end-of-file, and it would hold its segments until exit."""
        if self.closed or not self._loop.is_closed():
            return False
        self._shutdown(None)
        return True

    def _shutdown(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._close_error = error
        loop = self._loop
        if not loop.is_closed():
            loop.remove_reader(self._read_fd)
            loop.remove_reader(self._sock.fileno())
            loop.remove_writer(self._write_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)
        self._sock.close()
        self._out.clear()
        self._pool.close()
        self._maps.clear()
        if self._on_closed is not None and not loop.is_closed():
            loop.call_soon(self._on_closed, error)
