"""``Future``: what every endpoint call returns.

``await fut`` in async code; ``fut.get(timeout=...)`` in synchronous code. The work it stands
for has already been sent when the Future is created (``broadcast()`` sends even if nobody
awaits), so a Future only waits.

A call made from a running event loop returns a ``CallFuture`` (``GatherFuture`` for
``call()``): a plain ``asyncio.Future`` of that loop inside, which the channel resolves as the
reply arrives (decoding it there), so awaiting it, or handing thousands of them to
``asyncio.gather``, costs no task and no extra hop. A call made from synchronous code runs on
the runtime's home loop and returns a ``ThreadFuture``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import operator
import pickle
from typing import Any, Callable, Generic, TypeVar

from . import _messages as m
from ._shape import ValueMesh

T = TypeVar("T")
_get_running_loop = asyncio._get_running_loop
_loads = pickle.loads
_REPLY_OK = m.REPLY_OK


class Future(Generic[T]):
    """The eventual result of an endpoint call (or of ``stop()``): ``await`` it, or ``.get()``."""

    __slots__ = ()

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


class LoopFuture(Future[T]):
    """A result that arrives on the event loop the call was made from.

    It holds an ``asyncio.Future`` and is not a subclass of one, on purpose: a task awaiting a
    future of exactly that class takes asyncio's fast path, while a subclass costs each await
    several attribute lookups and a keyword call (2.6 us more per await in a tight loop here).
    It still behaves as an asyncio future (``asyncio.isfuture`` is true, done-callbacks receive
    this object), so ``gather``, ``wait``, ``wait_for``, ``as_completed`` and ``shield`` take it
    as it is.
    """

    __slots__ = ("_future", "__weakref__")
    _asyncio_future_blocking = False  # what asyncio.isfuture() looks for; the inner one blocks
    _future: asyncio.Future  # set by whoever creates it (no __init__: one frame less per call)

    # ``await fut`` awaits the inner future with no Python frame in between: the property
    # returns the inner future's own ``__await__``, which Python then calls.
    __await__ = property(operator.attrgetter("_future.__await__"))

    def get(self, timeout: float | None = None) -> T:
        future = self._future
        if future.done():
            return future.result()
        loop = future.get_loop()
        if _get_running_loop() is loop:
            raise RuntimeError("Future.get() would block the event loop that must deliver the "
                               "result; use `await` here")
        if not loop.is_running():
            raise RuntimeError("the event loop this call was made from is no longer running")

        async def wait() -> Any:
            return await future

        try:
            return asyncio.run_coroutine_threadsafe(wait(), loop).result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no result within {timeout} s") from None

    # -- the asyncio future protocol, delegated --------------------------------------------------
    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._future.get_loop()

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def result(self) -> T:
        return self._future.result()

    def exception(self) -> BaseException | None:
        return self._future.exception()

    def cancel(self, msg: Any = None) -> bool:
        return self._future.cancel(msg)

    def add_done_callback(self, fn: Callable, *, context: Any = None) -> None:
        self._future.add_done_callback(_Relay(self, fn), context=context)

    def remove_done_callback(self, fn: Callable) -> int:
        return self._future.remove_done_callback(fn)  # a _Relay equals its callback

    def set_result(self, value: Any) -> None:
        self._future.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        self._future.set_exception(exc)

    # asyncio.gather reads these two of a cancelled child (Python 3.9-3.13)
    def _make_cancelled_error(self) -> BaseException:
        return self._future._make_cancelled_error()  # type: ignore[attr-defined]

    @property
    def _cancel_message(self) -> Any:
        return getattr(self._future, "_cancel_message", None)

    def _fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._future!r}>"


class _Relay:
    """A done-callback of the inner future that calls the user's with the outer one (asyncio
    hands a callback the future it was added to: ``as_completed`` looks it up in a set). It
    compares equal to the callback, so ``remove_done_callback(fn)`` finds it."""

    __slots__ = ("_outer", "_fn")

    def __init__(self, outer: LoopFuture, fn: Callable):
        self._outer = outer
        self._fn = fn

    def __call__(self, _inner: asyncio.Future) -> None:
        self._fn(self._outer)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Relay):
            return self._fn == other._fn
        return self._fn == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:  # asyncio's logs name the callback
        return repr(self._fn)


class CallFuture(LoopFuture[T]):
    """One reply, decoded on arrival. ``call_future(loop)`` makes one."""

    __slots__ = ()

    def _reply(self, kind: int, meta: bytes, offset: int, buffers: list) -> None:
        future = self._future
        if future.done():
            return
        if kind == _REPLY_OK:  # the common case, decoded here without another call
            if offset == len(meta):
                future.set_result(None)  # an empty reply is None
                return
            try:
                value = _loads(memoryview(meta)[offset:], buffers=buffers)
            except Exception:
                pass  # decode_reply below says what went wrong
            else:
                future.set_result(value)
                return
        try:
            value = m.decode_reply(kind, meta, offset, buffers)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)


def call_future(loop: asyncio.AbstractEventLoop) -> CallFuture:
    future: CallFuture = CallFuture()
    future._future = loop.create_future()
    return future


class GatherFuture(LoopFuture[ValueMesh]):
    """One reply per actor of a mesh, gathered into a ValueMesh in rank order."""

    __slots__ = ("_sizes", "_values", "_left")

    def __init__(self, loop: asyncio.AbstractEventLoop, sizes: dict[str, int], count: int):
        self._future = loop.create_future()
        self._sizes = sizes
        self._values: list[Any] = [None] * count
        self._left = count
        if count == 0:
            self._future.set_result(ValueMesh(sizes, []))

    def slot(self, index: int) -> "_Slot":
        return _Slot(self, index)


class _Slot:
    """Where one actor's reply to a gathered call lands."""

    __slots__ = ("_owner", "_index")

    def __init__(self, owner: GatherFuture, index: int):
        self._owner = owner
        self._index = index

    def _reply(self, kind: int, meta: bytes, offset: int, buffers: list) -> None:
        owner = self._owner
        future = owner._future
        if future.done():
            return
        try:
            owner._values[self._index] = m.decode_reply(kind, meta, offset, buffers)
        except Exception as exc:
            future.set_exception(exc)
            return
        owner._left -= 1
        if owner._left == 0:
            future.set_result(ValueMesh(owner._sizes, owner._values))

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
