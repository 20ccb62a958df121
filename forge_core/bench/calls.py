"""Actor-call measurements, over whatever transport carries the mesh they are given.

Each function runs on the caller's event loop and returns raw samples; the suite (and the
scripts in ``benchmarks/``) turn them into medians beside a floor.
"""

from __future__ import annotations

import asyncio
import time

from ..actor import Actor, endpoint


class Bench(Actor):
    """The trivial actor every call figure is measured against."""

    @endpoint
    def nop(self) -> None:
        return None

    @endpoint
    def nbytes(self, tensor) -> int:
        # The tensor is usable here; reading it (a sum) would add torch's compute, which on a
        # busy 2-core machine costs more than moving 1 MiB and is no transport's doing.
        return tensor.numel() * tensor.element_size()

    @endpoint
    def total(self, tensor) -> float:
        """Reads every byte: for a figure that charges a lazily mapped buffer's first read."""
        return float(tensor.sum())


async def _times_us(call, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1e6)
    return times


async def latencies_us(mesh, iterations: int, warmup: int = 200) -> list[float]:
    """Round trips of a trivial call awaited one at a time, in microseconds."""
    return await _times_us(mesh.nop.call_one, iterations, warmup)


async def pipelined_calls_s(mesh, total: int, window: int = 1000) -> float:
    """Trivial calls per second with ``window`` of them in flight at a time."""
    window = min(window, total)
    await asyncio.gather(*(mesh.nop.call_one() for _ in range(window)))
    start = time.perf_counter()
    for _ in range(total // window):
        await asyncio.gather(*(mesh.nop.call_one() for _ in range(window)))
    return (total // window) * window / (time.perf_counter() - start)


async def gather_us(mesh, iterations: int, warmup: int = 100) -> list[float]:
    """``call()`` on every actor of the mesh, one at a time: times in microseconds."""
    return await _times_us(mesh.nop.call, iterations, warmup)


async def tensor_gbps(mesh, tensor, repeats: int, warmup: int = 1,
                      endpoint: str = "nbytes") -> list[float]:
    """A tensor as the argument of a call, in GB/s per call (until the reply is back);
    ``endpoint="total"`` has the receiver read it too."""
    nbytes = tensor.numel() * tensor.element_size()
    call = getattr(mesh, endpoint).call_one
    for _ in range(warmup):  # pools, mappings and page faults, off the clock
        await call(tensor)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        await call(tensor)
        rates.append(nbytes / (time.perf_counter() - start) / 1e9)
    return rates
