"""``ServiceInterface``: the handle a service's users hold, and where calls are routed.

Each copy of an interface (the one ``as_service`` returned, and every copy unpickled in another
process) routes by itself: it keeps the controller's latest view of the replicas, its own
routing policy and its own session table, picks a replica and sends the call straight to it.
The controller is not on the path; a background long poll (on the process's home loop) keeps
the view current, and a copy also learns of a death itself, from the kernel (``Runtime.dead``,
or a call failing with ``SupervisionError``), without waiting for the controller.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any

from .. import plugins
from .._endpoint import EndpointSpec
from .._runtime import Runtime
from ..errors import ActorError, NoReplicaAvailable, SupervisionError
from ._options import ServiceConfig
from ._view import (FAILED, HEALTHY, STOPPED, STOPPING, UNHEALTHY, ReplicaMetrics,
                    ServiceView)

log = logging.getLogger(__name__)

# The sessions active in this context: {service uid: session id}. A ContextVar, so a session
# covers the tasks started inside its block too (asyncio copies the context into each task).
_active_sessions: contextvars.ContextVar[dict[bytes, str] | None] = contextvars.ContextVar(
    "forge_service_sessions", default=None)

MAX_SESSIONS = 100_000  # explicit session ids are remembered up to this many, oldest forgotten
LATENCY_WINDOW = 2048  # latency samples kept per replica for metrics()
_WAIT_STEP = 0.01
_perf_counter = time.perf_counter

INSTALL_HINT = "Install the routing plugin (pip install -e plugins/routing) or the package " \
               "that provides this policy."


class _Slot:
    """One replica as this interface copy sees it; also the view a routing policy reads
    (``index``, ``in_flight``, ``healthy``)."""

    __slots__ = ("index", "name", "state", "generation", "error", "healthy", "target",
                 "dead_generation", "in_flight", "completed", "failed", "latencies")

    def __init__(self, index: int):
        self.index = index
        self.name = ""
        self.state = ""
        self.generation = 0  # the controller's latest, which may still be starting
        self.error: str | None = None
        self.healthy = False
        # (generation, ActorMesh, proc ids), replaced as one object so that a call never pairs
        # one generation's number with another generation's mesh.
        self.target: tuple[int, Any, tuple[str, ...]] = (0, None, ())
        self.dead_generation = 0  # a generation this copy saw die
        self.in_flight = 0
        self.completed = 0
        self.failed = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def __repr__(self) -> str:
        return f"<replica {self.index} {self.state} in_flight={self.in_flight}>"


class ServiceInterface:
    """A replicated service: ``svc.<endpoint>.route(...)``, ``.fanout(...)``, ``session()``.

    Picklable: pass it to another actor and it routes from there, with the same policy and the
    same (live) view of which replicas are healthy.
    """

    def __init__(self, name: str, uid: bytes, class_name: str,
                 endpoints: dict[str, EndpointSpec], controller: Any, config: ServiceConfig,
                 view: ServiceView):
        self._name = name
        self._uid = uid
        self._class_name = class_name
        self._endpoints = endpoints
        self._controller = controller  # the controller's ActorMesh
        self._config = config
        self._multi = config.procs > 1  # a replica of several processes answers with a ValueMesh
        self._policy: Any = None  # made on first use, from the router's name
        self._slots: dict[int, _Slot] = {}
        self._healthy: list[_Slot] = []
        self._sessions: dict[str, int] = {}  # session id -> replica index
        self._view = view
        self._version = -1
        self._stopped = False
        self._watching = False
        self._dead = Runtime.get().dead  # the kernel's set of dead proc ids (never shrinks)
        # Views arrive on the home loop's thread while calls may see deaths on the caller's:
        # whoever rebuilds the replica lists holds this (never taken on the routing path).
        self._views_lock = threading.Lock()
        self._apply(view)

    # -- endpoints ---------------------------------------------------------------------------
    def __getattr__(self, name: str) -> "ServiceEndpoint":
        if name.startswith("_"):
            raise AttributeError(name)
        spec = self._endpoints.get(name)
        if spec is None:
            raise AttributeError(f"service {self._name!r} ({self._class_name}) has no endpoint "
                                 f"{name!r}; its endpoints are {sorted(self._endpoints)}")
        ref = ServiceEndpoint(self, spec)
        self.__dict__[name] = ref
        return ref

    # -- sessions, scaling, metrics, shutdown ------------------------------------------------
    def session(self, session_id: str | None = None) -> "Session":
        """``async with svc.session():`` sends every ``route()`` in the block (and in tasks
        started inside it) to one replica, which changes only if that replica dies. With
        ``session_id``, the same id always means the same session (also across blocks)."""
        return Session(self, session_id)

    async def scale(self, num_replicas: int) -> None:
        """Grow or shrink the replica set; returns once the new set is serving. New replicas
        run ``setup``; removed ones (the highest indices) leave routing before they stop."""
        self._apply(_unwrap(await self._controller.scale.call_one(num_replicas)))

    async def shutdown(self) -> None:
        """Stop every replica and the controller. Calls made afterwards raise
        ``NoReplicaAvailable``."""
        if self._stopped:
            return
        try:
            view = await self._controller.shutdown.call_one()
        except (ActorError, SupervisionError):  # already shut down by another copy
            self._stopped = True
            return
        self._apply(view)

    def metrics(self) -> list[ReplicaMetrics]:
        """Per replica: state, calls in flight, completed and failed, latency p50/p99 (ms),
        for the calls made through this copy of the interface."""
        rows = []
        for slot in sorted(self._slots.values(), key=lambda s: s.index):
            ordered = sorted(slot.latencies)
            state = slot.state
            if state == HEALTHY and not slot.healthy:
                state = UNHEALTHY
            rows.append(ReplicaMetrics(
                slot.index, slot.name, state, slot.generation, slot.in_flight, slot.completed,
                slot.failed, _percentile(ordered, 0.50), _percentile(ordered, 0.99), slot.error))
        return rows

    @property
    def name(self) -> str:
        return self._name

    # -- routing -----------------------------------------------------------------------------
    def _pick(self, session_id: str | None) -> _Slot:
        """The replica for the next call (synchronous: nothing interleaves)."""
        if session_id is not None:
            slot = self._slots.get(self._sessions.get(session_id, -1))  # type: ignore[arg-type]
            if slot is not None and slot.healthy and not self._is_dead(slot):
                return slot
        policy = self._policy or self._make_policy()
        healthy = self._healthy
        while healthy:
            slot = policy.choose(healthy, session_id)
            if self._is_dead(slot):  # the kernel knows already; the controller will tell soon
                self._saw_death(slot, slot.target[0])
                healthy = self._healthy
                continue
            if session_id is not None:
                self._place_session(session_id, slot.index)
            return slot
        raise self._unavailable("?")

    async def _pick_or_wait(self, session_id: str | None, endpoint: str) -> _Slot:
        """Like ``_pick``, but while replicas are being (re)started, wait for one (up to
        ``retry_wait`` seconds) instead of failing."""
        deadline = time.monotonic() + self._config.retry_wait
        while True:
            try:
                return self._pick(session_id)
            except NoReplicaAvailable:
                if self._stopped or not self._recovering() or time.monotonic() > deadline:
                    raise self._unavailable(endpoint) from None
            if not self._watching:
                self._start_watching()
            await asyncio.sleep(_WAIT_STEP)

    async def _call(self, slot: _Slot, name: str, args: tuple, kwargs: dict) -> Any:
        """One call to one replica, counted for the policy (in flight) and for metrics."""
        ref = getattr(slot.target[1], name)
        future = ref.call(*args, **kwargs) if self._multi else ref.call_one(*args, **kwargs)
        slot.in_flight += 1
        start = _perf_counter()
        try:
            result = await future
        except (ActorError, SupervisionError):
            slot.failed += 1
            raise
        finally:
            slot.in_flight -= 1
        slot.completed += 1
        slot.latencies.append(_perf_counter() - start)
        return result

    def _is_dead(self, slot: _Slot) -> bool:
        dead = self._dead
        for proc_id in slot.target[2]:
            if proc_id in dead:
                return True
        return False

    def _saw_death(self, slot: _Slot, generation: int) -> None:
        """A call to ``generation`` of ``slot`` found it dead: stop routing to it here now."""
        with self._views_lock:
            if slot.target[0] == generation and slot.healthy:
                slot.dead_generation = generation
                slot.healthy = False
                self._healthy = [s for s in self._slots.values() if s.healthy]

    def _place_session(self, session_id: str, index: int) -> None:
        sessions = self._sessions
        if len(sessions) >= MAX_SESSIONS and session_id not in sessions:
            del sessions[next(iter(sessions))]
        sessions[session_id] = index

    def _recovering(self) -> bool:
        return any(s.state not in (FAILED, STOPPING, STOPPED) for s in self._slots.values())

    def _unavailable(self, endpoint: str) -> NoReplicaAvailable:
        if self._stopped:
            reason = "the service was shut down"
        elif not self._slots:
            reason = "it has no replicas"
        else:
            states = [f"{s.name} {s.state if s.state != HEALTHY else UNHEALTHY}"
                      + (f" ({s.error})" if s.error else "") for s in self._slots.values()]
            reason = "; ".join(states)
        return NoReplicaAvailable(service=self._name, endpoint=endpoint, reason=reason)

    def _make_policy(self) -> Any:
        factory = plugins.require("routing policy", self._config.router,
                                  plugins.routing_policies(), INSTALL_HINT)
        self._policy = factory(**self._config.router_options)
        return self._policy

    # -- following the controller ------------------------------------------------------------
    def _start_watching(self) -> None:
        """Follow the controller's view from this process's home loop (which outlives any
        event loop the user routes from)."""
        self._watching = True
        asyncio.run_coroutine_threadsafe(self._follow(), Runtime.get().home_loop)

    async def _follow(self) -> None:
        try:
            while not self._stopped:
                self._apply(await self._controller.watch.call_one(self._version))
        except Exception as exc:  # the controller is gone: keep routing on the last view
            log.debug("service %s: stopped following its controller: %r", self._name, exc)

    def _apply(self, view: ServiceView) -> None:
        with self._views_lock:
            self._apply_locked(view)

    def _apply_locked(self, view: ServiceView) -> None:
        if view.version <= self._version:
            return
        old, slots = self._slots, {}
        for entry in view.replicas:
            slot = old.get(entry.index) or _Slot(entry.index)
            slot.name, slot.state, slot.error = entry.name, entry.state, entry.error
            slot.generation = entry.generation
            if entry.mesh is not None and slot.target[0] != entry.generation:
                slot.target = (entry.generation, entry.mesh, entry.proc_ids)
            slot.healthy = (entry.state == HEALTHY and slot.target[0] == entry.generation
                            and slot.dead_generation != entry.generation)
            slots[entry.index] = slot
        self._slots = slots
        self._healthy = [s for s in slots.values() if s.healthy]
        self._view = view
        self._version = view.version
        if view.stopped:
            self._stopped = True

    # -- pickling ----------------------------------------------------------------------------
    def __reduce__(self):
        return (ServiceInterface, (self._name, self._uid, self._class_name, self._endpoints,
                                   self._controller, self._config, self._view))

    def __repr__(self) -> str:
        if self._stopped:
            return f"<ServiceInterface {self._name!r} stopped>"
        return (f"<ServiceInterface {self._name!r} replicas={len(self._slots)} "
                f"healthy={len(self._healthy)} router={self._config.router}>")


class ServiceEndpoint:
    """``svc.<endpoint>``: ``route()`` to one replica or ``fanout()`` to all."""

    __slots__ = ("_service", "_name", "_retry")

    def __init__(self, service: ServiceInterface, spec: EndpointSpec):
        self._service = service
        self._name = spec.name
        self._retry = spec.retry

    async def route(self, *args: Any, **kwargs: Any) -> Any:
        """Call one healthy replica, chosen by the routing policy (or the session's replica).

        If that replica dies before answering, the call is sent once more to another healthy
        replica, unless the endpoint was declared ``@endpoint(retry=False)``. Exceptions the
        endpoint raises come back as ``ActorError`` and are never retried.
        """
        service = self._service
        if not service._watching:
            service._start_watching()
        sessions = _active_sessions.get()
        session_id = sessions.get(service._uid) if sessions is not None else None
        try:
            slot = service._pick(session_id)
        except NoReplicaAvailable:
            slot = await service._pick_or_wait(session_id, self._name)
        generation = slot.target[0]
        try:
            return await service._call(slot, self._name, args, kwargs)
        except SupervisionError:
            service._saw_death(slot, generation)
            if not self._retry:
                raise
        slot = await service._pick_or_wait(session_id, self._name)
        return await service._call(slot, self._name, args, kwargs)

    async def fanout(self, *args: Any, return_exceptions: bool = False, **kwargs: Any) -> list:
        """Call every healthy replica; a list of their results in replica order.

        If any call raises, ``fanout`` raises (the first error, once every call is done);
        with ``return_exceptions=True`` the exceptions are returned in place instead.
        """
        service = self._service
        if not service._watching:
            service._start_watching()
        targets = list(service._healthy)
        if not targets:
            await service._pick_or_wait(None, self._name)
            targets = list(service._healthy)
        results = await asyncio.gather(
            *(service._call(slot, self._name, args, kwargs) for slot in targets),
            return_exceptions=True)
        for slot, result in zip(targets, results):
            if isinstance(result, SupervisionError):
                service._saw_death(slot, slot.target[0])
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    def _wrong_adverb(self, adverb: str) -> TypeError:
        return TypeError(f"{self._service._name}.{self._name} is a service endpoint: "
                         f"{adverb}() is for actor meshes. Use .route(...) for one replica "
                         f"or .fanout(...) for every replica")

    def call_one(self, *args: Any, **kwargs: Any) -> Any:
        raise self._wrong_adverb("call_one")

    def choose(self, *args: Any, **kwargs: Any) -> Any:
        raise self._wrong_adverb("choose")

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise self._wrong_adverb("call")

    def broadcast(self, *args: Any, **kwargs: Any) -> Any:
        raise self._wrong_adverb("broadcast")

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        raise self._wrong_adverb("stream")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._wrong_adverb("calling it directly, or")

    def __repr__(self) -> str:
        return f"<service endpoint {self._service._name}.{self._name}>"


class Session:
    """``async with svc.session() as session:``; ``session.id`` names it."""

    def __init__(self, service: ServiceInterface, session_id: str | None):
        self._service = service
        self._explicit = session_id is not None
        self.id = session_id if session_id is not None else uuid.uuid4().hex
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> "Session":
        active = _active_sessions.get()
        merged = dict(active) if active else {}
        merged[self._service._uid] = self.id
        self._tokens.append(_active_sessions.set(merged))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _active_sessions.reset(self._tokens.pop())
        if not self._explicit and not self._tokens:
            self._service._sessions.pop(self.id, None)

    async def __aenter__(self) -> "Session":
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.__exit__(*exc_info)

    @property
    def replica(self) -> int | None:
        """The index of the replica this session is on (None before its first call)."""
        return self._service._sessions.get(self.id)

    def __repr__(self) -> str:
        return f"<Session {self.id} of {self._service._name!r} replica={self.replica}>"


def _unwrap(outcome: tuple[str, Any]) -> Any:
    status, value = outcome
    if status == "error":
        raise value
    return value


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    position = min(len(ordered) - 1, int(q * len(ordered)))
    return ordered[position] * 1000.0
