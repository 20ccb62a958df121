"""Process meshes, actor meshes, and the endpoint adverbs users call on them.

``spawn_procs`` and ``spawn`` return at once, from sync and async code alike: the processes
and actors come up on the home loop in the background, and the first call waits for them.
Once a mesh is up, a call from a running event loop is one pickle and one write per target.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import itertools
import os
import uuid
import weakref
from typing import Any, AsyncIterator

from . import _messages as m
from . import _tracing, allocation
from . import _wire
from ._actors import current_point
from ._endpoint import EndpointSpec, NotReady, encode_call, endpoints_of
from ._future import Future, GatherFuture, RawFuture, ThreadFuture, call_future
from ._procs import launch
from ._runtime import Runtime, on_home_loop, spawn_error
from ._shape import Point, ValueMesh, check_sizes, nelement, points, select
from .errors import ForgeError, SupervisionError
from .transport import ProcInfo

_get_running_loop = asyncio._get_running_loop

# Owned process meshes that have not been stopped (tests stop what a test leaves behind).
_live_meshes: "weakref.WeakSet[ProcMesh]" = weakref.WeakSet()

_ONE, _CHOOSE, _ALL, _BROADCAST = range(4)


def _resolved(value: Any) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(value)
    return future


async def _wait(future: concurrent.futures.Future) -> Any:
    if future.done():
        return future.result()
    return await asyncio.wrap_future(future)


# ---------------------------------------------------------------------------------------------
# Process meshes


class ProcMesh:
    """One OS process per point of a mesh of named dimensions."""

    def __init__(self, sizes: dict[str, int], procs: concurrent.futures.Future,
                 indices: list[int], children: list | None = None, owner: bool = False,
                 transport: str | None = None):
        self._sizes = sizes
        self._procs = procs  # resolves to the ProcInfo of every process of the root mesh
        self._indices = indices  # which of them belong to this (possibly sliced) mesh
        self._children = children if children is not None else []  # ChildProc, owner only
        self._owner = owner
        self._transport = transport
        self._stopped = False
        self._remote_stop: Any = None  # set for meshes whose processes host agents started
        self.name = "procs"  # what its procs' log lines and metrics are labelled with

    # -- shape --------------------------------------------------------------------------------
    @property
    def extent(self) -> dict[str, int]:
        return dict(self._sizes)

    sizes = extent

    def __len__(self) -> int:
        return len(self._indices)

    def slice(self, **dims: Any) -> "ProcMesh":
        sizes, indices = select(self._sizes, self._indices, dims)
        return ProcMesh(sizes, self._procs, indices, self._children, self._owner, self._transport)

    @property
    def initialized(self) -> Future[None]:
        """Resolves once every process is up (the first call waits for this anyway)."""
        return _future_of(self._procs, lambda _: None)

    # -- actors -------------------------------------------------------------------------------
    def spawn(self, name: str, actor_class: type, *args: Any, **kwargs: Any) -> "ActorMesh":
        """One ``actor_class(*args, **kwargs)`` in every process of this mesh."""
        if not isinstance(actor_class, type):
            raise TypeError(f"spawn(name, ActorClass, *args, **kwargs): {actor_class!r} is not a class")
        try:
            inspect.signature(actor_class).bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{actor_class.__name__}{inspect.signature(actor_class)}: {exc}") from None
        try:
            _wire.dumps((actor_class, args, kwargs))
        except NotReady:
            pass  # a mesh handle among the arguments is still starting: the spawn waits for it
        except Exception as exc:
            raise TypeError(f"the arguments of {actor_class.__name__} cannot be pickled: {exc}") from exc
        actor_id = f"{name}.{uuid.uuid4().hex[:12]}".encode()
        spawned: concurrent.futures.Future = concurrent.futures.Future()
        mesh = ActorMesh(actor_class.__name__, endpoints_of(actor_class), actor_id, self._sizes,
                         spawned, self._transport)
        on_home_loop(lambda: self._spawn_actors(actor_id, actor_class, args, kwargs, spawned))
        return mesh

    async def _spawn_actors(self, actor_id: bytes, actor_class: type, args: tuple, kwargs: dict,
                            spawned: concurrent.futures.Future) -> None:
        try:
            every = await _wait(self._procs)
            targets = [every[i] for i in self._indices]
            runtime = Runtime.get()
            loop = asyncio.get_running_loop()
            replies = []
            for info, point in zip(targets, points(self._sizes) if self._sizes else [Point({}, {})]):
                payload, buffers = await _dumps_when_ready(
                    (actor_class, args, kwargs, dict(point), self._sizes))
                reply = RawFuture(loop=loop)
                runtime.channel(info, loop, self._transport).request(
                    m.SPAWN, actor_id, payload, buffers, reply)
                replies.append(reply)
            errors: list[BaseException | None] = []
            for reply in await asyncio.gather(*replies, return_exceptions=True):
                if isinstance(reply, BaseException):
                    errors.append(reply)
                    continue
                try:
                    m.decode_reply(*reply)
                    errors.append(None)
                except Exception as exc:
                    errors.append(exc)
            spawned.set_result((targets, errors))
        except BaseException as exc:
            spawned.set_exception(exc)

    # -- stopping -----------------------------------------------------------------------------
    def stop(self) -> Future[None]:
        """End every process of this mesh (within 5 s; killed after that)."""
        self._stopped = True
        _live_meshes.discard(self)
        return ThreadFuture(on_home_loop(self._stop))

    async def _stop(self) -> None:
        runtime = Runtime.get()
        if self._owner and self._remote_stop is None and not self._procs.done():
            try:  # a mesh still starting on agents: let it finish, then stop it
                await _wait(self._procs)
            except Exception:
                pass
        if self._remote_stop is not None:
            await self._remote_stop()
            if self._procs.done() and self._procs.exception() is None:
                for info in self._procs.result():
                    runtime.mark_dead(info.proc_id, "stopped")
            return
        if self._owner and self._children:
            children = [self._children[i] for i in self._indices if i < len(self._children)]
            await asyncio.gather(*(child.stop() for child in children))
            for child in children:
                if child.info is not None:
                    runtime.mark_dead(child.info.proc_id, "stopped")
            return
        try:  # not ours: ask each process to exit
            every = await asyncio.wait_for(_wait(self._procs), 5)
        except Exception:
            return
        loop = asyncio.get_running_loop()
        asks = []
        for i in self._indices:
            if every[i].proc_id != runtime.info.proc_id:
                asks.append(RawFuture(loop=loop))
                runtime.channel(every[i], loop, self._transport).request(
                    m.STOP, b"", *_wire.dumps(None), asks[-1])
        await asyncio.wait_for(asyncio.gather(*asks, return_exceptions=True), 5)

    async def __aenter__(self) -> "ProcMesh":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    def __enter__(self) -> "ProcMesh":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop().get(timeout=30)

    def __reduce__(self):
        if not self._procs.done():
            raise NotReady(self._procs)
        return (_rebuild_proc_mesh, (self._sizes, self._procs.result(), self._indices,
                                     self._transport))

    def __repr__(self) -> str:
        return f"<ProcMesh {self._sizes}>"


def _rebuild_proc_mesh(sizes, infos, indices, transport):
    return ProcMesh(sizes, _resolved(infos), indices, transport=transport)


async def _dumps_when_ready(obj: Any) -> tuple[bytes, list]:
    while True:
        try:
            return _wire.dumps(obj)
        except NotReady as pending:
            await _wait(pending.ready)


async def _call_when_ready(spec: EndpointSpec, args: tuple, kwargs: dict) -> tuple[bytes, list]:
    """A call's body, once every mesh among its arguments is up (their handles pickle then)."""
    pickled, buffers = await _dumps_when_ready((args, kwargs))
    return m.call_body(spec.wire_name, args, kwargs, pickled), buffers


