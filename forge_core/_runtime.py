"""The per-process runtime: where actors live, how messages reach them, who is alive.

Every Forge process has one ``Runtime``. Its *home loop* hosts this process's actors and the
transport listeners: in a spawned proc it is the main thread's uvloop; in the user's process it
is a uvloop on a background thread, so that ``spawn`` and ``Future.get()`` work from plain
synchronous code.

Calls do not hop to the home loop: a call made from any running event loop goes out on a
``Channel`` owned by that loop (one per peer process), and its reply resolves an asyncio future
of that loop. That keeps a round trip to one socket write and one read. Calls made from
synchronous code run on the home loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import secrets
import socket
import sys
import threading
import uuid
from typing import Any, Callable

from . import _messages as m
from . import _tracing, _wire, plugins
from ._future import CallFuture
from ._actors import ActorHost, construct
from ._shape import Point
from .errors import ActorError, SupervisionError, TransportError
from .transport import Authenticator, Connection, ProcInfo

log = logging.getLogger("forge.runtime")

SECRET_ENV = "FORGE_SECRET"  # hex; spawned procs inherit their parent's
TRANSPORT_ENV = "FORGE_TRANSPORT"  # force one transport by name, for every peer
HOST_ID_ENV = "FORGE_HOST_ID"

_get_running_loop = asyncio._get_running_loop  # None outside a loop, no exception: hot path
_unpack_header, _pack_header, _HEADER_SIZE = m.HEADER.unpack_from, m.HEADER.pack, m.HEADER.size
_REQUEST, _SEND = m.REQUEST, m.SEND


def host_identity() -> str:
    """Processes with the same identity share a host (and its memory); set by agents in tests."""
    explicit = os.environ.get(HOST_ID_ENV)
    if explicit:
        return explicit
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()[:8]
    except OSError:
        boot = "0"
    return f"{socket.gethostname()}:{boot}"


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep a plain fallback
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime:
    _instance: "Runtime | None" = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> "Runtime":
        runtime = cls._instance
        if runtime is not None:
            return runtime
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls._start_in_background()
            return cls._instance

    @classmethod
    def _start_in_background(cls) -> "Runtime":
        loop = new_loop()
        runtime = cls(loop)
        thread = threading.Thread(target=loop.run_forever, name="forge-runtime", daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(runtime.start(), loop).result(timeout=30)
        return runtime

    def __init__(self, home_loop: asyncio.AbstractEventLoop,
                 listen_options: dict[str, dict[str, Any]] | None = None):
        self.home_loop = home_loop
        self._listen_options = listen_options or {}
        secret_hex = os.environ.get(SECRET_ENV)
        self.secret = bytes.fromhex(secret_hex) if secret_hex else secrets.token_bytes(32)
        self.auth = Authenticator(self.secret)
        self.info = ProcInfo(uuid.uuid4().hex, host_identity(), os.getpid(), {})
        self.transports: dict[str, Any] = {}
        self.actors: dict[bytes, ActorHost] = {}
        self.failed_actors: dict[bytes, str] = {}
        self.dead: set[str] = set()
        # Called as ``listener(proc_id, reason)`` when a proc is first declared dead, from
        # whichever thread noticed it (services restart replicas from this). Listeners must be
        # quick and thread-safe: hop to their own loop with ``call_soon_threadsafe``.
        self.death_listeners: list[Callable[[str, str], None]] = []
        self._channels: dict[tuple[int, str], "Channel"] = {}
        self._channels_lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []
        _tracing.setup(self._on_stop)  # spans, if the environment asks for them

    # -- start-up ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start listening on every installed transport (runs on the home loop)."""
        installed = plugins.transports()
        if not installed:
            blocked = plugins.blocked_names()
            note = f" ({plugins.DISABLE_ENV} blocks {sorted(blocked)})" if blocked else ""
            raise TransportError(f"no transport plugin is installed{note}: install "
                                 f"forge-transport-tcp (pip install -e plugins/transport_tcp)")
        addresses = {}
        for name, transport in sorted(installed.items(), key=lambda kv: kv[1].cost):
            try:
                options = self._listen_options.get(name, {})
                addresses[name] = await transport.listen(self._accept, self.auth, **options)
                self.transports[name] = transport
            except Exception as exc:  # a transport that cannot run here is skipped, loudly
                log.warning("transport %r could not listen: %r", name, exc)
        self.info = ProcInfo(self.info.proc_id, self.info.host_id, self.info.pid, addresses)

    def _accept(self, conn: Connection) -> None:
        caller = _Caller(conn)
        conn.set_receiver(functools.partial(self.dispatch, caller.reply, caller.track),
                          caller.closed)

    # -- receiving ---------------------------------------------------------------------------
    def dispatch(self, reply: Callable, track: Callable[[asyncio.Task], None] | None,
                 meta: bytes, buffers: list) -> None:
        """Handle one incoming message on the home loop (the hot path of every call).

        ``track`` is told of the task that runs an async call, so that the caller's
        disconnection can cancel it."""
        kind, request_id, actor_len = _unpack_header(meta)
        if kind == _REQUEST or kind == _SEND:
            offset = _HEADER_SIZE + actor_len
            actor_id = meta[_HEADER_SIZE:offset]
            host = self.actors.get(actor_id)
            if kind == _SEND:
                reply = track = None  # type: ignore[assignment]
            if host is not None:
                host.deliver(request_id, meta, offset, buffers, reply, track)
                return
            text = self.failed_actors.get(actor_id) or (
                f"no actor {actor_id.decode(errors='replace')!r} in {self.info} "
                f"(it was stopped, or never spawned here)")
            if reply is not None:
                reply(m.REPLY_ERR, request_id, *m.encode_failure(text))
            else:
                log.error("%s", text)
            return
        kind, request_id, actor_id, offset = m.unpack(meta)
        if kind == m.SPAWN:
            self._spawn_actor(request_id, actor_id, memoryview(meta)[offset:], buffers, reply)
        elif kind == m.REQUEST_TRACED:
            _tracing.serve(self, request_id, meta, buffers, reply, track)
        elif kind == m.PING:
            reply(m.REPLY_OK, request_id, *_wire.dumps(None))
        elif kind == m.STOP:
            reply(m.REPLY_OK, request_id, *_wire.dumps(None))
            self.home_loop.call_soon(self.stop_process)
        else:
            log.warning("ignoring a message of unknown kind %d", kind)

    def _spawn_actor(self, request_id: int, actor_id: bytes, body: memoryview, buffers: list,
                     reply: Callable) -> None:
        try:
            cls, args, kwargs, coords, sizes = _wire.loads(body, buffers)
        except Exception as exc:
            where = (f"unpickling the actor class and its arguments in {self.info} (is its module "
                     f"importable there? classes from __main__ travel by value, others by name)")
            self._spawn_failed(request_id, actor_id, reply, exc, where)
            return
        point = Point(coords, sizes)
        where = f"{cls.__name__}.__init__ (rank {point.rank})"
        try:
            instance = construct(cls, args, kwargs, point)
        except Exception as exc:
            self._spawn_failed(request_id, actor_id, reply, exc, where)
            return
        self.actors[actor_id] = ActorHost(actor_id.decode(), instance, point)
        reply(m.REPLY_OK, request_id, *_wire.dumps(None))

    def _spawn_failed(self, request_id: int, actor_id: bytes, reply: Callable,
                      exc: Exception, where: str) -> None:
        self.failed_actors[actor_id] = f"{where} failed: {type(exc).__name__}: {exc}"
        reply(m.REPLY_ERR, request_id, *m.encode_error(exc, where))

    # -- sending -----------------------------------------------------------------------------
    def channel(self, peer: ProcInfo, loop: asyncio.AbstractEventLoop,
                transport: str | None = None) -> "Channel":
        """The channel from ``loop`` to ``peer`` (created on first use); a mesh that forces a
        transport gets its own."""
        key = (id(loop), peer.proc_id, transport)
        channel = self._channels.get(key)
        if channel is not None and channel.loop is loop and not channel.broken:
            return channel
        with self._channels_lock:
            if peer.proc_id == self.info.proc_id:
                channel = LocalChannel(self, peer, loop)
            else:
                channel = Channel(self, peer, loop, self.pick_transport(peer, transport))
            channel.key = key
            self._channels[key] = channel
            return channel

    def pick_transport(self, peer: ProcInfo, forced: str | None = None) -> str:
        forced = forced or os.environ.get(TRANSPORT_ENV) or None
        if forced:
            transport = plugins.require("transport", forced, self.transports,
                                        "Install its plugin, or unset FORGE_TRANSPORT.")
            if forced not in peer.addresses or not transport.reaches(self.info, peer):
                raise TransportError(
                    f"transport {forced!r} was forced but cannot reach {peer}; that peer offers "
                    f"{sorted(peer.addresses)}")
            return forced
        for name, transport in self.transports.items():  # sorted by cost at start-up
            if name in peer.addresses and transport.reaches(self.info, peer):
                return name
        raise TransportError(f"no installed transport reaches {peer}: it offers "
                             f"{sorted(peer.addresses)}, this process has {sorted(self.transports)}")

    def forget_channel(self, channel: "Channel") -> None:
        """Drop a broken channel (calls to a dead peer fail fast through ``dead``)."""
        with self._channels_lock:
            if self._channels.get(channel.key) is channel:
                del self._channels[channel.key]

    def mark_dead(self, proc_id: str, reason: str) -> None:
        if proc_id in self.dead:
            return
        self.dead.add(proc_id)
        log.debug("%s is dead: %s", proc_id[:8], reason)
        for listener in list(self.death_listeners):
            try:
                listener(proc_id, reason)
            except Exception:
                log.exception("a death listener failed")

    # -- stopping ----------------------------------------------------------------------------
    def stop_process(self) -> None:
        """End this (spawned) process now."""
        for hook in self._on_stop:
            try:
                hook()
            except Exception:
                log.exception("error while stopping")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)


