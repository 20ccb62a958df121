"""Forge's TCP transport: asyncio streams on uvloop, length-prefixed frames, an HMAC handshake.

It reaches any host. A frame is::

    u32 meta_len | u32 n_buffers | n_buffers x u64 buffer_len | meta | buffer 0 | buffer 1 ...

Buffers are written with ``writelines`` (scatter-gather, no copy into one big bytes) and read
straight into a buffer of their exact size, which becomes the object the receiver sees.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
from typing import Callable, Sequence

from forge_core.errors import AuthenticationError, TransportError
from forge_core.hookspecs import hookimpl
from forge_core.transport import Authenticator, Connection, ProcInfo

log = logging.getLogger("forge.tcp")

HOST_ENV = "FORGE_TCP_HOST"  # address to listen on (default: loopback)
ADVERTISE_ENV = "FORGE_TCP_ADVERTISE"  # address peers should dial, if not the listen address
# TLS (optional): encrypt every connection. Authentication stays the HMAC handshake inside it.
TLS_CERT_ENV, TLS_KEY_ENV, TLS_CA_ENV = "FORGE_TLS_CERT", "FORGE_TLS_KEY", "FORGE_TLS_CA"
HANDSHAKE_TIMEOUT = float(os.environ.get("FORGE_HANDSHAKE_TIMEOUT", "10"))
MAX_META = int(os.environ.get("FORGE_MAX_META_BYTES", str(256 << 20)))
MAX_MESSAGE = int(os.environ.get("FORGE_MAX_MESSAGE_BYTES", str(32 << 30)))
MAX_BUFFERS = 4096

_FRAME = struct.Struct("<II")
_FRAME_SIZE, _pack_frame, _unpack_frame = _FRAME.size, _FRAME.pack, _FRAME.unpack_from
# A frame up to this size is collected whole from successive reads before it is decoded;
# a larger one is read part by part into buffers of their exact sizes.
_COLLECT_LIMIT = 256 * 1024


def tls_contexts() -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server, client) TLS contexts from FORGE_TLS_CERT/KEY[/CA], or (None, None).

    The certificate is verified against FORGE_TLS_CA (default: the certificate itself, for a
    self-signed pair shared by the cluster); host names are not checked, since peers are
    addressed by IP and proven by the HMAC handshake.
    """
    cert, key = os.environ.get(TLS_CERT_ENV), os.environ.get(TLS_KEY_ENV)
    if not cert:
        return None, None
    if not key:
        raise TransportError(f"{TLS_CERT_ENV} is set but {TLS_KEY_ENV} is not: TLS needs both")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    client.load_verify_locations(os.environ.get(TLS_CA_ENV) or cert)
    return server, client


