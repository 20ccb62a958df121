"""The TCP transport trusts nobody before the handshake, and survives garbage after it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import pickle
import socket
import struct

import pytest

from forge_core.actor import Actor, endpoint, spawn_procs
from forge_core.transport import Authenticator

pytestmark = pytest.mark.timeout(60)


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


def _address(mesh) -> tuple[str, int]:
    host, _, port = mesh._targets()[0].addresses["tcp"].rpartition(":")
    return host, int(port)


def _serving(mesh) -> bool:
    return mesh.echo.call_one(7).get(timeout=10) == 7


@pytest.fixture
def mesh():
    procs = spawn_procs(per_host={"procs": 1})
    mesh = procs.spawn("e", Echo)
    assert _serving(mesh)
    yield mesh
    procs.stop().get(timeout=10)


def test_listens_on_loopback_by_default(mesh):
    assert _address(mesh)[0] == "127.0.0.1"


def test_unauthenticated_pickle_is_never_unpickled(mesh, tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(_WriteFile(str(target)))
    with socket.create_connection(_address(mesh), timeout=5) as sock:
        sock.recv(Authenticator.SERVER_HELLO_BYTES)
        frame = struct.pack("<II", len(payload), 0) + payload
        sock.sendall(frame * 4)
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed on us
    assert not target.exists()
    assert _serving(mesh)


def test_wrong_secret_is_refused(mesh, tmp_path):
    with socket.create_connection(_address(mesh), timeout=5) as sock:
        hello = sock.recv(Authenticator.SERVER_HELLO_BYTES)
        wrong = Authenticator(b"not the secret")
        answer, _ = wrong.client_answer(hello)
        sock.sendall(answer)
        sock.settimeout(5)
        assert sock.recv(100) == b""
    assert _serving(mesh)


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 10, os.urandom(4096), b"GET / HTTP/1.1\r\n\r\n"])
def test_garbage_before_the_handshake_closes_only_that_connection(mesh, garbage):
    with socket.create_connection(_address(mesh), timeout=5) as sock:
        sock.recv(Authenticator.SERVER_HELLO_BYTES)
        sock.sendall(garbage.ljust(Authenticator.CLIENT_ANSWER_BYTES, b"\x01"))
        sock.settimeout(5)
        assert sock.recv(100) == b""
    assert _serving(mesh)


def _authenticated_socket(mesh) -> socket.socket:
    from forge_core._runtime import Runtime

    auth = Runtime.get().auth
    sock = socket.create_connection(_address(mesh), timeout=5)
    hello = sock.recv(Authenticator.SERVER_HELLO_BYTES)
    answer, nonce = auth.client_answer(hello)
    sock.sendall(answer)
    auth.check_server_answer(sock.recv(Authenticator.SERVER_ANSWER_BYTES), nonce)
    return sock


def test_oversized_length_prefix_is_refused_before_allocation(mesh):
    with _authenticated_socket(mesh) as sock:
        sock.sendall(struct.pack("<II", 0xFFFFFFFF, 0))
        sock.settimeout(5)
        assert sock.recv(100) == b""
    with _authenticated_socket(mesh) as sock:
        sock.sendall(struct.pack("<II", 10, 1) + struct.pack("<Q", 1 << 60))
        sock.settimeout(5)
        assert sock.recv(100) == b""
    assert _serving(mesh)


def test_authenticated_garbage_gets_an_error_reply_not_a_crash(mesh):
    from forge_core import _messages as m

    with _authenticated_socket(mesh) as sock:
        meta = m.pack(m.REQUEST, 5, mesh._actor_id, b"not a pickle")
        sock.sendall(struct.pack("<II", len(meta), 0) + meta)
        sock.settimeout(5)
        header = sock.recv(8)
        meta_len, _ = struct.unpack("<II", header)
        reply = b""
        while len(reply) < meta_len:
            reply += sock.recv(meta_len - len(reply))
        kind, request_id, _ = m.HEADER.unpack_from(reply)
        assert kind == m.REPLY_ERR and request_id == 5
    assert _serving(mesh)


def test_handshake_macs_are_bound_to_fresh_nonces():
    auth = Authenticator(b"secret")
    hello, nonce = auth.server_hello()
    answer, client_nonce = auth.client_answer(hello)
    server_answer = auth.check_client_answer(answer, nonce)
    auth.check_server_answer(server_answer, client_nonce)
    _, other_nonce = auth.server_hello()
    with pytest.raises(Exception):
        auth.check_client_answer(answer, other_nonce)  # a replayed answer fails
    assert hmac.compare_digest(server_answer, hmac.new(b"secret", b"server" + client_nonce,
                                                       hashlib.sha256).digest())