# ---------------------------------------------------------------------------------------------


class _Caller:
    """One inbound connection, as the actors it calls see it: where replies go, and the async
    calls still running for it (cancelled if it disconnects: nobody could receive their results;
    a host agent learns this way that its client is gone)."""

    __slots__ = ("conn", "running")

    def __init__(self, conn: Connection):
        self.conn = conn
        self.running: set[asyncio.Task] = set()

    def reply(self, kind: int, request_id: int, payload: bytes, buffers: list) -> None:
        try:
            self.conn.send(_pack_header(kind, request_id, 0) + payload, buffers)
        except ConnectionError:
            pass  # the caller is gone; nobody waits for this reply

    def track(self, task: asyncio.Task) -> None:
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    def closed(self, exc: BaseException | None) -> None:
        for task in list(self.running):
            task.cancel()


class _Calls:
    """What both kinds of channel offer on top of ``request``."""

    loop: asyncio.AbstractEventLoop

    def call(self, actor_id: bytes, payload: bytes, buffers: list) -> CallFuture:
        """Call an endpoint (``payload`` is the call's body); the future resolves to its result."""
        future = CallFuture()  # call_future(), written out: this is every call's path
        future._future = self.loop.create_future()
        self.request(_REQUEST, actor_id, payload, buffers, future)  # type: ignore[attr-defined]
        return future


