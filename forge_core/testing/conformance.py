"""The contract every transport keeps, as checks a plugin runs against itself.

A transport (``forge_core.transport.Transport``) passes when every check in ``CHECKS`` passes:

- ``ordering``: thousands of messages each way arrive complete and in the order sent.
- ``buffers``: zero-length, tiny, page-sized, odd-sized and 64 MiB buffers, empty metadata,
  and a message with hundreds of buffers arrive byte for byte.
- ``concurrent_senders``: many connections sending at once into one listener: every
  connection's messages arrive, in its own order.
- ``early_messages``: messages that arrive before the receiver is installed are kept and
  delivered when it is.
- ``receiver_errors``: a receiver that raises does not stop later messages.
- ``held_buffers``: a received buffer stays intact while it is held, however much follows on
  the same connection, and after the connection closes.
- ``closing``: ``close`` delivers what was sent before it, reports ``on_closed(None)`` here
  and an error at the peer, makes ``send`` raise ``ConnectionError``, and is idempotent;
  closing the transport stops new connections and leaves existing ones working.
- ``authentication``: a client without the secret is refused and never reaches the
  listener's ``on_connection``; the listener goes on serving.
- ``peer_dies``: a peer process killed (SIGKILL) while it streams large messages is reported
  through ``on_closed`` with an error within seconds; nothing half-received is delivered.
- ``peer_stalls``: sending to a stopped peer (SIGSTOP) never blocks; once it resumes it gets
  everything, in order.
- ``cancellation``: connecting to a stalled listener can be cancelled (``wait_for`` or
  ``Task.cancel``) promptly, and leaves no file descriptor behind.

The process checks start ``python -m forge_core.testing._peer``, which rebuilds the transport
from the factory by pickle: pass a class or a module-level function. Every check has a time
limit and stops whatever it started.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable

from ..transport import Authenticator, Connection, Transport

SECRET = b"forge conformance secret"
TransportFactory = Callable[[], Transport]


def digest(data: Any) -> bytes:
    return hashlib.blake2b(memoryview(data), digest_size=16).digest()


def pattern(nbytes: int, seed: int) -> bytes:
    """Bytes that differ per seed and per position (cheap to make, even for 64 MiB)."""
    block = hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=64).digest()
    whole, rest = divmod(nbytes, 64)
    return block * whole + block[:rest]


class Inbox:
    """What one connection receives, and how it ended."""

    def __init__(self, connection: Connection, echo: bool = False):
        self.connection = connection
        self.echo = echo
        self.messages: asyncio.Queue = asyncio.Queue()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.after_close = 0
        connection.set_receiver(self._on_message, self._on_closed)

    def _on_message(self, meta: bytes, buffers: list) -> None:
        if self.closed.done():
            self.after_close += 1
        if self.echo:
            self.connection.send(meta, [memoryview(b) for b in buffers])
        self.messages.put_nowait((bytes(meta), list(buffers)))

    def _on_closed(self, error: BaseException | None) -> None:
        if not self.closed.done():
            self.closed.set_result(error)

    async def get(self, timeout: float = 10.0) -> tuple[bytes, list]:
        try:
            return await asyncio.wait_for(self.messages.get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no message within {timeout} s") from None

    async def wait_closed(self, timeout: float = 5.0) -> BaseException | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"on_closed was not called within {timeout} s") from None


class Peer:
    """Another process using the transport (``forge_core.testing._peer``)."""

    def __init__(self, factory: TransportFactory, mode: str, address: str = "-"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forge_core.testing._peer", mode, address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdin is not None
        self.proc.stdin.write(pickle.dumps((factory, SECRET)))
        self.proc.stdin.close()

    async def line(self, timeout: float = 30.0) -> str:
        loop = asyncio.get_running_loop()
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline),
                                         timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"peer process said nothing within {timeout} s") from None
        if not raw:
            raise AssertionError(f"peer process exited (code {self.proc.poll()})")
        return raw.decode().strip()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.signal(signal.SIGCONT)
        self.proc.wait(10)


class Harness:
    """A listening transport, a client transport, and cleanup of all they made."""

    def __init__(self, factory: TransportFactory):
        self.factory = factory
        self.auth = Authenticator(SECRET)
        self.server = factory()
        self.client = factory()
        self.accepted: asyncio.Queue = asyncio.Queue()
        self.address = ""
        self._connections: list[Connection] = []
        self._peers: list[Peer] = []

    async def start(self) -> str:
        self.address = await self.server.listen(self._on_connection, self.auth)
        return self.address

    def _on_connection(self, connection: Connection) -> None:
        self._connections.append(connection)
        self.accepted.put_nowait(connection)

    async def accept(self, timeout: float = 10.0) -> Connection:
        try:
            return await asyncio.wait_for(self.accepted.get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"the listener accepted nothing within {timeout} s") from None

    async def connect(self, address: str | None = None) -> Connection:
        connection = await asyncio.wait_for(
            self.client.connect(address or self.address, self.auth), 30)
        self._connections.append(connection)
        return connection

    async def pair(self) -> tuple[Connection, Connection]:
        if not self.address:
            await self.start()
        client = await self.connect()
        return client, await self.accept()

    def peer(self, mode: str, address: str = "-") -> Peer:
        peer = Peer(self.factory, mode, address)
        self._peers.append(peer)
        return peer

    async def aclose(self) -> None:
        for peer in self._peers:
            peer.kill()
        for connection in self._connections:
            try:
                connection.close()
            except Exception:
                pass
        for transport in (self.server, self.client):
            await transport.close()
        await asyncio.sleep(0.05)  # let closing callbacks run before the loop goes


def _check_stream_message(meta: bytes, buffers: list, expected_seq: int) -> None:
    """Messages of ``_peer`` ``stream``: meta = seq (8 bytes) + digest of the one buffer."""
    seq = int.from_bytes(meta[:8], "little")
    assert seq == expected_seq, f"message {seq} arrived where {expected_seq} was due"
    assert len(buffers) == 1 and digest(buffers[0]) == meta[8:24], f"message {seq} is corrupt"


# ---------------------------------------------------------------------------------------------
# The checks


async def check_ordering(h: Harness) -> None:
    client, server = await h.pair()
    Inbox(server, echo=True)
    replies = Inbox(client)
    count = 2000
    for i in range(count):
        buffers = [memoryview(pattern(9000 + i, i))] if i % 50 == 0 else []
        client.send(i.to_bytes(4, "little") + b"x" * (i % 300), buffers)
        if i % 100 == 99:
            await asyncio.sleep(0)  # let the echoes flow back meanwhile
    for i in range(count):
        meta, buffers = await replies.get()
        assert int.from_bytes(meta[:4], "little") == i, "messages were reordered"
        assert meta[4:] == b"x" * (i % 300)
        if i % 50 == 0:
            assert len(buffers) == 1 and bytes(buffers[0]) == pattern(9000 + i, i)
        else:
            assert buffers == []


BUFFER_SIZES = [0, 1, 100, 4095, 4096, 8191, 8192, 65535, 65536, 65537, 1 << 20,
                (1 << 20) + 3, 64 << 20]


async def check_buffers(h: Harness) -> None:
    client, server = await h.pair()
    inbox = Inbox(server)
    for i, size in enumerate(BUFFER_SIZES):
        client.send(b"", [memoryview(pattern(size, i))])
    for i, size in enumerate(BUFFER_SIZES):
        meta, buffers = await inbox.get(30)
        assert meta == b"" and len(buffers) == 1
        received = memoryview(buffers[0])
        assert received.nbytes == size, f"a {size}-byte buffer arrived as {received.nbytes}"
        assert digest(received) == digest(pattern(size, i)), f"a {size}-byte buffer is corrupt"
    mixed = [pattern(size, 100 + i) for i, size in enumerate(BUFFER_SIZES[:-1])]
    mixed += [pattern(i % 7, i) for i in range(300)]
    client.send(b"mixed", [memoryview(b) for b in mixed])
    meta, buffers = await inbox.get(30)
    assert meta == b"mixed" and len(buffers) == len(mixed)
    for sent, received in zip(mixed, buffers):
        assert bytes(memoryview(received)) == sent
    client.send(b"", [])
    assert await inbox.get() == (b"", [])


async def check_concurrent_senders(h: Harness) -> None:
    await h.start()
    senders, count = 8, 300
    clients = [await h.connect() for _ in range(senders)]
    inboxes = [Inbox(await h.accept()) for _ in range(senders)]

    async def send_all(index: int, connection: Connection) -> None:
        for seq in range(count):
            buffers = [memoryview(pattern(20000, seq))] if seq % 30 == 0 else []
            connection.send(bytes([index]) + seq.to_bytes(4, "little"), buffers)
            if seq % 10 == index % 10:
                await asyncio.sleep(0)

    await asyncio.gather(*(send_all(i, c) for i, c in enumerate(clients)))
    seen = set()
    for inbox in inboxes:
        sender = None
        for seq in range(count):
            meta, buffers = await inbox.get()
            sender = meta[0] if sender is None else sender
            assert meta[0] == sender, "one connection delivered another connection's messages"
            assert int.from_bytes(meta[1:5], "little") == seq, "a sender's messages reordered"
            if seq % 30 == 0:
                assert bytes(buffers[0]) == pattern(20000, seq)
        seen.add(sender)
    assert seen == set(range(senders))


async def check_early_messages(h: Harness) -> None:
    client, server = await h.pair()
    for i in range(5):
        client.send(bytes([i]), [memoryview(pattern(100000, i))])
    await asyncio.sleep(0.3)  # they arrive before anybody listens
    inbox = Inbox(server)
    for i in range(5):
        meta, buffers = await inbox.get()
        assert meta == bytes([i]) and bytes(buffers[0]) == pattern(100000, i)


async def check_receiver_errors(h: Harness) -> None:
    client, server = await h.pair()
    received: asyncio.Queue = asyncio.Queue()

    def on_message(meta: bytes, buffers: list) -> None:
        if meta == b"raise":
            raise RuntimeError("a receiver that fails (expected by the conformance suite)")
        received.put_nowait(meta)

    server.set_receiver(on_message, lambda error: None)
    client.send(b"raise")
    client.send(b"after")
    assert await asyncio.wait_for(received.get(), 10) == b"after"


async def check_held_buffers(h: Harness) -> None:
    client, server = await h.pair()
    inbox = Inbox(server)
    size = 16 << 20
    client.send(b"held", [memoryview(pattern(size, 1))])
    _, (held,) = await inbox.get()
    for seed in range(2, 6):  # reuse of transport memory must not touch what is held
        client.send(b"more", [memoryview(pattern(size, seed))])
        _, buffers = await inbox.get()
        assert digest(buffers[0]) == digest(pattern(size, seed))
        del buffers
    assert digest(held) == digest(pattern(size, 1)), "a held buffer was overwritten"
    client.close()
    server.close()
    await inbox.wait_closed()
    await asyncio.sleep(0.1)
    assert digest(held) == digest(pattern(size, 1)), "a held buffer changed after closing"


async def check_closing(h: Harness) -> None:
    client, server = await h.pair()
    here, there = Inbox(client), Inbox(server)
    for i in range(10):
        client.send(bytes([i]), [memoryview(pattern(70000, i))])
    client.close()
    assert await here.wait_closed() is None, "closing our end must report on_closed(None)"
    for i in range(10):
        meta, buffers = await there.get()
        assert meta == bytes([i]), "messages sent before close() were lost or reordered"
        assert bytes(buffers[0]) == pattern(70000, i)
    assert await there.wait_closed() is not None, "the peer's close must be reported as an error"
    assert there.after_close == 0
    for connection in (client, server):
        try:
            connection.send(b"too late")
        except ConnectionError:
            pass
        else:
            raise AssertionError("send() on a closed connection must raise ConnectionError")
    client.close()  # idempotent
    server.close()

    still_client, still_server = await h.pair()
    still = Inbox(still_server)
    await h.server.close()
    try:
        extra = await asyncio.wait_for(h.client.connect(h.address, h.auth), 10)
    except Exception:
        pass
    else:
        extra.close()
        raise AssertionError("a closed transport still accepted a connection")
    still_client.send(b"still here")
    assert (await still.get())[0] == b"still here", "closing a transport broke its connections"


async def check_authentication(h: Harness) -> None:
    await h.start()
    impostor = h.factory()
    try:
        connection = await asyncio.wait_for(
            impostor.connect(h.address, Authenticator(b"not the secret")), 30)
    except asyncio.TimeoutError:
        raise AssertionError("a refused handshake must fail, not hang") from None
    except Exception:
        pass
    else:
        connection.close()
        raise AssertionError("a client without the secret was accepted")
    finally:
        await impostor.close()
    await asyncio.sleep(0.2)
    assert h.accepted.empty(), "on_connection ran for a peer that failed the handshake"
    client, server = await h.pair()  # and the listener goes on serving
    inbox = Inbox(server)
    client.send(b"ok")
    assert (await inbox.get())[0] == b"ok"


async def check_peer_dies(h: Harness) -> None:
    await h.start()
    peer = h.peer("stream", h.address)
    inbox = Inbox(await h.accept(30))
    assert await peer.line() == "connected"
    expected = 0
    for _ in range(3):
        _check_stream_message(*await inbox.get(30), expected)
        expected += 1
    peer.kill()  # most likely in the middle of a frame: it streams large ones back to back
    error = await inbox.wait_closed(10)
    assert error is not None, "a peer's death must be reported as an error, not a clean close"
    while not inbox.messages.empty():
        _check_stream_message(*inbox.messages.get_nowait(), expected)
        expected += 1
    assert inbox.after_close == 0, "messages were delivered after on_closed"


async def check_peer_stalls(h: Harness) -> None:
    peer = h.peer("sink")
    address = await peer.line()
    client = await h.connect(address)
    Inbox(client)
    peer.signal(signal.SIGSTOP)
    count, size, slowest = 32, 2 << 20, 0.0
    for seq in range(count):
        data = pattern(size, seq)
        start = time.perf_counter()
        client.send(seq.to_bytes(8, "little") + digest(data), [memoryview(data)])
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 1.0, f"send() blocked for {slowest:.2f} s on a stalled peer"
    peer.signal(signal.SIGCONT)
    client.send(b"done")
    assert await peer.line(60) == f"ok {count}", "a stalled peer lost or reordered messages"


def _open_fds() -> int:
    """Sockets, pipes and memory files this process has open (what a connection holds)."""
    count = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: nothing to count
        return 0
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        count += target.startswith(("socket:", "pipe:", "anon_inode:", "/memfd:"))
    return count


async def check_cancellation(h: Harness) -> None:
    peer = h.peer("sink")
    address = await peer.line()
    warm_client, warm_server = await h.pair()  # whatever a loop opens once, it opens now
    warm_client.close()
    warm_server.close()
    peer.signal(signal.SIGSTOP)  # accepts in the kernel's backlog, never answers the handshake
    await asyncio.sleep(0.1)
    before = _open_fds()
    start = time.monotonic()
    try:
        connection = await asyncio.wait_for(h.client.connect(address, h.auth), 0.5)
    except Exception:  # TimeoutError, or the transport gave up by itself: either is fine
        pass
    else:
        connection.close()
        raise AssertionError("connected to a listener that never answered")
    assert time.monotonic() - start < 3, "wait_for could not cancel a stalled connect"

    task = asyncio.get_running_loop().create_task(h.client.connect(address, h.auth))
    await asyncio.sleep(0.2)
    task.cancel()
    start = time.monotonic()
    try:
        await asyncio.wait_for(task, 3)
    except asyncio.CancelledError:
        pass
    except asyncio.TimeoutError:
        raise AssertionError("a cancelled connect did not end within 3 s") from None
    except Exception:  # it may have failed on its own first; what matters is that it ended
        pass
    else:
        raise AssertionError("a cancelled connect returned a connection")
    assert time.monotonic() - start < 3
    peer.kill()
    deadline = time.monotonic() + 10  # at the latest once the peer is gone
    while _open_fds() > before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _open_fds() <= before, "a cancelled connect left file descriptors open"


CHECKS: dict[str, Callable[[Harness], Awaitable[None]]] = {
    "ordering": check_ordering,
    "buffers": check_buffers,
    "concurrent_senders": check_concurrent_senders,
    "early_messages": check_early_messages,
    "receiver_errors": check_receiver_errors,
    "held_buffers": check_held_buffers,
    "closing": check_closing,
    "authentication": check_authentication,
    "peer_dies": check_peer_dies,
    "peer_stalls": check_peer_stalls,
    "cancellation": check_cancellation,
}


def _run(coro: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of forge_core
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]


def run_check(factory: TransportFactory, name: str, timeout: float = 120.0) -> None:
    """Run one check on a fresh event loop; raises AssertionError if the transport fails it."""
    check = CHECKS[name]

    async def main() -> None:
        harness = Harness(factory)
        try:
            await asyncio.wait_for(check(harness), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"conformance check {name!r} took over {timeout} s") from None
        finally:
            await harness.aclose()

    _run(main())


def check_transport(factory: TransportFactory, skip: tuple[str, ...] = ()) -> None:
    """Run every check (but ``skip``); raises on the first failure."""
    for name in CHECKS:
        if name not in skip:
            run_check(factory, name)


class TransportConformance:
    """A pytest mixin: subclass it in a ``Test...`` class and set ``transport_factory``.

    ``transport_factory`` must be a class or a ``staticmethod`` of a module-level function,
    so that the process checks can rebuild it in another process.
    """

    transport_factory: TransportFactory

    def _run(self, name: str) -> None:
        run_check(self.transport_factory, name)

    def test_ordering(self) -> None:
        self._run("ordering")

    def test_buffers(self) -> None:
        self._run("buffers")

    def test_concurrent_senders(self) -> None:
        self._run("concurrent_senders")

    def test_early_messages(self) -> None:
        self._run("early_messages")

    def test_receiver_errors(self) -> None:
        self._run("receiver_errors")

    def test_held_buffers(self) -> None:
        self._run("held_buffers")

    def test_closing(self) -> None:
        self._run("closing")

    def test_authentication(self) -> None:
        self._run("authentication")

    def test_peer_dies(self) -> None:
        self._run("peer_dies")

    def test_peer_stalls(self) -> None:
        self._run("peer_stalls")

    def test_cancellation(self) -> None:
        self._run("cancellation")