class TcpTransport:
    name = "tcp"
    cost = 100

    def __init__(self) -> None:
        self._servers: list[asyncio.AbstractServer] = []

    def reaches(self, local: ProcInfo, peer: ProcInfo) -> bool:
        return self.name in peer.addresses

    async def listen(self, on_connection: Callable[[Connection], None], auth: Authenticator,
                     host: str | None = None, port: int = 0) -> str:
        host = host or os.environ.get(HOST_ENV, "127.0.0.1")
        loop = asyncio.get_running_loop()
        server_tls, _ = tls_contexts()
        server = await loop.create_server(
            lambda: FrameProtocol(auth, server_side=True, on_ready=on_connection),
            host, port, backlog=1024, reuse_address=True, ssl=server_tls)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        advertised = os.environ.get(ADVERTISE_ENV)
        if not advertised:
            advertised = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
        return f"{advertised}:{port}"

    async def connect(self, address: str, auth: Authenticator) -> Connection:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()

        def on_ready(conn: FrameProtocol) -> None:
            if not ready.done():
                ready.set_result(conn)

        def on_failed(exc: BaseException) -> None:
            if not ready.done():
                ready.set_exception(exc)

        _, client_tls = tls_contexts()
        try:
            _, protocol = await loop.create_connection(
                lambda: FrameProtocol(auth, server_side=False, on_ready=on_ready,
                                      on_failed=on_failed), host, int(port), ssl=client_tls)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot connect to {address}: {exc}") from exc
        try:
            return await asyncio.wait_for(ready, HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:
            protocol.close()
            raise TransportError(f"handshake with {address} timed out") from None

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()


# Protocol states
_SERVER_WAIT_ANSWER, _CLIENT_WAIT_HELLO, _CLIENT_WAIT_ANSWER, _FRAMES, _CLOSED = range(5)


class FrameProtocol(asyncio.Protocol):
    """One TCP connection: the handshake, then frames in both directions.

    Small frames (every call and reply without large buffers) are decoded straight out of the
    bytes each read returns, with as little Python as possible: this runs once per message.
    A frame too large to collect that way has its parts (the metadata, then each buffer) read
    straight into bytearrays of their exact sizes: the connection hands reading over to a
    ``_PartReader`` until they are full, so those bytes are copied once, by the socket read.
    """

    def __init__(self, auth: Authenticator, server_side: bool, on_ready: Callable,
                 on_failed: Callable | None = None):
        self._auth = auth
        self._server_side = server_side
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._transport: asyncio.Transport | None = None
        self._write: Callable | None = None  # the transport's write, from handshake to close
        self._pending = b""  # the start of a frame (or handshake step) whose rest has not come
        self._state = _CLIENT_WAIT_HELLO
        self._nonce = b""
        self._on_message: Callable | None = None
        self._on_closed: Callable | None = None
        self._early: list[tuple[bytes, list]] = []
        self._closing = False
        self._ready = False  # handshake passed
        self._peer = "?"
        self._handshake_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_expired)
        if self._server_side:
            hello, self._nonce = self._auth.server_hello()
            transport.write(hello)  # type: ignore[attr-defined]
            self._state = _SERVER_WAIT_ANSWER
        else:
            self._state = _CLIENT_WAIT_HELLO

    def data_received(self, data: bytes) -> None:
        on_message = self._on_message  # set once the handshake is over, cleared on rejection
        if on_message is not None and not self._pending and len(data) >= _FRAME_SIZE:
            meta_len, n_buffers = _unpack_frame(data)
            if not n_buffers and len(data) == _FRAME_SIZE + meta_len and meta_len <= MAX_META:
                # The common case: a call or a reply arriving whole, alone, in one read.
                try:
                    on_message(data[_FRAME_SIZE:], [])
                except Exception:  # the kernel reports its own errors; never kill the reader
                    log.exception("error while handling a message from %s", self._peer)
                return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        """Any read: handshake steps, a frame in pieces, several frames, frames with buffers."""
        if self._pending:
            data, self._pending = self._pending + data, b""
        if self._state != _FRAMES:
            data = self._handshake(data)
            if not data:
                return
        on_message = self._on_message
        position, end = 0, len(data)
        try:
            while end - position >= _FRAME_SIZE and self._state == _FRAMES:
                meta_len, n_buffers = _unpack_frame(data, position)
                meta_end = position + _FRAME_SIZE + meta_len
                if n_buffers or meta_end > end or meta_len > MAX_META or on_message is None:
                    position = self._frame(data, position)
                    if position < 0:
                        return  # the rest of the frame is yet to come
                    continue
                try:
                    on_message(data[position + _FRAME_SIZE:meta_end], [])
                except Exception:  # the kernel reports its own errors; never kill the reader
                    log.exception("error while handling a message from %s", self._peer)
                position = meta_end
        except (TransportError, struct.error) as exc:
            self._reject(str(exc))
            return
        if position < end and self._state == _FRAMES:
            self._pending = data[position:]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _CLIENT_WAIT_ANSWER and exc is None:
            # A server closes right after our answer only when our MAC was wrong.
            exc = AuthenticationError("the peer refused our cluster secret")
        self._state = _CLOSED
        self._write = None
        self._pending = b""  # a closed connection may be referenced for a while
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if not self._ready:
            if self._on_failed is not None:
                self._on_failed(exc or TransportError("connection closed during the handshake"))
                self._on_failed = None
            return
        if self._on_closed is not None:
            if self._closing:
                self._on_closed(None)
            else:
                self._on_closed(exc or ConnectionResetError(f"peer {self._peer} closed the connection"))

    # -- Connection API ----------------------------------------------------------------------
    def set_receiver(self, on_message: Callable, on_closed: Callable) -> None:
        self._on_message, self._on_closed = on_message, on_closed
        early, self._early = self._early, []
        for meta, buffers in early:
            on_message(meta, buffers)
        if self._state == _CLOSED:
            on_closed(None if self._closing else ConnectionResetError("connection closed"))

    def send(self, meta: bytes, buffers: Sequence[memoryview] = ()) -> None:
        write = self._write
        if write is None:
            raise ConnectionResetError(f"connection to {self._peer} is closed")
        if not buffers:
            write(_pack_frame(len(meta), 0) + meta)
            return
        lengths = [memoryview(b).nbytes for b in buffers]
        header = _pack_frame(len(meta), len(buffers)) + struct.pack(f"<{len(buffers)}Q", *lengths)
        self._transport.writelines([header + meta, *buffers])  # type: ignore[union-attr]

    def close(self) -> None:
        self._closing = True
        self._write = None
        if self._transport is not None:
            self._transport.close()

    @property
    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport else 0

    # -- frames ------------------------------------------------------------------------------
    def _frame(self, data: bytes, position: int) -> int:
        """Decode the frame at ``position`` (any frame the fast path does not take); return
        where the next one starts, or -1 if the rest of this one has not arrived yet."""
        meta_len, n_buffers = _unpack_frame(data, position)
        if meta_len > MAX_META:
            raise TransportError(f"frame metadata of {meta_len} bytes exceeds {MAX_META}")
        if n_buffers > MAX_BUFFERS:
            raise TransportError(f"frame with {n_buffers} buffers exceeds {MAX_BUFFERS}")
        parts_start = position + _FRAME_SIZE + 8 * n_buffers
        if parts_start > len(data):
            self._pending = data[position:]
            return -1
        lengths = struct.unpack_from(f"<{n_buffers}Q", data, position + _FRAME_SIZE)
        if sum(lengths) > MAX_MESSAGE:
            raise TransportError(f"message of {sum(lengths)} bytes exceeds {MAX_MESSAGE}")
        sizes = (meta_len, *lengths)
        frame_end = parts_start + sum(sizes)
        if frame_end <= len(data):  # all here: cut it out
            view, buffers, at = memoryview(data), [], parts_start + meta_len
            for size in lengths:
                buffers.append(bytearray(view[at:at + size]))
                at += size
            self._deliver(data[parts_start:parts_start + meta_len], buffers)
            return frame_end
        if frame_end - position <= _COLLECT_LIMIT:  # small: collect it whole, then decode
            self._pending = data[position:]
            return -1
        reader = _PartReader(self, sizes)
        reader.take(memoryview(data)[parts_start:])
        self._transport.set_protocol(reader)  # type: ignore[union-attr]
        return -1

    def _parts_read(self, reader: "_PartReader") -> None:
        """The large frame ``reader`` collected is complete: deliver it, read frames again."""
        if self._state == _CLOSED:
            return
        self._transport.set_protocol(self)  # type: ignore[union-attr]
        self._deliver(bytes(reader.parts[0]), reader.parts[1:])

    def _deliver(self, meta: bytes, buffers: list) -> None:
        if self._on_message is None:
            self._early.append((meta, buffers))
            return
        try:
            self._on_message(meta, buffers)
        except Exception:  # the kernel reports its own errors; never let one kill the reader
            log.exception("error while handling a message from %s", self._peer)

    # -- handshake ---------------------------------------------------------------------------
    def _handshake(self, data: bytes) -> bytes:
        """Run handshake steps on ``data``; return what follows the handshake (frames)."""
        while self._state not in (_FRAMES, _CLOSED):
            need = _HANDSHAKE_BYTES[self._state]
            if len(data) < need:
                self._pending = data
                return b""
            step, data = data[:need], data[need:]
            self._handshake_step(step)
        return data if self._state == _FRAMES else b""

    def _handshake_step(self, data: bytes) -> None:
        state = self._state
        try:
            if state == _SERVER_WAIT_ANSWER:
                answer = self._auth.check_client_answer(data, self._nonce)
                self._transport.write(answer)  # type: ignore[union-attr]
                self._authenticated()
            elif state == _CLIENT_WAIT_HELLO:
                answer, self._nonce = self._auth.client_answer(data)
                self._transport.write(answer)  # type: ignore[union-attr]
                self._state = _CLIENT_WAIT_ANSWER
            elif state == _CLIENT_WAIT_ANSWER:
                self._auth.check_server_answer(data, self._nonce)
                self._authenticated()
        except AuthenticationError as exc:
            self._reject(str(exc))

    def _authenticated(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._ready = True
        self._state = _FRAMES
        self._write = self._transport.write  # type: ignore[union-attr]
        self._on_ready(self)

    def _handshake_expired(self) -> None:
        if not self._ready:
            self._reject("handshake timed out")

    def _reject(self, reason: str) -> None:
        if self._state == _CLOSED:
            return
        log.warning("closing TCP connection from %s: %s", self._peer, reason)
        self._state = _CLOSED
        self._write = self._on_message = None
        self._pending = b""
        if not self._ready and self._on_failed is not None:
            self._on_failed(AuthenticationError(reason))
            self._on_failed = None
        if self._transport is not None:
            self._transport.abort()


_HANDSHAKE_BYTES = {
    _SERVER_WAIT_ANSWER: Authenticator.CLIENT_ANSWER_BYTES,
    _CLIENT_WAIT_HELLO: Authenticator.SERVER_HELLO_BYTES,
    _CLIENT_WAIT_ANSWER: Authenticator.SERVER_ANSWER_BYTES,
}


class _PartReader(asyncio.BufferedProtocol):
    """Reads the parts of one large frame (its metadata, then each buffer) straight into
    bytearrays of their exact sizes; each is allocated only when its first byte is due, so a
    length prefix alone allocates at most one part. The connection hands reading to it and
    takes it back when the frame is complete."""

    def __init__(self, owner: FrameProtocol, sizes: tuple[int, ...]):
        self._owner = owner
        self._sizes = sizes
        self.parts: list[bytearray] = []
        self._view = memoryview(b"")
        self._filled = 0
        self._next_part()

    def _next_part(self) -> None:
        """Open the next part that needs bytes; tell the owner once all are full."""
        while len(self.parts) < len(self._sizes):
            part = bytearray(self._sizes[len(self.parts)])
            self.parts.append(part)
            if part:
                self._view, self._filled = memoryview(part), 0
                return
        self._view = memoryview(b"")
        self._owner._parts_read(self)

    def take(self, data: memoryview) -> None:
        """The bytes that came with the frame's header, before reading was handed over."""
        while data and self._view:
            n = min(len(data), len(self._view) - self._filled)
            self._view[self._filled:self._filled + n] = data[:n]
            data = data[n:]
            self.buffer_updated(n)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled == len(self._view):
            self._next_part()

    def eof_received(self) -> bool:
        return self._owner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.connection_lost(exc)


@hookimpl
def forge_transports() -> list:
    return [TcpTransport()]
