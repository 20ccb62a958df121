"""Setting up a connection: Unix socket, mutual HMAC handshake, then the data pipes.

Both ends talk over an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket bound in Linux's abstract
namespace (no file on disk, gone when the listener closes). The socket keeps message
boundaries, so each handshake step is one message of an exact size, and a file descriptor
passed with SCM_RIGHTS travels with the one message it belongs to.

Before the peer is proven, this end reads only fixed-size handshake messages and never
accepts a file descriptor (a plain ``recv`` makes the kernel drop any that were sent).
Nothing is unpickled here at all: the kernel only sees bytes once the connection exists.

Once both sides are proven, the client creates two pipes (client->server, server->client) and
hands the server its two ends. Pipes are the data path: measured here, a wake-up through a
pipe is several microseconds cheaper than one through a Unix socket. The socket stays open
beside them to carry shared-memory segments' descriptors and to notice a peer that dies.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import stat

from forge_core.errors import AuthenticationError, TransportError
from forge_core.transport import Authenticator

PIPES = b"P"  # the client's message that carries the server's two pipe ends
# A larger pipe than the default 64 KiB absorbs bursts of small frames without waiting for
# the reader. Not the 1 MiB maximum: pipe capacity counts against a per-user budget
# (/proc/sys/fs/pipe-user-pages-soft, 64 MiB), past which new pipes get a single page.
PIPE_BYTES = 256 * 1024


def new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


def to_sockaddr(address: str) -> str:
    """``@name`` (printable, advertised) -> ``\\0name`` (Linux abstract socket address)."""
    if not address.startswith("@"):
        raise TransportError(f"not a shm address: {address!r}")
    return "\0" + address[1:]


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    # One byte more than expected: a longer message is truncated by SOCK_SEQPACKET, and the
    # extra byte shows that it was not the message we wait for.
    data = await loop.sock_recv(sock, size + 1)
    if len(data) != size:
        if not data:
            raise AuthenticationError("peer closed the connection during the handshake")
        raise AuthenticationError("peer did not speak the Forge handshake")
    return data


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _check_pipe_end(fd: int, access: int) -> None:
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        raise AuthenticationError("peer sent a descriptor that is not a pipe")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != access:
        raise AuthenticationError("peer sent a pipe end of the wrong direction")


def prepare_pipe_end(fd: int) -> None:
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)  # a child process must never keep a pipe end alive


async def server_side(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      auth: Authenticator) -> tuple[int, int]:
    """Prove the client; return (read_fd, write_fd) of the data pipes it then hands over."""
    hello, nonce = auth.server_hello()
    await loop.sock_sendall(sock, hello)
    answer = await _recv_exact(loop, sock, Authenticator.CLIENT_ANSWER_BYTES)
    reply = auth.check_client_answer(answer, nonce)  # raises AuthenticationError
    await loop.sock_sendall(sock, reply)
    # The peer is proven: from here on it may pass descriptors.
    while True:
        await _readable(loop, sock)
        try:
            data, fds, _, _ = socket.recv_fds(sock, len(PIPES) + 1, 2, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            continue
        break
    try:
        if data != PIPES or len(fds) != 2:
            raise AuthenticationError("peer did not send the data pipes")
        read_fd, write_fd = fds
        _check_pipe_end(read_fd, os.O_RDONLY)
        _check_pipe_end(write_fd, os.O_WRONLY)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    prepare_pipe_end(read_fd)
    prepare_pipe_end(write_fd)
    return read_fd, write_fd


async def client_side(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      auth: Authenticator) -> tuple[int, int]:
    """Prove the server, then create the pipes; return (read_fd, write_fd) for this end."""
    hello = await _recv_exact(loop, sock, Authenticator.SERVER_HELLO_BYTES)
    answer, nonce = auth.client_answer(hello)
    await loop.sock_sendall(sock, answer)
    auth.check_server_answer(await _recv_exact(loop, sock, Authenticator.SERVER_ANSWER_BYTES),
                             nonce)
    to_server_r, to_server_w = os.pipe()
    to_client_r, to_client_w = os.pipe()
    try:
        for fd in (to_server_w, to_client_w):
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:  # above /proc/sys/fs/pipe-max-size: the default will do
                pass
        socket.send_fds(sock, [PIPES], [to_server_r, to_client_w])
    except BaseException:
        for fd in (to_server_w, to_client_r):
            os.close(fd)
        raise
    finally:
        # Only the server may hold its ends: when it dies, this end reads end-of-file.
        os.close(to_server_r)
        os.close(to_client_w)
    prepare_pipe_end(to_client_r)
    prepare_pipe_end(to_server_w)
    return to_client_r, to_server_w
