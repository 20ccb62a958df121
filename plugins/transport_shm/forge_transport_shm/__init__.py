"""Forge's same-host transport: pipes for frames, shared memory for bulk buffers.

It reaches only processes that report the same ``host_id`` (``forge_core.transport.ProcInfo``)
and is cheaper than TCP, so the kernel picks it between processes of one host.

- Connections start on a Unix socket in Linux's abstract namespace (``_handshake``): the same
  HMAC challenge as TCP, and nothing from the peer is trusted before it passes.
- Frames travel through a pipe pair, and the event loop stays awake for a few microseconds
  after traffic (``_hot``): the fastest wake-up measured between two Python processes here.
- Buffers of ``FORGE_SHM_MIN_BYTES`` or more are copied once into pooled memfd segments and
  read in place by the receiver (``_segments``, ``_connection``). Nothing is ever created in
  ``/dev/shm``: the memory disappears with the last process that maps it.

Tunables (environment): ``FORGE_SHM_MIN_BYTES`` (64 KiB), ``FORGE_SHM_SPIN_US`` (50),
``FORGE_SHM_POOL_MB`` (free shared memory a process keeps for reuse, 1024).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
import weakref
from typing import Any, Callable

from forge_core.errors import TransportError
from forge_core.hookspecs import hookimpl
from forge_core.transport import Authenticator, Connection, ProcInfo

from . import _handshake
from ._connection import STATS, ShmConnection
from ._segments import FreeBudget

log = logging.getLogger("forge.shm")

HANDSHAKE_TIMEOUT = float(os.environ.get("FORGE_HANDSHAKE_TIMEOUT", "10"))
POOL_ENV = "FORGE_SHM_POOL_MB"


def available() -> bool:
    """memfd, abstract Unix sockets and SCM_RIGHTS: Linux only."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def stats() -> dict[str, int]:
    """Process-wide counters: connections, segments_created, shm_messages, inline_fallbacks."""
    return dict(STATS)


class ShmTransport:
    name = "shm"
    cost = 10  # below TCP's 100: preferred wherever it reaches

    def __init__(self) -> None:
        self._listeners: list[tuple[asyncio.AbstractEventLoop, socket.socket]] = []
        self._handshakes: set[asyncio.Task] = set()
        self._budget = FreeBudget(int(os.environ.get(POOL_ENV, "1024")) << 20)
        self._connections: "weakref.WeakSet[ShmConnection]" = weakref.WeakSet()

    def reaches(self, local: ProcInfo, peer: ProcInfo) -> bool:
        return local.host_id == peer.host_id and self.name in peer.addresses

    async def listen(self, on_connection: Callable[[Connection], None], auth: Authenticator,
                     **options: Any) -> str:
        loop = asyncio.get_running_loop()
        name = f"forge-shm-{os.getpid()}-{uuid.uuid4().hex[:16]}"
        sock = _handshake.new_socket()
        try:
            sock.bind("\0" + name)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self._listeners.append((loop, sock))
        loop.add_reader(sock.fileno(), self._accept, loop, sock, on_connection, auth)
        return "@" + name

    def _accept(self, loop: asyncio.AbstractEventLoop, listener: socket.socket,
                on_connection: Callable[[Connection], None], auth: Authenticator) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of descriptors: try again on the next event
                log.warning("shm listener could not accept: %r", exc)
                return
            sock.setblocking(False)
            task = loop.create_task(self._serve(loop, sock, on_connection, auth))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                     on_connection: Callable[[Connection], None], auth: Authenticator) -> None:
        try:
            read_fd, write_fd = await asyncio.wait_for(
                _handshake.server_side(loop, sock, auth), HANDSHAKE_TIMEOUT)
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:  # bad secret, garbage, timeout: only this connection ends
            log.warning("refused a shm connection from %s: %s", _peer_of(sock),
                        str(exc) or type(exc).__name__)
            sock.close()
            return
        on_connection(self._track(ShmConnection(loop, sock, read_fd, write_fd, self._budget,
                                                _peer_of(sock))))

    async def connect(self, address: str, auth: Authenticator) -> Connection:
        loop = asyncio.get_running_loop()
        sockaddr = _handshake.to_sockaddr(address)
        sock = _handshake.new_socket()
        try:
            try:
                await loop.sock_connect(sock, sockaddr)
            except OSError as exc:
                raise TransportError(f"cannot connect to shm address {address}: {exc}") from exc
            try:
                read_fd, write_fd = await asyncio.wait_for(
                    _handshake.client_side(loop, sock, auth), HANDSHAKE_TIMEOUT)
            except asyncio.TimeoutError:
                raise TransportError(f"handshake with {address} timed out") from None
        except BaseException:
            sock.close()
            raise
        return self._track(ShmConnection(loop, sock, read_fd, write_fd, self._budget,
                                         _peer_of(sock)))

    def _track(self, connection: ShmConnection) -> ShmConnection:
        self.sweep()
        self._connections.add(connection)
        return connection

    def sweep(self) -> int:
        """Close connections whose event loop has closed; returns how many.

        A process that runs several event loops one after another (``asyncio.run`` twice,
        or a test suite) leaves connections behind on each finished loop, and no callback
        can run on a closed loop to notice that their peers went away. Each new connection
        sweeps them, so their segments do not pile up."""
        return sum(c.abandon_if_orphaned() for c in list(self._connections))

    async def close(self) -> None:
        """Stop listening (connections already made stay up) and abandon pending handshakes."""
        here = asyncio.get_running_loop()
        for loop, sock in self._listeners:
            if loop is here or loop.is_closed():
                _stop_listening(loop, sock)
            else:  # the listener's readiness callback lives on that loop's thread
                try:
                    loop.call_soon_threadsafe(_stop_listening, loop, sock)
                except RuntimeError:
                    sock.close()
        self._listeners.clear()
        for task in list(self._handshakes):
            task.cancel()

    def __repr__(self) -> str:
        return f"<ShmTransport listeners={len(self._listeners)}>"


def _stop_listening(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    if not loop.is_closed():
        loop.remove_reader(sock.fileno())
    sock.close()


def _peer_of(sock: socket.socket) -> str:
    """``pid N`` of the peer, from the kernel's credentials of the socket (for messages)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        return f"pid {int.from_bytes(creds[:4], sys.byteorder)}"
    except OSError:
        return "?"


@hookimpl
def forge_transports() -> list:
    return [ShmTransport()] if available() else []
