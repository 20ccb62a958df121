"""Load plus kill -9, for the fault and soak tests: keep calls in flight through a service while
killing one replica at a time, and count what happened to every call and every kill."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

CALL_DEADLINE = 30.0  # a call still unanswered after this counts as lost (nothing may hang)
RECOVERY_LIMIT = 60.0  # a kill not recovered from within this fails the run


@dataclass
class Tally:
    calls: int = 0
    lost: list[str] = field(default_factory=list)  # what each lost call raised
    latencies: list[float] = field(default_factory=list)  # seconds, every answered call
    recoveries: list[float] = field(default_factory=list)  # seconds from kill to 3/3 healthy
    retried: int = 0  # calls whose first replica died under them (then retried elsewhere)

    @property
    def kills(self) -> int:
        return len(self.recoveries)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self, seconds: float) -> str:
        rec = self.recoveries or [0.0]
        return (f"{seconds:.0f} s: {self.kills} kill -9s, {self.calls} calls, "
                f"{len(self.lost)} lost, {self.retried} retried after a death; recovery "
                f"mean {sum(rec) / len(rec):.2f} s, max {max(rec):.2f} s; latency p50 "
                f"{self.percentile(0.5) * 1e3:.1f} ms, p99 {self.percentile(0.99) * 1e3:.1f} ms, "
                f"max {max(self.latencies or [0]) * 1e3:.0f} ms; recovery per kill (s): "
                f"{' '.join(f'{r:.2f}' for r in self.recoveries)}")


def healthy(svc: Any, generations: int | None = None) -> bool:
    """Every replica serving (and, if given, the generations add up: restarts finished)."""
    rows = svc.metrics()
    return all(r.state == "healthy" for r in rows) and (
        generations is None or sum(r.generation for r in rows) == generations)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.01)


async def keep_calling(call: Callable[[], Awaitable[Any]], stop_at: float, tally: Tally) -> None:
    """One caller: a call, then the next, until ``stop_at``. Anything but a result is a loss."""
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        tally.calls += 1
        try:
            await asyncio.wait_for(call(), CALL_DEADLINE)
        except Exception as exc:
            tally.lost.append(repr(exc)[:300])
        else:
            tally.latencies.append(time.perf_counter() - start)


async def kill_periodically(svc: Any, stop_at: float, every: tuple[float, float],
                            rng: random.Random, tally: Tally) -> None:
    """Every ``every`` seconds (drawn at random), kill -9 a random replica and time how long the
    service takes to be whole again. One kill at a time: each one hits a healthy service, so
    "at most one retry per call" is what is being tested, not two deaths under one call."""
    while True:
        await asyncio.sleep(rng.uniform(*every))
        if time.monotonic() >= stop_at:
            return
        generations = sum(r.generation for r in svc.metrics())
        victim = rng.choice(await svc.pid.fanout())
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: healthy(svc, generations + 1), RECOVERY_LIMIT,
                         f"recovery from kill -9 of pid {victim}")
        tally.recoveries.append(time.monotonic() - killed)


async def run(svc: Any, call: Callable[[], Awaitable[Any]], seconds: float, in_flight: int,
              every: tuple[float, float], seed: int) -> Tally:
    """``in_flight`` callers of ``call`` for ``seconds``, with kills every ``every`` seconds."""
    tally = Tally()
    stop_at = time.monotonic() + seconds
    generations = sum(r.generation for r in svc.metrics())
    await asyncio.gather(*(keep_calling(call, stop_at, tally) for _ in range(in_flight)),
                         kill_periodically(svc, stop_at, every, random.Random(seed), tally))
    # Every kill was followed by exactly one restart, and the service ends whole.
    await wait_until(lambda: healthy(svc, generations + tally.kills), RECOVERY_LIMIT,
                     "every replica healthy at the end")
    tally.retried = sum(r.failed for r in svc.metrics())
    return tally


def live_procs() -> int:
    """Live Forge procs this process started: its own children and the fork server's, not
    counting the fork server itself (it stays for the next spawn, like the runtime thread)."""
    from forge_core._procs import fork_server_pids

    servers = set(fork_server_pids())
    parents = {os.getpid(), *servers}
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in servers:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        count += int(fields[1]) in parents and fields[0] not in ("Z", "X")
    return count
