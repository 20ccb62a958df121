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
_STAGING = 256 * 1024


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
_SERVER_WAIT_ANSWER, _CLIENT_WAIT_HELLO, _CLIENT_WAIT_ANSWER = range(3)
_HEADER, _LENGTHS, _META, _BUFFERS, _CLOSED = range(3, 8)


class FrameProtocol(asyncio.BufferedProtocol):
    """One TCP connection: the handshake, then frames in both directions.

    Reads land in a staging buffer; a large out-of-band buffer is read straight into a
    bytearray of its exact size instead (``get_buffer`` hands that out), so its bytes are
    copied once, by the kernel's socket read.
    """

    def __init__(self, auth: Authenticator, server_side: bool, on_ready: Callable,
                 on_failed: Callable | None = None):
        self._auth = auth
        self._server_side = server_side
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._transport: asyncio.Transport | None = None
        self._staging = bytearray(_STAGING)
        self._start = 0
        self._end = 0
        self._target: memoryview | None = None  # a large buffer being filled in place
        self._target_pos = 0
        self._need = 0
        self._state = _CLIENT_WAIT_HELLO
        self._nonce = b""
        self._meta_len = 0
        self._lengths: tuple[int, ...] = ()
        self._meta = b""
        self._buffers: list[bytearray] = []
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
            self._expect(_SERVER_WAIT_ANSWER, Authenticator.CLIENT_ANSWER_BYTES)
        else:
            self._expect(_CLIENT_WAIT_HELLO, Authenticator.SERVER_HELLO_BYTES)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._target_pos:]
        if self._end == len(self._staging):
            self._compact()
        return memoryview(self._staging)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._target_pos += nbytes
            if self._target_pos < len(self._target):
                return
            self._target = None
            self._next_buffer_done()
        else:
            self._end += nbytes
        try:
            self._parse()
        except (TransportError, struct.error) as exc:
            self._reject(str(exc))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _CLIENT_WAIT_ANSWER and exc is None:
            # A server closes right after our answer only when our MAC was wrong.
            exc = AuthenticationError("the peer refused our cluster secret")
        self._state = _CLOSED
        self._staging = bytearray()  # a closed connection may be referenced for a while
        self._start = self._end = 0
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
        transport = self._transport
        if transport is None or self._state == _CLOSED or transport.is_closing():
            raise ConnectionResetError(f"connection to {self._peer} is closed")
        if not buffers:
            transport.write(_FRAME.pack(len(meta), 0) + meta)
            return
        lengths = [memoryview(b).nbytes for b in buffers]
        header = _FRAME.pack(len(meta), len(buffers)) + struct.pack(f"<{len(buffers)}Q", *lengths)
        transport.writelines([header + meta, *buffers])

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    @property
    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport else 0

    # -- parsing -----------------------------------------------------------------------------
    def _expect(self, state: int, nbytes: int) -> None:
        self._state, self._need = state, nbytes

    def _compact(self) -> None:
        pending = self._end - self._start
        if self._start:
            self._staging[:pending] = self._staging[self._start:self._end]
            self._start, self._end = 0, pending
        if self._end == len(self._staging):  # one part is larger than the staging buffer
            self._staging.extend(bytes(len(self._staging)))

    def _take(self, nbytes: int) -> bytes:
        chunk = bytes(self._staging[self._start:self._start + nbytes])
        self._start += nbytes
        return chunk

    def _parse(self) -> None:
        # Fast path: whole frames without out-of-band buffers (small calls and replies).
        staging = self._staging
        while self._state == _HEADER and self._end - self._start >= _FRAME.size:
            start = self._start
            meta_len, n_buffers = _FRAME.unpack_from(staging, start)
            meta_start = start + _FRAME.size
            if n_buffers or meta_len > MAX_META or meta_start + meta_len > self._end:
                break
            self._start = meta_start + meta_len
            self._meta = bytes(staging[meta_start:self._start])
            self._lengths = ()
            self._deliver()
        while self._state != _CLOSED and self._target is None:
            available = self._end - self._start
            if self._state == _BUFFERS:
                self._fill_buffer(available)
                continue
            if available < self._need:
                if self._need > len(self._staging) - self._start:
                    self._compact()
                return
            self._step()
        if self._start == self._end:
            self._start = self._end = 0

    def _step(self) -> None:
        state = self._state
        if state == _HEADER:
            meta_len, n_buffers = _FRAME.unpack(self._take(_FRAME.size))
            if meta_len > MAX_META:
                raise TransportError(f"frame metadata of {meta_len} bytes exceeds {MAX_META}")
            if n_buffers > MAX_BUFFERS:
                raise TransportError(f"frame with {n_buffers} buffers exceeds {MAX_BUFFERS}")
            self._meta_len = meta_len
            if n_buffers:
                self._expect(_LENGTHS, 8 * n_buffers)
            else:
                self._lengths = ()
                self._expect(_META, meta_len)
        elif state == _LENGTHS:
            self._lengths = struct.unpack(f"<{self._need // 8}Q", self._take(self._need))
            if sum(self._lengths) > MAX_MESSAGE:
                raise TransportError(f"message of {sum(self._lengths)} bytes exceeds {MAX_MESSAGE}")
            self._expect(_META, self._meta_len)
        elif state == _META:
            self._meta = self._take(self._meta_len)
            self._buffers = []
            if self._lengths:
                self._state = _BUFFERS
            else:
                self._deliver()
        else:
            self._handshake_step(state)

    def _fill_buffer(self, available: int) -> None:
        size = self._lengths[len(self._buffers)]
        buffer = bytearray(size)
        have = min(available, size)
        buffer[:have] = self._staging[self._start:self._start + have]
        self._start += have
        self._buffers.append(buffer)
        if have < size:
            self._target, self._target_pos = memoryview(buffer), have
            return
        self._next_buffer_done()

    def _next_buffer_done(self) -> None:
        if len(self._buffers) == len(self._lengths):
            self._deliver()

    def _deliver(self) -> None:
        meta, buffers = self._meta, self._buffers
        self._meta, self._buffers = b"", []
        self._expect(_HEADER, _FRAME.size)
        if self._on_message is None:
            self._early.append((meta, buffers))
            return
        try:
            self._on_message(meta, buffers)
        except Exception:  # the kernel reports its own errors; never let one kill the reader
            log.exception("error while handling a message from %s", self._peer)

    # -- handshake ---------------------------------------------------------------------------
    def _handshake_step(self, state: int) -> None:
        data = self._take(self._need)
        try:
            if state == _SERVER_WAIT_ANSWER:
                answer = self._auth.check_client_answer(data, self._nonce)
                self._transport.write(answer)  # type: ignore[union-attr]
                self._authenticated()
            elif state == _CLIENT_WAIT_HELLO:
                answer, self._nonce = self._auth.client_answer(data)
                self._transport.write(answer)  # type: ignore[union-attr]
                self._expect(_CLIENT_WAIT_ANSWER, Authenticator.SERVER_ANSWER_BYTES)
            elif state == _CLIENT_WAIT_ANSWER:
                self._auth.check_server_answer(data, self._nonce)
                self._authenticated()
        except AuthenticationError as exc:
            self._reject(str(exc))

    def _authenticated(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._ready = True
        self._expect(_HEADER, _FRAME.size)
        self._on_ready(self)

    def _handshake_expired(self) -> None:
        if not self._ready:
            self._reject("handshake timed out")

    def _reject(self, reason: str) -> None:
        if self._state == _CLOSED:
            return
        log.warning("closing TCP connection from %s: %s", self._peer, reason)
        self._state = _CLOSED
        if not self._ready and self._on_failed is not None:
            self._on_failed(AuthenticationError(reason))
            self._on_failed = None
        if self._transport is not None:
            self._transport.abort()


@hookimpl
def forge_transports() -> list:
    return [TcpTransport()]
