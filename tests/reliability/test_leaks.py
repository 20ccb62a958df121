"""1,000 spawn/call/stop cycles of a 2-process mesh leak nothing: file descriptors, threads,
shared-memory segments, child processes, and memory growth under a stated bound."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os

import pytest

from actors import Counter
from chaos import live_procs
from forge_core.actor import spawn_procs

CYCLES = int(os.environ.get("FORGE_LEAK_CYCLES", "1000"))
AT_ONCE = 4  # cycles in flight together, to keep the test near a minute on 2 cores
MEMORY_BOUND_MB = 20  # growth of this process's resident memory over the whole run


def _rss_mb() -> float:
    """Resident memory after handing free heap memory back to the system: glibc keeps freed
    blocks (here: thousands of 256 KiB messages) for reuse, which is not a leak and would
    otherwise make the figure depend on how the cycles happened to overlap."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as is
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _counts() -> dict[str, int]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(os.listdir("/proc/self/task")),
        "shm": len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0,
        "children": live_procs(),
    }


BLOB = os.urandom(256 << 10)  # large enough to travel out of band (shared memory on one host)


async def _cycle(i: int) -> None:
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("c", Counter, i)
    assert await mesh.get_value.call() == [i, i]
    assert await mesh.echo.call(BLOB) == [BLOB, BLOB]
    await procs.stop()


async def _cycles(count: int) -> None:
    for start in range(0, count, AT_ONCE):
        await asyncio.gather(*(_cycle(i) for i in range(start, min(count, start + AT_ONCE))))


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_spawn_call_stop_cycles_leak_nothing():
    await _cycles(20)  # warm up: thread pools, caches, the runtime itself
    await asyncio.sleep(0.5)
    gc.collect()
    before, rss_before = _counts(), _rss_mb()
    await _cycles(CYCLES)
    await asyncio.sleep(0.5)
    gc.collect()
    after, grown_mb = _counts(), _rss_mb() - rss_before
    print(f"\n{CYCLES} cycles: before {before}, after {after}, RSS +{grown_mb:.1f} MB")
    assert after["fds"] <= before["fds"]
    assert after["threads"] <= before["threads"]
    assert after["shm"] <= before["shm"]
    assert after["children"] == 0
    assert grown_mb < MEMORY_BOUND_MB