def _future_of(source: concurrent.futures.Future, convert) -> Future:
    out: concurrent.futures.Future = concurrent.futures.Future()

    def done(f: concurrent.futures.Future) -> None:
        if f.exception() is not None:
            out.set_exception(f.exception())
            return
        try:
            out.set_result(convert(f.result()))
        except BaseException as exc:  # e.g. a constructor failed: `initialized` raises it
            out.set_exception(exc)

    source.add_done_callback(done)
    return ThreadFuture(out)


def spawn_procs(per_host: dict[str, int] | None = None, *, env: dict[str, str] | None = None,
                transport: str | None = None, gpus_per_proc: int | None = None,
                cpus_per_proc: int = 0, numa: bool = False, strict: bool | None = None,
                name: str | None = None, allocator: str | None = None,
                logs: str = "stream", log_file: str | None = None) -> ProcMesh:
    """Start one OS process per point of ``per_host`` on this host, e.g. ``{"gpus": 8}``.

    Returns at once; the processes start in parallel in the background. A ``"gpus"`` dimension
    gives each process its own GPU (``gpus_per_proc`` overrides the count), chosen by the
    allocator plugin before the process starts; on a host without GPUs they start as CPU
    processes with a warning, or fail if ``strict``. ``cpus_per_proc`` or ``numa`` bind each
    process to its own cores. ``env`` is added to every process's environment; ``transport``
    forces a transport by name for this mesh. Every line the processes print reaches this
    process prefixed with ``[name rank]``; ``logs`` sends it to this process's output
    (``"stream"``), to ``log_file`` (``"file"``) or both.
    """
    from . import _logs

    _logs.check_options(logs, log_file)
    sizes = check_sizes(per_host if per_host is not None else {"procs": 1})
    runtime = Runtime.get()
    count = nelement(sizes)
    request = allocation.Request(
        owner=name or f"ProcMesh {sizes} of pid {os.getpid()}", procs=count,
        gpus_per_proc=gpus_per_proc if gpus_per_proc is not None else int("gpus" in sizes),
        cpus_per_proc=cpus_per_proc, numa=numa,
        strict=allocation.strict_default() if strict is None else strict)
    envs, release = allocation.plan_mesh(request, allocator_name=allocator)  # raises at once
    label = name or "procs"
    for rank, child_env in enumerate(envs):
        child_env.update(env or {})
        child_env.update({"FORGE_MESH": label, "FORGE_MESH_RANK": str(rank)})
    procs: concurrent.futures.Future = concurrent.futures.Future()
    mesh = ProcMesh(sizes, procs, list(range(count)), owner=True, transport=transport)
    mesh.name = label
    mesh_log = _logs.MeshLog(label, logs, log_file)

    def start() -> None:
        try:
            mesh._children[:] = launch(runtime, envs, mesh_log)
        except BaseException as exc:
            release()
            procs.set_exception(exc)
            return

        async def all_up() -> None:
            try:
                infos = await asyncio.gather(*(c.ready for c in mesh._children))
            except BaseException as exc:
                procs.set_exception(exc)
                for child in mesh._children:
                    child.close_lifeline()
            else:
                procs.set_result(list(infos))

        async def release_when_all_exited() -> None:
            await asyncio.gather(*(c.exited for c in mesh._children), return_exceptions=True)
            release()  # devices go back to the pool once no process of the mesh runs

        runtime.home_loop.create_task(all_up())
        runtime.home_loop.create_task(release_when_all_exited())

    runtime.home_loop.call_soon_threadsafe(start)
    _live_meshes.add(mesh)
    from .observe import watch

    watch.client_started()  # the metrics port and the slow-call watch, if configured
    return mesh


