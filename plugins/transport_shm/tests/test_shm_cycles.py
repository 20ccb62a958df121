"""Spawn/stop cycles, each moving buffers through shared memory both ways, leave nothing
behind: no process, no /dev/shm entry, no segment, descriptor or socket.

200 cycles by default (``FORGE_TEST_CYCLES``): the 1,000-cycle run of the suite is
``tests/reliability/test_leaks.py``, which moves buffers through shared memory too."""

from __future__ import annotations

import asyncio
import os

import pytest

from forge_core.actor import spawn_procs
from shm_actors import Store
from shm_probes import alive, dev_shm, eventually, memfd_fds, memfd_mappings

CYCLES = int(os.environ.get("FORGE_TEST_CYCLES", "200"))
AT_ONCE = 4  # meshes in flight: process start-up is CPU-bound, two cores here


def _open_handles() -> int:
    """Sockets and pipes this process holds (what connections are made of)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith(("socket:", "pipe:"))
        except OSError:
            pass
    return count


def _listening_shm_sockets(pids: set[int]) -> list[str]:
    with open("/proc/net/unix") as f:
        names = [line.split()[-1] for line in f if "@forge-shm-" in line]
    return [n for n in names if int(n.split("-")[2]) in pids]


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_spawn_stop_cycles_leave_nothing_behind():
    shm_before, maps_before, fds_before = dev_shm(), memfd_mappings(), memfd_fds()
    handles_before = _open_handles()
    blob = os.urandom(256 << 10)  # above the shm threshold: a segment each way
    pids: set[int] = set()

    async def cycles(count: int) -> None:
        for _ in range(count):
            procs = spawn_procs(per_host={"procs": 1})
            mesh = procs.spawn("store", Store)
            pids.add(await mesh.pid.call_one())
            assert await mesh.echo.call_one(blob) == blob
            await procs.stop()

    await asyncio.gather(*(cycles(CYCLES // AT_ONCE) for _ in range(AT_ONCE)))
    assert len(pids) == CYCLES
    await asyncio.sleep(0.5)  # the last end-of-files reach this loop
    assert eventually(lambda: not [p for p in pids if alive(p)], 20)
    assert dev_shm() <= shm_before
    assert eventually(lambda: memfd_mappings() <= maps_before and memfd_fds() <= fds_before)
    assert _listening_shm_sockets(pids) == []
    # A few handles may be new for good (a channel to the home loop, executor pipes); one per
    # cycle would be a leak.
    assert _open_handles() - handles_before < 20