class Channel(_Calls):
    """Ordered messages from one event loop of this process to one peer process.

    Requests get an id and a sink (a future of ``loop``, or a slot of one); the peer's reply
    resolves it. Until the connection is up, messages queue here in order. If the connection
    breaks, every waiting request fails with ``SupervisionError`` and the peer is marked dead,
    so later calls fail fast.
    """

    def __init__(self, runtime: Runtime, peer: ProcInfo, loop: asyncio.AbstractEventLoop,
                 transport_name: str):
        self.runtime = runtime
        self.peer = peer
        self.loop = loop
        self.transport_name = transport_name
        self.key: tuple = ()  # where the runtime keeps it
        self.broken: BaseException | None = None
        self._conn: Connection | None = None
        self._queue: list[tuple[bytes, list]] | None = []
        self._waiting: dict[int, Any] = {}  # request id -> sink (_reply / _fail)
        self._next_id = 1
        if peer.proc_id in runtime.dead:
            self.broken = self._dead_error("it died earlier")
        else:
            loop.create_task(self._connect())

    def _dead_error(self, why: str) -> SupervisionError:
        return SupervisionError(f"{self.peer} is unreachable: {why}")

    async def _connect(self) -> None:
        transport = self.runtime.transports[self.transport_name]
        address = self.peer.addresses[self.transport_name]
        try:
            conn = await transport.connect(address, self.runtime.auth)
        except Exception as exc:
            self._break(self._dead_error(f"cannot connect over {self.transport_name} to "
                                         f"{address}: {exc}"))
            return
        if self.broken is not None:
            conn.close()
            return
        conn.set_receiver(self._on_message, self._on_closed)
        queued, self._queue = self._queue, None
        self._conn = conn
        try:
            for meta, buffers in queued or ():
                conn.send(meta, buffers)
        except ConnectionError as exc:
            self._break(self._dead_error(repr(exc)))

    def request(self, kind: int, actor_id: bytes, payload: bytes, buffers: list, sink: Any) -> None:
        """Send a request; ``sink._reply(kind, meta, offset, buffers)`` or ``sink._fail(exc)``
        follows on this channel's loop."""
        if self.broken is not None:
            sink._fail(self.broken)
            return
        request_id = self._next_id
        self._next_id = request_id + 1
        self._waiting[request_id] = sink
        meta = _pack_header(kind, request_id, len(actor_id)) + actor_id + payload
        conn = self._conn
        if conn is None:  # still connecting
            self._queue.append((meta, buffers))  # type: ignore[union-attr]
            return
        try:  # _send, written out: this is every call's path
            conn.send(meta, buffers)
        except ConnectionError as exc:
            self._break(self._dead_error(repr(exc)))

    def post(self, kind: int, actor_id: bytes, payload: bytes, buffers: list) -> None:
        if self.broken is not None:
            raise self.broken
        self._send(m.pack(kind, 0, actor_id, payload), buffers)

    def _send(self, meta: bytes, buffers: list) -> None:
        conn = self._conn
        if conn is None:
            self._queue.append((meta, buffers))  # type: ignore[union-attr]
            return
        try:
            conn.send(meta, buffers)
        except ConnectionError as exc:
            self._break(self._dead_error(repr(exc)))

    def _on_message(self, meta: bytes, buffers: list) -> None:
        kind, request_id, actor_len = _unpack_header(meta)
        sink = self._waiting.pop(request_id, None)
        if sink is not None:
            sink._reply(kind, meta, _HEADER_SIZE + actor_len, buffers)

    def _on_closed(self, exc: BaseException | None) -> None:
        self._break(self._dead_error(f"its connection closed ({exc!r})" if exc else "closed"))

    def _break(self, error: BaseException) -> None:
        if self.broken is None:
            self.broken = error
        self.runtime.forget_channel(self)
        self.runtime.mark_dead(self.peer.proc_id, str(error))
        waiting, self._waiting = self._waiting, {}
        for sink in waiting.values():
            sink._fail(self.broken)
        if self._conn is not None:
            self._conn.close()


