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
        self.protocol = None  # set when the protocol hands reading over (set_protocol)

    def set_protocol(self, protocol):
        self.protocol = protocol

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
    """Deliver ``data`` in reads of at most ``chunk`` bytes, as the event loop would, to
    whichever protocol reads the connection now."""
    view = memoryview(data)
    transport = protocol._transport
    while view and not transport.closed:
        reader = transport.protocol or protocol
        if isinstance(reader, asyncio.BufferedProtocol):
            buffer = reader.get_buffer(-1)
            n = min(len(buffer), len(view), chunk)
            buffer[:n] = view[:n]
            reader.buffer_updated(n)
        else:
            n = min(len(view), chunk)
            reader.data_received(bytes(view[:n]))
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


def _frame(meta: bytes, buffers: list[bytes]) -> bytes:
    lengths = struct.pack(f"<{len(buffers)}Q", *map(len, buffers))
    return struct.pack("<II", len(meta), len(buffers)) + lengths + meta + b"".join(buffers)


def test_large_frames_with_buffers_arrive_whole_in_any_chunking():
    # Small frames are collected whole; large ones are read part by part into exact-size
    # buffers (the connection hands reading over and back): both, interleaved, in any chunking.
    messages = [(b"m" * 10, []), (b"a" * 300_000, [b"", b"x"]), (b"b", [b"y" * 400_000, b"z" * 5]),
                (b"c" * 7, [b"w" * 100]), (b"", [b"q" * 300_000])]
    stream = b"".join(_frame(meta, bufs) for meta, bufs in messages)
    for chunk in (1000, 4096, 65536, 1 << 20, len(stream)):
        received: list = []
        protocol = _authenticated_server(received)
        _feed(protocol, stream, chunk)
        assert [(meta, [bytes(b) for b in bufs]) for meta, bufs in received] == messages
        assert all(type(meta) is bytes for meta, _ in received)
        assert protocol._transport.protocol in (None, protocol)  # reading handed back