class HostMesh:
    """Hosts that can start processes. ``this_host()`` is the local one."""

    def __init__(self, hosts: list[str]):
        self._hosts = hosts

    @property
    def extent(self) -> dict[str, int]:
        return {"hosts": len(self._hosts)}

    sizes = extent

    def spawn_procs(self, per_host: dict[str, int] | None = None, **options: Any) -> ProcMesh:
        if self._hosts != ["localhost"]:
            return spawn_cluster_procs(self._hosts, per_host, **options)
        return spawn_procs(per_host, **options)

    def __repr__(self) -> str:
        return f"<HostMesh {self._hosts}>"


def this_host() -> HostMesh:
    return HostMesh(["localhost"])


def this_proc() -> ProcMesh:
    """The calling process, as a mesh of one: ``this_proc().spawn(...)`` runs an actor here."""
    runtime = Runtime.get()
    return ProcMesh({}, _resolved([runtime.info]), [0])


def spawn_cluster_procs(hosts: list[str], per_host: dict[str, int] | None = None, *,
                        env: dict[str, str] | None = None, transport: str | None = None,
                        gpus_per_proc: int | None = None, strict: bool | None = None,
                        name: str | None = None) -> ProcMesh:
    """Processes on several hosts at once, ranks numbered continuously across them
    (host 0: ranks 0..n-1, host 1: n..2n-1, ...). The mesh has a leading ``"hosts"`` dimension.

    Each host is the ``HOST:PORT`` of a ``forge agent`` holding the same cluster secret
    (``FORGE_SECRET``) as this process. ``"localhost"`` entries without a port are simulated
    with local processes. Returns at once; a host that cannot be reached, or that refuses the
    secret, fails the mesh's first call with an error naming the host.
    """
    if not hosts:
        raise TypeError("spawn_cluster_procs needs at least one host")
    per_host = check_sizes(per_host or {"procs": 1})
    sizes = {"hosts": len(hosts), **per_host}
    if all(h in ("localhost", "127.0.0.1") for h in hosts):
        return spawn_procs(sizes, env=env, transport=transport, gpus_per_proc=gpus_per_proc,
                           strict=strict, name=name)
    from .agent import spawn_on_agents

    count = nelement(per_host)
    request = allocation.Request(
        owner=name or f"ProcMesh {sizes} of pid {os.getpid()}", procs=count,
        gpus_per_proc=gpus_per_proc if gpus_per_proc is not None else int("gpus" in per_host),
        strict=allocation.strict_default() if strict is None else strict)
    procs: concurrent.futures.Future = concurrent.futures.Future()
    mesh = ProcMesh(sizes, procs, list(range(count * len(hosts))), owner=True,
                    transport=transport)

    async def start() -> None:
        try:
            infos, mesh._remote_stop = await spawn_on_agents(list(hosts), sizes, count, request,
                                                             env or {})
        except BaseException as exc:
            procs.set_exception(exc)
        else:
            procs.set_result(infos)

    on_home_loop(start)
    _live_meshes.add(mesh)
    return mesh


