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
from collections import deque
from typing import Any, Callable

from . import _messages as m
from . import _wire
from ._endpoint import endpoints_of
from ._shape import Point

log = logging.getLogger("forge.actor")

# Reply = (kind, request_id, payload, buffers) -> None; None for fire-and-forget messages.
Reply = Callable[[int, int, bytes, list], None]

_current_point: contextvars.ContextVar[Point | None] = contextvars.ContextVar(
    "forge_current_point", default=None)


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
        self._queue: deque = deque()
        self._busy = False

    def deliver(self, request_id: int, body: memoryview, buffers: list, reply: Reply | None,
                track: Callable[[asyncio.Task], None] | None = None) -> None:
        try:
            name, args, kwargs = _wire.loads(body, buffers)
        except Exception as exc:
            self._fail(request_id, reply, f"{self.class_name}: could not unpickle the arguments "
                                          f"of a call: {exc!r}")
            return
        spec = self._endpoints.get(name)
        if spec is None:
            self._fail(request_id, reply, f"{self.class_name} has no endpoint {name!r}; its "
                                          f"endpoints are {sorted(self._endpoints)}")
            return
        message = (spec, request_id, args, kwargs, reply, track)
        if spec.concurrent and spec.is_async:
            self._start_async(message, concurrent=True)
        elif self._busy:
            self._queue.append(message)
        else:
            self._run(message)

    def _fail(self, request_id: int, reply: Reply | None, text: str) -> None:
        if reply is None:
            log.error("%s", text)
            return
        payload, buffers = m.encode_failure(text)
        reply(m.REPLY_ERR, request_id, payload, buffers)

    def _run(self, message: tuple) -> None:
        """Run messages inline until one needs a task or the queue is empty."""
        while True:
            spec = message[0]
            if spec.is_async:
                self._start_async(message, concurrent=False)
                return
            spec_, request_id, args, kwargs, reply, _ = message
            token = _current_point.set(self.point)
            try:
                result = getattr(self.instance, spec.name)(*args, **kwargs)
            except Exception as exc:
                self._answer_error(spec, request_id, reply, exc)
            else:
                self._answer(spec, request_id, reply, result)
            finally:
                _current_point.reset(token)
            if not self._queue:
                return
            message = self._queue.popleft()

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
        try:
            result = await getattr(self.instance, spec.name)(*args, **kwargs)
        except Exception as exc:
            self._answer_error(spec, request_id, reply, exc)
        else:
            self._answer(spec, request_id, reply, result)
        finally:
            if not concurrent:
                self._busy = False
                if self._queue:
                    self._run(self._queue.popleft())

    def _answer(self, spec, request_id: int, reply: Reply | None, result: Any) -> None:
        if reply is None:
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
