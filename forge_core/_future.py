"""``Future``: what every endpoint call returns.

``await fut`` in async code; ``fut.get(timeout=...)`` in synchronous code. The work it stands
for has already been sent when the Future is created (``broadcast()`` sends even if nobody
awaits), so a Future only waits.

A call made from a running event loop returns a ``CallFuture``: an ``asyncio.Future`` of that
loop that the channel resolves as the reply arrives (decoding it there), so awaiting it, or
handing thousands of them to ``asyncio.gather``, costs no task and no extra hop. A call made
from synchronous code runs on the runtime's home loop and returns a ``ThreadFuture``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
from typing import Any, Generic, TypeVar

from . import _messages as m
from ._shape import ValueMesh

T = TypeVar("T")
_get_running_loop = asyncio._get_running_loop
_loads = pickle.loads


class Future(Generic[T]):
    """The eventual result of an endpoint call (or of ``stop()``): ``await`` it, or ``.get()``."""

    def get(self, timeout: float | None = None) -> T:  # pragma: no cover - abstract
        raise NotImplementedError

    def __await__(self):  # pragma: no cover - abstract
        raise NotImplementedError


class ThreadFuture(Future[T]):
    """A result produced on another thread (the home loop)."""

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future):
        self._future = future

    @classmethod
    def of_exception(cls, exc: BaseException) -> "ThreadFuture":
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_exception(exc)
        return cls(future)

    def __await__(self):
        if self._future.done():
            return self._future.result()
        return (yield from asyncio.wrap_future(self._future).__await__())

    def get(self, timeout: float | None = None) -> T:
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within {timeout} s") from None

    def done(self) -> bool:
        return self._future.done()


class _LoopBound:
    """``get()`` for futures that belong to an event loop."""

    def get(self, timeout: float | None = None) -> Any:
        if self.done():
            return self.result()
        loop = self.get_loop()
        if _get_running_loop() is loop:
            raise RuntimeError("Future.get() would block the event loop that must deliver the "
                               "result; use `await` here")
        if not loop.is_running():
            raise RuntimeError("the event loop this call was made from is no longer running")

        async def wait() -> Any:
            return await self

        try:
            return asyncio.run_coroutine_threadsafe(wait(), loop).result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within {timeout} s") from None


class CallFuture(_LoopBound, asyncio.Future, Future):
    """One reply, decoded on arrival."""

    def _reply(self, kind: int, meta: bytes, offset: int, buffers: list) -> None:
        if self.done():
            return
        if kind == m.REPLY_OK:  # the common case, decoded here without another call
            if offset == len(meta):
                self.set_result(None)  # an empty reply is None
                return
            try:
                value = _loads(memoryview(meta)[offset:], buffers=buffers)
            except Exception:
                pass  # decode_reply below says what went wrong
            else:
                self.set_result(value)
                return
        try:
            value = m.decode_reply(kind, meta, offset, buffers)
        except Exception as exc:
            self.set_exception(exc)
        else:
            self.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        if not self.done():
            self.set_exception(exc)


class GatherFuture(_LoopBound, asyncio.Future, Future):
    """One reply per actor of a mesh, gathered into a ValueMesh in rank order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sizes: dict[str, int], count: int):
        super().__init__(loop=loop)
        self._sizes = sizes
        self._values: list[Any] = [None] * count
        self._left = count
        if count == 0:
            self.set_result(ValueMesh(sizes, []))

    def slot(self, index: int) -> "_Slot":
        return _Slot(self, index)

    def _fail(self, exc: BaseException) -> None:
        if not self.done():
            self.set_exception(exc)


class _Slot:
    """Where one actor's reply to a gathered call lands."""

    __slots__ = ("_owner", "_index")

    def __init__(self, owner: GatherFuture, index: int):
        self._owner = owner
        self._index = index

    def _reply(self, kind: int, meta: bytes, offset: int, buffers: list) -> None:
        owner = self._owner
        if owner.done():
            return
        try:
            owner._values[self._index] = m.decode_reply(kind, meta, offset, buffers)
        except Exception as exc:
            owner.set_exception(exc)
            return
        owner._left -= 1
        if owner._left == 0:
            owner.set_result(ValueMesh(owner._sizes, owner._values))

    def _fail(self, exc: BaseException) -> None:
        self._owner._fail(exc)


class RawFuture(asyncio.Future):
    """An undecoded reply ``(kind, meta, offset, buffers)``, for the kernel's own requests."""

    def _reply(self, kind: int, meta: bytes, offset: int, buffers: list) -> None:
        if not self.done():
            self.set_result((kind, meta, offset, buffers))

    def _fail(self, exc: BaseException) -> None:
        if not self.done():
            self.set_exception(exc)