# ---------------------------------------------------------------------------------------------
# Actor meshes


class ActorMesh:
    """One actor per process of a ProcMesh. Endpoints are attributes: ``mesh.get.call()``."""

    def __init__(self, class_name: str, endpoints: dict[str, EndpointSpec], actor_id: bytes,
                 sizes: dict[str, int], spawned: concurrent.futures.Future,
                 transport: str | None = None, indices: list[int] | None = None):
        self._class_name = class_name
        self._endpoints = endpoints
        self._actor_id = actor_id
        self._sizes = sizes
        self._spawned = spawned  # resolves to (targets, errors) of the whole spawned mesh
        self._transport = transport
        self._indices = indices
        self._next = itertools.count()
        self._ready_targets: list[ProcInfo] | None = None  # cached once spawned, for the hot path
        self._last_channel: Any = None  # call_one()'s channel to rank 0, from the last loop used

    def __getattr__(self, name: str) -> "EndpointRef":
        if name.startswith("_"):
            raise AttributeError(name)
        spec = self._endpoints.get(name)
        if spec is None:
            raise AttributeError(
                f"{self._class_name} has no endpoint {name!r}; its endpoints are "
                f"{sorted(self._endpoints) or 'none (mark methods with @endpoint)'}")
        ref = EndpointRef(self, spec)
        self.__dict__[name] = ref  # next time, plain attribute lookup finds it
        return ref

    @property
    def extent(self) -> dict[str, int]:
        return dict(self._sizes)

    sizes = extent

    def __len__(self) -> int:
        return nelement(self._sizes) if self._indices is None else len(self._indices)

    def slice(self, **dims: Any) -> "ActorMesh":
        indices = self._indices if self._indices is not None else list(range(nelement(self._sizes)))
        sizes, picked = select(self._sizes, indices, dims)
        return ActorMesh(self._class_name, self._endpoints, self._actor_id, sizes, self._spawned,
                         self._transport, picked)

    @property
    def initialized(self) -> Future[None]:
        """Resolves once every actor is constructed; raises if a constructor failed."""
        def check(result):
            error = spawn_error(self._class_name, result[1])
            if error is not None:
                raise error

        return _future_of(self._spawned, check)

    def _targets(self) -> list[ProcInfo]:
        """The processes of this mesh, in rank order; raises if construction failed."""
        if self._ready_targets is not None:
            return self._ready_targets
        every, errors = self._spawned.result()
        error = spawn_error(self._class_name, errors)
        if error is not None:
            raise error
        self._ready_targets = every if self._indices is None else [every[i] for i in self._indices]
        return self._ready_targets

    # -- making calls -------------------------------------------------------------------------
    def _invoke(self, spec: EndpointSpec, args: tuple, kwargs: dict, mode: int,
                traced: bool = True) -> Future:
        if _tracing.enabled and traced and mode != _BROADCAST:
            return self._invoke_traced(spec, args, kwargs, mode)
        try:
            payload, buffers = encode_call(self._class_name, spec, args, kwargs)
        except NotReady:
            payload, buffers = None, []
        loop = _get_running_loop()
        if mode == _ONE and payload is not None:
            # The hot path: call_one() again from the loop of the last call, on its channel.
            channel = self._last_channel
            if channel is not None and channel.loop is loop:  # (a broken one fails the call)
                return channel.call(self._actor_id, payload, buffers)
        if loop is None:  # synchronous caller: the home loop makes the call
            return self._invoke_from_home_loop(spec, args, kwargs, mode, payload, buffers)
        if payload is None or (self._ready_targets is None and not self._spawned.done()):
            future = self._new_future(loop, mode)
            loop.create_task(self._invoke_later(spec, args, kwargs, mode, payload, buffers, future))
            return future
        return self._send(loop, spec, mode, payload, buffers)

    def _invoke_traced(self, spec: EndpointSpec, args: tuple, kwargs: dict, mode: int) -> Future:
        """A call in a client span, its traceparent in the message (see ``_tracing``). Calls
        made before the mesh is up, or from outside an event loop, go untraced."""
        loop = _get_running_loop()
        if loop is None:
            return self._invoke(spec, args, kwargs, mode, traced=False)
        try:
            payload, buffers = encode_call(self._class_name, spec, args, kwargs)
        except NotReady:
            payload, buffers = None, []
        span, traceparent = _tracing.start_client_span(self._class_name, spec.name)
        if payload is None or (self._ready_targets is None and not self._spawned.done()):
            future = self._new_future(loop, mode)
            loop.create_task(self._invoke_later(spec, args, kwargs, mode, payload, buffers,
                                                future, traceparent))
        else:
            future = self._send(loop, spec, mode, _tracing.traced_body(traceparent, payload),
                                buffers, kind=m.REQUEST_TRACED)
        future.add_done_callback(functools.partial(_tracing.end_client_span, span))
        return future

    def _invoke_from_home_loop(self, spec, args, kwargs, mode, payload, buffers) -> Future:
        # Its own method so that _invoke, the hot path, keeps no closure cells.
        return ThreadFuture(on_home_loop(
            lambda: self._invoke_later(spec, args, kwargs, mode, payload, buffers)))

    def _new_future(self, loop: asyncio.AbstractEventLoop, mode: int) -> Future:
        if mode == _ALL:
            return GatherFuture(loop, self._sizes, len(self))
        return call_future(loop)

    async def _invoke_later(self, spec, args, kwargs, mode, payload, buffers,
                            future: Future | None = None, traceparent: bytes | None = None
                            ) -> Any:
        """The slow path: wait for the mesh (and any mesh among the arguments) to be up."""
        loop = asyncio.get_running_loop()
        caller_waits_here = future is None
        if future is None:
            future = self._new_future(loop, mode)
        try:
            await _wait(self._spawned)
            if payload is None:
                payload, buffers = await _call_when_ready(spec, args, kwargs)
        except BaseException as exc:
            future._fail(exc)
        else:
            if traceparent is None:
                self._send(loop, spec, mode, payload, buffers, future)
            else:
                self._send(loop, spec, mode, _tracing.traced_body(traceparent, payload),
                           buffers, future, kind=m.REQUEST_TRACED)
        if caller_waits_here:
            return await future

    def _send(self, loop: asyncio.AbstractEventLoop, spec: EndpointSpec, mode: int,
              payload: bytes, buffers: list, future: Future | None = None,
              kind: int = m.REQUEST) -> Future:
        if future is None:
            future = self._new_future(loop, mode)
        try:
            targets = self._targets()
        except Exception as exc:
            future._fail(exc)
            return future
        actor_id, transport = self._actor_id, self._transport
        if mode == _ONE:
            # The hot path: the channel to rank 0 from this loop is kept on the mesh.
            last = self._last_channel
            if last is None or last.loop is not loop or last.broken is not None:
                last = self._last_channel = Runtime.get().channel(targets[0], loop, transport)
            last.request(kind, actor_id, payload, buffers, future)
            return future
        runtime = Runtime.get()
        if mode == _ALL:
            for index, info in enumerate(targets):
                runtime.channel(info, loop, transport).request(
                    kind, actor_id, payload, buffers, future.slot(index))
        elif mode == _BROADCAST:
            try:
                for info in targets:
                    runtime.channel(info, loop, transport).post(m.SEND, actor_id, payload, buffers)
            except SupervisionError as exc:
                future._fail(exc)
            else:
                future.set_result(None)
        else:
            info = self._choose(targets, runtime.dead)
            runtime.channel(info, loop, transport).request(
                kind, actor_id, payload, buffers, future)
        return future

    def _choose(self, targets: list[ProcInfo], dead: set[str]) -> ProcInfo:
        for _ in range(len(targets)):
            info = targets[next(self._next) % len(targets)]
            if info.proc_id not in dead:
                return info
        return targets[0]

    async def _stream(self, spec: EndpointSpec, payload: bytes, buffers: list,
                      args: tuple, kwargs: dict) -> AsyncIterator[Any]:
        await _wait(self._spawned)
        if payload is None:
            payload, buffers = await _call_when_ready(spec, args, kwargs)
        loop = asyncio.get_running_loop()
        runtime = Runtime.get()
        pending = [runtime.channel(info, loop, self._transport).call(self._actor_id, payload,
                                                                      buffers)
                   for info in self._targets()]
        try:
            for next_done in asyncio.as_completed(pending):
                yield await next_done
        finally:
            for future in pending:
                if not future.done():
                    future.cancel()

    def __reduce__(self):
        if not self._spawned.done():
            raise NotReady(self._spawned)
        targets, errors = self._spawned.result()
        portable_errors = [None if e is None else SupervisionError(str(e)) for e in errors]
        return (_rebuild_actor_mesh, (self._class_name, self._endpoints, self._actor_id,
                                      self._sizes, targets, portable_errors, self._transport,
                                      self._indices))

    def __repr__(self) -> str:
        return f"<ActorMesh {self._class_name} {self._sizes}>"


