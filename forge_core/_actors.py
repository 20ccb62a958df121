"""Hosting actors inside a process: the mailbox that runs one message at a time.

An actor handles its messages in arrival order, one at a time, so actor code needs no locks.
A synchronous endpoint runs inline on the event loop when the actor is idle (the cheapest
path there is); an asynchronous one runs as a task, and the mailbox waits for it before the
next message, unless the endpoint opted into overlapping calls (``@endpoint(concurrent=True)``).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import pickle
from collections import deque
from typing import Any, Callable

from . import _counters
from . import _messages as m
from . import _wire
from ._endpoint import endpoints_of
from ._shape import Point

log = logging.getLogger("forge.actor")

_loads = pickle.loads

# Reply = (kind, request_id, payload, buffers) -> None; None for fire-and-forget messages.
Reply = Callable[[int, int, bytes, list], None]

_current_point: contextvars.ContextVar[Point | None] = contextvars.ContextVar(
    "forge_current_point", default=None)


_get_point = _current_point.get
_NO_KWARGS: dict = {}  # shared: calls only ever unpack it (f(**kwargs) copies)
_REPLY_OK = m.REPLY_OK
_now = _counters._now


def current_point() -> Point | None:
    return _current_point.get()


class ActorHost:
    """One actor instance and its mailbox."""

    def __init__(self, actor_id: str, instance: Any, point: Point):
        self.actor_id = actor_id
        self.instance = instance
        self.point = point
        self.class_name = type(instance).__name__
        self._endpoints = endpoints_of(type(instance))
        self._by_wire_name = {spec.wire_name: spec for spec in self._endpoints.values()}
        self._queue: deque = deque()
        self._busy = False
        # What the introspection thread reads (see _counters): per endpoint counts, the sync
        # call running now as (endpoint, perf_counter at start), the async ones by task.
        self.stats = {name: _counters.EndpointStats() for name in self._endpoints}
        self.running_sync: tuple[str, float] | None = None
        self.running_async: dict[int, tuple[str, float, asyncio.Task]] = {}
        self.counting = _counters.counting()  # FORGE_METRICS=0 turns counting off (benchmarks)

    def queued(self) -> list[str]:
        """The endpoints of the calls waiting for this actor, oldest first."""
        return [message[0].name for message in list(self._queue)]

    def deliver(self, request_id: int, meta: bytes, offset: int, buffers: list,
                reply: Reply | None, track: Callable[[asyncio.Task], None] | None = None) -> None:
        """Take one call, whose body is ``meta[offset:]`` (see ``_messages``)."""
        try:
            arguments_at = offset + 1 + meta[offset]
        except IndexError:
            self._fail(request_id, reply, f"{self.class_name}: a call arrived without a body")
            return
        spec = self._by_wire_name.get(meta[offset:arguments_at])
        if spec is None:
            name = bytes(meta[offset + 1:arguments_at]).decode(errors="replace")
            self._fail(request_id, reply, f"{self.class_name} has no endpoint {name!r}; its "
                                          f"endpoints are {sorted(self._endpoints)}")
            return
        if arguments_at == len(meta):
            args, kwargs = (), _NO_KWARGS
        else:
            try:
                args, kwargs = _loads(memoryview(meta)[arguments_at:], buffers=buffers)
            except Exception as exc:
                self._fail(request_id, reply, f"{self.class_name}: could not unpickle the "
                                              f"arguments of a call to {spec.name}: {exc!r}")
                return
        if not spec.is_async:
            if self._busy:  # an async call is running: wait for it, in order
                self._queue.append((spec, request_id, args, kwargs, reply, track))
                return
            # Idle: run it right here (the queue is empty whenever the actor is idle).
            self._call_sync(spec, request_id, args, kwargs, reply)
            return
        message = (spec, request_id, args, kwargs, reply, track)
        if spec.concurrent:
            self._start_async(message, concurrent=True)
        elif self._busy:
            self._queue.append(message)
        else:
            self._start_async(message, concurrent=False)

    def _fail(self, request_id: int, reply: Reply | None, text: str) -> None:
        if reply is None:
            log.error("%s", text)
            return
        payload, buffers = m.encode_failure(text)
        reply(m.REPLY_ERR, request_id, payload, buffers)

    def _call_sync(self, spec, request_id: int, args: tuple, kwargs: dict,
                   reply: Reply | None) -> None:
        # current_rank() must see this actor's point. It is set, and left set, in the context
        # this runs in (under uvloop, that of the listening server, shared by its connections),
        # so the next call usually finds it set already. That is sound because every way into
        # an actor sets it first: here, _start_async and construct; only actor code reads it.
        if _get_point() is not self.point:
            _current_point.set(self.point)
        counting = self.counting
        if counting:
            stats = self.stats[spec.name]
            started = _now()
            self.running_sync = (spec.name, started)
            stats.in_flight += 1
        try:
            result = getattr(self.instance, spec.name)(*args, **kwargs)
        except Exception as exc:
            if counting:
                self._sync_done(stats, started, True)
            self._answer_error(spec, request_id, reply, exc)
            return
        if counting:
            self._sync_done(stats, started, False)
        if reply is not None:
            if result is None:
                reply(_REPLY_OK, request_id, b"", [])  # an empty reply is None
            else:
                self._answer(spec, request_id, reply, result)

    def _sync_done(self, stats: _counters.EndpointStats, started: float, failed: bool) -> None:
        self.running_sync = None
        stats.in_flight -= 1
        stats.finished(started, failed)

    def _run_queued(self) -> None:
        """After an async call: run what waited, inline, until one needs a task again."""
        while self._queue and not self._busy:
            message = self._queue.popleft()
            spec, request_id, args, kwargs, reply, _ = message
            if spec.is_async:
                self._start_async(message, concurrent=False)
            else:
                self._call_sync(spec, request_id, args, kwargs, reply)

    def _start_async(self, message: tuple, concurrent: bool) -> None:
        if not concurrent:
            self._busy = True
        token = _current_point.set(self.point)  # the task copies this context
        try:
            task = asyncio.get_running_loop().create_task(self._run_async(message, concurrent))
        finally:
            _current_point.reset(token)
        task.add_done_callback(_ignore_result)
        track = message[5]
        if track is not None:
            track(task)

    async def _run_async(self, message: tuple, concurrent: bool) -> None:
        spec, request_id, args, kwargs, reply, _ = message
        stats = self.stats[spec.name]
        started = _now()
        task = asyncio.current_task()
        key = id(task)
        self.running_async[key] = (spec.name, started, task)
        stats.in_flight += 1
        failed = False
        try:
            result = await getattr(self.instance, spec.name)(*args, **kwargs)
        except Exception as exc:
            failed = True
            self._answer_error(spec, request_id, reply, exc)
        else:
            self._answer(spec, request_id, reply, result)
        finally:
            del self.running_async[key]
            stats.in_flight -= 1
            stats.finished(started, failed)
            if not concurrent:
                self._busy = False
                self._run_queued()

    def _answer(self, spec, request_id: int, reply: Reply | None, result: Any) -> None:
        if reply is None:
            return
        if result is None:
            reply(m.REPLY_OK, request_id, b"", [])  # an empty reply is None
            return
        try:
            payload, buffers = _wire.dumps(_wire.wrap_large_bytes(result))
        except Exception as exc:
            self._fail(request_id, reply, f"the result of {self.class_name}.{spec.name} "
                                          f"({type(result).__name__}) could not be pickled: {exc!r}")
            return
        reply(m.REPLY_OK, request_id, payload, buffers)

    def _answer_error(self, spec, request_id: int, reply: Reply | None, exc: Exception) -> None:
        where = f"{self.class_name}.{spec.name} (rank {self.point.rank})"
        _counters.note_error(self.actor_id, spec.name, self.point.rank, exc)
        if reply is None:
            log.error("%s raised in a broadcast (nobody waits for its result)", where,
                      exc_info=exc)
            return
        payload, buffers = m.encode_error(exc, where)
        reply(m.REPLY_ERR, request_id, payload, buffers)


def _ignore_result(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("actor task failed", exc_info=task.exception())


def construct(cls: type, args: tuple, kwargs: dict, point: Point) -> Any:
    token = _current_point.set(point)
    try:
        instance = cls(*args, **kwargs)
    finally:
        _current_point.reset(token)
    if inspect.isawaitable(instance):  # pragma: no cover - defensive
        raise TypeError(f"{cls.__name__}() returned an awaitable")
    return instance
