"""What a process counts about its actors: per endpoint calls, errors, latency, in flight.

The counters sit on the hot path of every call, so they are plain attributes and a short
list of histogram buckets, bumped by the thread that runs the call (the home loop): no locks,
no library objects. Readers (the introspection thread, see ``_introspect``) copy them; a copy
taken in the middle of an update is off by one call at most, which a monitor can live with.
Exporting (Prometheus, JSONL, the dashboard) happens in the client, from those copies.
"""

from __future__ import annotations

import bisect
import os
import time
import traceback
from collections import deque
from typing import Any

# Upper bounds of the latency buckets, in seconds (Prometheus' default ladder, widened at
# both ends: a trivial call takes tens of microseconds, a generate call seconds).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

def counting() -> bool:
    """Read when an actor starts (a fork server imports this module long before)."""
    return os.environ.get("FORGE_METRICS", "1") != "0"


_now = time.perf_counter
_bucket_of = bisect.bisect_left


class EndpointStats:
    """One endpoint of one actor: counts and a latency histogram."""

    __slots__ = ("calls", "errors", "in_flight", "seconds", "buckets")

    def __init__(self) -> None:
        self.calls = 0  # finished calls, errors included
        self.errors = 0
        self.in_flight = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf

    def finished(self, started: float, failed: bool) -> None:
        took = _now() - started
        self.calls += 1
        self.seconds += took
        self.buckets[_bucket_of(BUCKETS, took)] += 1
        if failed:
            self.errors += 1

    def copy(self) -> dict[str, Any]:
        return {"calls": self.calls, "errors": self.errors, "in_flight": self.in_flight,
                "seconds": self.seconds, "buckets": list(self.buckets)}


class Running:
    """A call that has started and not finished: what ``forge doctor`` shows."""

    __slots__ = ("endpoint", "since", "task")

    def __init__(self, endpoint: str, since: float, task: Any = None):
        self.endpoint = endpoint
        self.since = since  # wall-clock seconds (time.time()), so other processes can read it
        self.task = task  # the asyncio task of an async call; None for a sync one


# Errors an endpoint raised recently, with their tracebacks, newest last (for the dashboard).
recent_errors: deque = deque(maxlen=20)


def note_error(actor: str, endpoint: str, rank: int, exc: BaseException) -> None:
    recent_errors.append({
        "time": time.time(), "actor": actor, "endpoint": endpoint, "rank": rank,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))})


# ``record_metric`` values of this process: name -> [reduce, sum, count, min, max, last],
# and the latest values with their times (what the dashboard plots).
user_metrics: dict[str, list] = {}
series: dict[str, deque] = {}

REDUCTIONS = ("sum", "mean", "max", "min")


def record(name: str, value: float, reduce: str) -> None:
    entry = user_metrics.get(name)
    value = float(value)
    points = series.get(name)
    if points is None:
        points = series[name] = deque(maxlen=2000)
    points.append((time.time(), value))
    if entry is None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"record_metric({name!r}, ..., reduce={reduce!r}): reduce is one "
                             f"of {', '.join(REDUCTIONS)}")
        user_metrics[name] = [reduce, value, 1, value, value, value]
        return
    if reduce != entry[0]:
        raise ValueError(f"record_metric({name!r}): recorded with reduce={entry[0]!r} before, "
                         f"now {reduce!r}; one metric has one reduction")
    entry[1] += value
    entry[2] += 1
    entry[3] = min(entry[3], value)
    entry[4] = max(entry[4], value)
    entry[5] = value