def _rebuild_actor_mesh(class_name, endpoints, actor_id, sizes, targets, errors, transport,
                        indices):
    return ActorMesh(class_name, endpoints, actor_id, sizes, _resolved((targets, errors)),
                     transport, indices)


class EndpointRef:
    """``mesh.endpoint``: choose how to call it."""

    __slots__ = ("_mesh", "_spec", "_bare_call")

    def __init__(self, mesh: ActorMesh, spec: EndpointSpec):
        self._mesh = mesh
        self._spec = spec
        # The whole body of a call without arguments, if the endpoint takes none.
        self._bare_call = spec.wire_name if spec.plain_arity == 0 else None

    def call_one(self, *args: Any, **kwargs: Any) -> Future:
        """Call the only actor of the mesh (or rank 0 of a larger one)."""
        mesh = self._mesh
        channel = mesh._last_channel
        body = self._bare_call
        if (body is not None and not args and not kwargs and channel is not None
                and channel.loop is _get_running_loop() and not _tracing.enabled):
            # The hottest path, a call without arguments from the loop of the last call:
            # nothing to check or pickle, and the channel is known (a broken one fails it).
            return channel.call(mesh._actor_id, body, [])
        return mesh._invoke(self._spec, args, kwargs, _ONE)

    def choose(self, *args: Any, **kwargs: Any) -> Future:
        """Call one actor, picked by the kernel (round robin over live processes)."""
        return self._mesh._invoke(self._spec, args, kwargs, _CHOOSE)

    def call(self, *args: Any, **kwargs: Any) -> Future[ValueMesh]:
        """Call every actor; resolves to a ValueMesh of their results in rank order."""
        return self._mesh._invoke(self._spec, args, kwargs, _ALL)

    def broadcast(self, *args: Any, **kwargs: Any) -> Future[None]:
        """Call every actor without waiting for results; resolves once sent."""
        return self._mesh._invoke(self._spec, args, kwargs, _BROADCAST)

    def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Call every actor; an async iterator of results in the order they arrive."""
        mesh = self._mesh
        try:
            payload, buffers = encode_call(mesh._class_name, self._spec, args, kwargs)
        except NotReady:
            payload, buffers = None, []
        return mesh._stream(self._spec, payload, buffers, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self._mesh._class_name}.{self._spec.name} is an endpoint: call it with "
                        f".call_one(), .choose(), .call(), .broadcast() or .stream()")

    def __repr__(self) -> str:
        return f"<endpoint {self._mesh._class_name}.{self._spec.name}>"


# ---------------------------------------------------------------------------------------------
# Inside an actor


def current_rank() -> Point:
    """This actor's point in its mesh (``.rank`` is the flat rank)."""
    point = current_point()
    return point if point is not None else Point({}, {})


def current_size() -> dict[str, int]:
    """The sizes of this actor's mesh, per dimension."""
    point = current_point()
    return point.extent if point is not None else {}


def stop_all_meshes(timeout: float = 10.0) -> int:
    """Stop every process mesh this process spawned and has not stopped (for test fixtures)."""
    meshes = list(_live_meshes)
    for mesh in meshes:
        try:
            mesh.stop().get(timeout=timeout)
        except Exception:
            pass
    return len(meshes)
