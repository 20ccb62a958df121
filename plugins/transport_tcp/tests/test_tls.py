"""TLS on the TCP transport, with a self-signed pair generated in the test."""

from __future__ import annotations

import socket
import subprocess

import pytest

from forge_core.actor import Actor, endpoint, spawn_procs

pytestmark = pytest.mark.timeout(60)


class Echo(Actor):
    @endpoint
    def echo(self, value):
        return value


@pytest.fixture
def tls_pair(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=forge-test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_calls_travel_over_tls(tls_pair, monkeypatch):
    cert, key = tls_pair
    monkeypatch.setenv("FORGE_TLS_CERT", str(cert))
    monkeypatch.setenv("FORGE_TLS_KEY", str(key))
    monkeypatch.setenv("FORGE_TRANSPORT", "tcp")  # not shared memory: the test is about TCP
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("e", Echo)
    payload = b"secret payload " * 1000
    assert list(mesh.echo.call(payload).get(timeout=30)) == [payload, payload]
    host, _, port = mesh._targets()[0].addresses["tcp"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"\x00" * 64)  # not a TLS ClientHello
        sock.settimeout(5)
        data = sock.recv(100)
        assert b"FORGE1" not in data  # the plain handshake never reaches a non-TLS peer
    assert list(mesh.echo.call(1).get(timeout=30)) == [1, 1]
    procs.stop().get(timeout=10)


def test_a_key_without_certificate_is_a_clear_error(monkeypatch):
    from forge_transport_tcp import tls_contexts

    monkeypatch.setenv("FORGE_TLS_CERT", "/nonexistent/cert.pem")
    monkeypatch.delenv("FORGE_TLS_KEY", raising=False)
    with pytest.raises(Exception, match="FORGE_TLS_KEY"):
        tls_contexts()
