"""Keeping an event loop awake for a moment after traffic, so the next frame is seen at once.

Measured (p50 round trip of a 64-byte ping-pong between two uvloop processes on an idle
16-core host, ``benchmarks/bench_shm.py``): Unix socket 25 us, pipe pair 20.5 us, eventfd
doorbell over a shared slot 21.6 us, pipe pair with the loop kept awake 10.4 us. Most of a
small frame's latency is not the syscall but the receiver's wake-up from ``epoll_wait``: the
scheduler has to put a sleeping process back on a CPU. A loop that has a callback ready
polls with a zero timeout instead of sleeping, so a frame that arrives then is handled on the
next iteration. After each frame sent or received we therefore keep the loop polling for
``FORGE_SHM_SPIN_US`` microseconds (default 50): a caller awaiting a reply, or an actor about
to get its next call, sees it without a wake-up. When traffic stops, the loop goes back to
sleeping after that window, so an idle process burns nothing. ``FORGE_SHM_SPIN_US=0`` turns
this off.

Spinning only pays while a CPU is free: on a busy machine the spinner takes the CPU its peer
needs to answer (measured: 130 us instead of 20 us per round trip with one CPU-bound neighbour
on two cores). Each tick therefore yields the CPU (``sched_yield``); if that took long, someone
else was waiting for this CPU, and the loop stops spinning for a while (``_COOL_DOWN``).
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref

SPIN_ENV = "FORGE_SHM_SPIN_US"
_perf_counter = time.perf_counter
_sched_yield = getattr(os, "sched_yield", lambda: None)
_CONTENDED = 30e-6  # a yield this long means another task ran on this CPU meanwhile
_COOL_DOWN = 0.05


def spin_window() -> float:
    try:
        return max(0.0, float(os.environ.get(SPIN_ENV, "50"))) * 1e-6
    except ValueError:
        return 50e-6


class HotLoop:
    """One per event loop, shared by every connection on it."""

    __slots__ = ("_loop", "_window", "_until", "_active", "_cool_until", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float):
        self._loop = weakref.ref(loop)  # the registry below must not keep loops alive
        self._window = window
        self._until = 0.0
        self._active = False
        self._cool_until = 0.0

    def poke(self) -> None:
        """Traffic just happened: stay awake for another window."""
        if not self._window:
            return
        now = _perf_counter()
        self._until = now + self._window
        if not self._active and now >= self._cool_until:
            loop = self._loop()
            if loop is not None and not loop.is_closed():
                self._active = True
                loop.call_soon(self._tick)

    def _tick(self) -> None:
        before = _perf_counter()
        _sched_yield()
        now = _perf_counter()
        if now - before > _CONTENDED:
            self._cool_until = now + _COOL_DOWN
        elif now < self._until:
            loop = self._loop()
            if loop is not None:
                loop.call_soon(self._tick)
                return
        self._active = False


_loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HotLoop]" = (
    weakref.WeakKeyDictionary())


def hot_loop(loop: asyncio.AbstractEventLoop) -> HotLoop:
    hot = _loops.get(loop)
    if hot is None:
        hot = _loops[loop] = HotLoop(loop, spin_window())
    return hot