class LocalChannel(_Calls):
    """Messages to actors in this very process: no transport, but still a copy of every
    argument (actors share no state), delivered on the home loop."""

    broken = None

    def __init__(self, runtime: Runtime, peer: ProcInfo, loop: asyncio.AbstractEventLoop):
        self.runtime = runtime
        self.peer = peer
        self.loop = loop
        self.transport_name = "local"
        self.key: tuple = ()

    def request(self, kind: int, actor_id: bytes, payload: bytes, buffers: list, sink: Any) -> None:
        self._deliver(m.pack(kind, 0, actor_id, payload), buffers, sink)

    def post(self, kind: int, actor_id: bytes, payload: bytes, buffers: list) -> None:
        self._deliver(m.pack(kind, 0, actor_id, payload), buffers, None)

    def _deliver(self, meta: bytes, buffers: list, sink: Any) -> None:
        copies = [bytearray(b) for b in buffers]
        loop, home = self.loop, self.runtime.home_loop

        def reply(kind: int, request_id: int, payload: bytes, out: list) -> None:
            if sink is None:
                return
            copied = [bytearray(b) for b in out]
            if loop is home:
                sink._reply(kind, payload, 0, copied)
            else:
                loop.call_soon_threadsafe(sink._reply, kind, payload, 0, copied)

        if loop is home:
            home.call_soon(self.runtime.dispatch, reply, None, meta, copies)
        else:
            home.call_soon_threadsafe(self.runtime.dispatch, reply, None, meta, copies)


def on_home_loop(coro_factory: Callable[[], Any]) -> concurrent.futures.Future:
    """Run a coroutine on the home loop from any thread, including the home loop itself."""
    runtime = Runtime.get()
    return asyncio.run_coroutine_threadsafe(coro_factory(), runtime.home_loop)


def spawn_error(cls_name: str, errors: list[BaseException | None]) -> ActorError | None:
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if not failed:
        return None
    rank, first = failed[0]
    return ActorError(f"{cls_name} failed to start on {len(failed)} of {len(errors)} ranks; "
                      f"rank {rank}: {first}", getattr(first, "exception", first))
