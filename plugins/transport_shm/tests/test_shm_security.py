"""The shm transport trusts nobody before the handshake (not their bytes, not their file
descriptors), and survives garbage after it."""

from __future__ import annotations

import os
import pickle
import select
import socket
import struct

import pytest

from forge_core.actor import Actor, endpoint, spawn_procs
from forge_core.transport import Authenticator

pytestmark = pytest.mark.timeout(60)

HEAD = struct.Struct("<BxHI")  # kind, count, meta_len (see forge_transport_shm._connection)
DESC = struct.Struct("<QQQ")
MSG, RELEASE = 1, 2


class Echo(Actor):
    @endpoint
    def echo(self, value):
        return value


class _WriteFile:
    """Unpickling this writes a file: proof that a peer unpickled our bytes."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def mesh():
    procs = spawn_procs(per_host={"procs": 1})
    from forge_core import _mesh

    _mesh._live_meshes.discard(procs)  # one child for the whole module; stopped below
    mesh = procs.spawn("e", Echo)
    assert _serving(mesh)
    yield mesh
    procs.stop().get(timeout=10)


def _serving(mesh) -> bool:
    return mesh.echo.call_one(7).get(timeout=10) == 7


def _raw(mesh) -> socket.socket:
    address = mesh._targets()[0].addresses["shm"]
    assert address.startswith("@")  # abstract namespace: nothing on disk
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5)
    sock.connect("\0" + address[1:])
    return sock


def _closed_on_us(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def _eof(fd: int, timeout: float = 5.0) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable) and os.read(fd, 65536) == b""


def test_unauthenticated_pickle_is_never_unpickled(mesh, tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(_WriteFile(str(target)))
    with _raw(mesh) as sock:
        sock.recv(Authenticator.SERVER_HELLO_BYTES)
        for _ in range(4):
            try:
                sock.send(payload)
            except (BrokenPipeError, ConnectionResetError):
                break
        assert _closed_on_us(sock)
    assert not target.exists()
    assert _serving(mesh)


def test_wrong_secret_is_refused(mesh):
    with _raw(mesh) as sock:
        answer, _ = Authenticator(b"not the secret").client_answer(
            sock.recv(Authenticator.SERVER_HELLO_BYTES))
        sock.send(answer)
        assert _closed_on_us(sock)
    assert _serving(mesh)


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 10, os.urandom(4096),
                                     b"GET / HTTP/1.1\r\n\r\n"])
def test_garbage_before_the_handshake_closes_only_that_connection(mesh, garbage):
    with _raw(mesh) as sock:
        sock.recv(Authenticator.SERVER_HELLO_BYTES)
        sock.send(garbage or b"\x01")
        assert _closed_on_us(sock)
    assert _serving(mesh)


def test_descriptors_sent_before_the_handshake_are_not_kept(mesh):
    read_end, write_end = os.pipe()
    try:
        with _raw(mesh) as sock:
            sock.recv(Authenticator.SERVER_HELLO_BYTES)
            socket.send_fds(sock, [b"P".ljust(Authenticator.CLIENT_ANSWER_BYTES, b"\0")],
                            [write_end])
            assert _closed_on_us(sock)
        os.close(write_end)
        write_end = -1
        assert _eof(read_end), "the listener kept a descriptor from an unproven peer"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert _serving(mesh)


def _authenticated(mesh):
    """Do the client's part of the handshake by hand: -> (socket, read_fd, write_fd)."""
    from forge_core._runtime import Runtime

    auth = Runtime.get().auth
    sock = _raw(mesh)
    answer, nonce = auth.client_answer(sock.recv(Authenticator.SERVER_HELLO_BYTES))
    sock.send(answer)
    auth.check_server_answer(sock.recv(Authenticator.SERVER_ANSWER_BYTES + 1), nonce)
    to_server_r, to_server_w = os.pipe()
    to_client_r, to_client_w = os.pipe()
    socket.send_fds(sock, [b"P"], [to_server_r, to_client_w])
    os.close(to_server_r)
    os.close(to_client_w)
    return sock, to_client_r, to_server_w


def _frame(meta: bytes, descriptors=()) -> bytes:
    return HEAD.pack(MSG, len(descriptors), len(meta)) + b"".join(
        DESC.pack(*d) for d in descriptors) + meta


@pytest.mark.parametrize("garbage", [
    HEAD.pack(9, 0, 0),  # an unknown kind of frame
    HEAD.pack(MSG, 0xFFFF, 0),  # more buffers than allowed
    HEAD.pack(MSG, 0, 0xFFFFFFFF),  # metadata larger than allowed
    _frame(b"x", [(77, 0, 100)]),  # a buffer in a segment nobody sent
])
def test_authenticated_garbage_closes_only_that_connection(mesh, garbage):
    sock, read_fd, write_fd = _authenticated(mesh)
    try:
        os.write(write_fd, garbage)
        assert _eof(read_fd), "the connection survived a malformed frame"
    finally:
        sock.close()
        os.close(read_fd)
        os.close(write_fd)
    assert _serving(mesh)


def test_a_segment_that_is_not_a_sealed_memfd_is_refused(mesh):
    sock, read_fd, write_fd = _authenticated(mesh)
    plain = os.memfd_create("not-sealed")
    os.ftruncate(plain, 1 << 20)
    try:
        socket.send_fds(sock, [struct.pack("<cQQ", b"S", 1, 1 << 20)], [plain])
        # A shrinkable file under a mapping is a SIGBUS waiting to happen: refused.
        assert _eof(read_fd)
    finally:
        for fd in (plain, read_fd, write_fd):
            os.close(fd)
        sock.close()
    assert _serving(mesh)


def test_an_authenticated_bad_pickle_gets_an_error_reply_not_a_crash(mesh):
    from forge_core import _messages as m

    sock, read_fd, write_fd = _authenticated(mesh)
    try:
        os.write(write_fd, _frame(m.pack(m.REQUEST, 5, mesh._actor_id, b"not a pickle")))
        select.select([read_fd], [], [], 5)
        reply = os.read(read_fd, 1 << 16)
        kind, count, meta_len = HEAD.unpack_from(reply)
        assert kind == MSG and count == 0
        reply_kind, request_id, _ = m.HEADER.unpack_from(reply, HEAD.size)
        assert reply_kind == m.REPLY_ERR and request_id == 5
    finally:
        sock.close()
        os.close(read_fd)
        os.close(write_fd)
    assert _serving(mesh)
