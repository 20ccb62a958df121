"""Fuzzing the TCP frame decoder and the handshake with random and mutated input: no crash,
no hang, nothing unpickled before authentication, no allocation from a length prefix alone."""

from __future__ import annotations

import asyncio
import struct
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_core.transport import Authenticator
from forge_transport_tcp import MAX_MESSAGE, FrameProtocol

AUTH = Authenticator(b"fuzz secret")


class FakeTransport:
    """Enough of an asyncio transport for the protocol; records what it does."""

    def __init__(self):
        self.written = []
        self.closed = False

    def write(self, data):
        self.written.append(bytes(data))

    def writelines(self, parts):
        self.written.append(b"".join(bytes(p) for p in parts))

    def abort(self):
        self.closed = True

    close = abort

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def _feed(protocol: FrameProtocol, data: bytes, chunk: int) -> None:
    view = memoryview(data)
    while view and not protocol._transport.closed:
        buffer = protocol.get_buffer(-1)
        n = min(len(buffer), len(view), chunk)
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


def _authenticated_server(received: list) -> FrameProtocol:
    """A server-side protocol that has passed the handshake (driven through it for real)."""
    loop = asyncio.new_event_loop()
    try:
        protocol = FrameProtocol(AUTH, server_side=True,
                                 on_ready=lambda conn: conn.set_receiver(
                                     lambda meta, bufs: received.append((meta, bufs)),
                                     lambda exc: None))
        transport = FakeTransport()
        loop.run_until_complete(_connect(protocol, transport))
        hello = transport.written[0]
        answer, nonce = AUTH.client_answer(hello)
        _feed(protocol, answer, 1 << 20)
        AUTH.check_server_answer(transport.written[1], nonce)
        return protocol
    finally:
        loop.close()


async def _connect(protocol, transport):
    protocol.connection_made(transport)
    protocol._handshake_timer.cancel()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.integers(1, 512))
def test_random_bytes_before_the_handshake_never_reach_the_kernel(data, chunk):
    received: list = []
    loop = asyncio.new_event_loop()
    try:
        protocol = FrameProtocol(AUTH, server_side=True,
                                 on_ready=lambda conn: received.append("ready"))
        transport = FakeTransport()
        loop.run_until_complete(_connect(protocol, transport))
        _feed(protocol, data, chunk)
    finally:
        loop.close()
    assert received == []  # nothing authenticated, nothing delivered


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.integers(1, 512))
def test_random_frames_after_the_handshake_never_crash(data, chunk):
    received: list = []
    protocol = _authenticated_server(received)
    _feed(protocol, data, chunk)  # must not raise; bad frames close the connection


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.integers(0, 2000),
       st.integers(1, 64))
def test_mutated_valid_frames_never_crash(metas, flip, chunk):
    frames = b"".join(struct.pack("<II", len(m), 0) + m for m in metas)
    if frames:
        position = flip % len(frames)
        frames = frames[:position] + bytes([frames[position] ^ 0xFF]) + frames[position + 1:]
    received: list = []
    protocol = _authenticated_server(received)
    _feed(protocol, frames, chunk)
    for meta, buffers in received:
        assert isinstance(meta, bytes) and buffers == []


def test_valid_frames_arrive_whole_in_any_chunking():
    metas = [b"a" * n for n in (0, 1, 7, 300, 70000)]
    frames = b"".join(struct.pack("<II", len(m), 0) + m for m in metas)
    for chunk in (1, 3, 64, 1 << 20):
        received: list = []
        protocol = _authenticated_server(received)
        _feed(protocol, frames, chunk)
        assert [meta for meta, _ in received] == metas


def test_oversized_length_prefixes_are_refused_before_allocation():
    received: list = []
    protocol = _authenticated_server(received)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        huge = struct.pack("<II", 16, 1) + struct.pack("<Q", MAX_MESSAGE + 1)
        _feed(protocol, huge, 1 << 20)
        grown = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert protocol._transport.closed
    assert grown < 10 << 20  # nothing near the claimed size was allocated
