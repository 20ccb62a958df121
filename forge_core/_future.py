"""``Future``: what every endpoint call returns.

``await fut`` in async code; ``fut.get(timeout=...)`` in synchronous code. The work it stands
for has already been sent when the Future is created (``broadcast()`` sends even if nobody
awaits), so a Future only waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")
_get_running_loop = asyncio._get_running_loop


class Future(Generic[T]):
    """The eventual result of an endpoint call (or of ``stop()``)."""

    __slots__ = ("_loop", "_pending", "_finish", "_concurrent")

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None,
                 pending: list[asyncio.Future] | None = None,
                 finish: Callable[[list[Any]], T] | None = None,
                 concurrent: concurrent.futures.Future | None = None):
        self._loop = loop
        self._pending = pending  # asyncio futures of ``loop``; ``finish`` maps their results
        self._finish = finish
        self._concurrent = concurrent  # or: the whole result comes from another thread

    @classmethod
    def of_task(cls, task: asyncio.Future) -> "Future[T]":
        return cls(loop=task.get_loop(), pending=[task], finish=_first)

    @classmethod
    def of_value(cls, value: T) -> "Future[T]":
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(value)
        return cls(concurrent=future)

    def __await__(self):
        if self._concurrent is not None:
            if self._concurrent.done():
                return self._concurrent.result()
            return (yield from asyncio.wrap_future(self._concurrent).__await__())
        if _get_running_loop() is not self._loop:
            raise RuntimeError("this Future belongs to another event loop; await it in the loop "
                               "that made the call, or call .get() from synchronous code")
        pending = self._pending
        results = []
        try:
            for future in pending:
                results.append((yield from future.__await__()))
        except BaseException:
            for future in pending:  # the caller sees one error; don't warn about the others
                future.add_done_callback(_consume)
            raise
        return self._finish(results)

    def get(self, timeout: float | None = None) -> T:
        """Block until the result is there (synchronous code only)."""
        if self._concurrent is not None:
            try:
                return self._concurrent.result(timeout)
            except concurrent.futures.TimeoutError:
                raise TimeoutError(f"no result within {timeout} s") from None
        if _get_running_loop() is self._loop:
            raise RuntimeError("Future.get() would block the event loop that must deliver the "
                               "result; use `await` here")
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("the event loop this call was made from is no longer running")

        async def wait() -> T:
            return await self

        try:
            return asyncio.run_coroutine_threadsafe(wait(), self._loop).result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within {timeout} s") from None

    def done(self) -> bool:
        if self._concurrent is not None:
            return self._concurrent.done()
        return all(f.done() for f in self._pending or ())

    def __repr__(self) -> str:
        return f"<forge Future {'done' if self.done() else 'pending'}>"


def _first(results: list[Any]) -> Any:
    return results[0]


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
