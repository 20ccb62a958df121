"""Kernel benchmarks, each beside its physical floor measured in the same run.

    python benchmarks/bench_kernel.py [--quick] [--json PATH]

Figures (medians over repeats; ratios are ours / floor, lower is better for times):
  rtt        trivial cross-process call awaited one at a time vs raw uvloop TCP ping-pong
  pipelined  trivial calls with many in flight (calls/s)
  gather4    call() on a 4-process mesh vs raw uvloop gather from 4 echo processes
  tensor     256 MiB float32 tensor as an argument vs raw TCP bulk transfer (GB/s)
  startup    4-process mesh spawned and answering its first call vs 4 bare Pythons
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import baselines as floor  # noqa: E402
import uvloop  # noqa: E402

from forge_core.actor import Actor, endpoint, spawn_procs  # noqa: E402


class Bench(Actor):
    @endpoint
    def nop(self) -> None:
        return None

    @endpoint
    def nbytes(self, tensor) -> int:
        return tensor.numel() * tensor.element_size()


async def _rtt(mesh, iterations: int) -> list[float]:
    for _ in range(200):
        await mesh.nop.call_one()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        await mesh.nop.call_one()
        times.append((time.perf_counter() - start) * 1e6)
    return times


async def _pipelined(mesh, total: int, window: int = 1000) -> float:
    await asyncio.gather(*(mesh.nop.call_one() for _ in range(window)))
    start = time.perf_counter()
    for _ in range(total // window):
        await asyncio.gather(*(mesh.nop.call_one() for _ in range(window)))
    return total / (time.perf_counter() - start)


async def _gather(mesh, iterations: int) -> list[float]:
    for _ in range(100):
        await mesh.nop.call()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        await mesh.nop.call()
        times.append((time.perf_counter() - start) * 1e6)
    return times


async def _tensor(mesh, nbytes: int, repeats: int) -> list[float]:
    import torch

    tensor = torch.rand(nbytes // 4)
    await mesh.nbytes.call_one(tensor)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        assert await mesh.nbytes.call_one(tensor) == nbytes
        rates.append(nbytes / (time.perf_counter() - start) / 1e9)
    return rates


def _startup_forge(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        async def once():
            start = time.perf_counter()
            procs = spawn_procs(per_host={"procs": 4})
            mesh = procs.spawn("b", Bench)
            await mesh.nop.call()
            elapsed = time.perf_counter() - start
            await procs.stop()
            return elapsed

        times.append(uvloop.run(once()))
    return times


def _startup_bare(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", "print(1)"], stdout=subprocess.PIPE)
                 for _ in range(4)]
        for p in procs:
            p.stdout.read()
            p.wait()
        times.append(time.perf_counter() - start)
    return times


def run(quick: bool) -> dict:
    n = 1000 if quick else 5000
    results: dict = {}

    def row(name, ours, base, unit, higher_is_better=False):
        ratio = ours / base if base else float("nan")
        results[name] = {"ours": ours, "floor": base, "unit": unit, "ratio": ratio}
        better = "higher is better" if higher_is_better else "lower is better"
        print(f"{name:<10} ours {ours:>10.1f} {unit:<7} floor {base:>10.1f} {unit:<7} "
              f"ratio {ratio:5.2f} ({better})", flush=True)

    Runtime_warm = spawn_procs(per_host={"procs": 1})  # start the runtime once, off the clock
    Runtime_warm.stop().get(timeout=10)

    async def calls():
        procs = spawn_procs(per_host={"procs": 4})
        mesh = procs.spawn("b", Bench)
        one = mesh.slice(procs=0)
        rtt = floor.median(await _rtt(one, n))
        pipelined = await _pipelined(one, 20000 if quick else 100000)
        gather = floor.median(await _gather(mesh, n // 2))
        tensor = None
        try:
            import torch  # noqa: F401

            tensor = floor.median(await _tensor(one, 256 << 20, 3 if quick else 5))
        except ImportError:
            pass
        await procs.stop()
        return rtt, pipelined, gather, tensor

    rtt, pipelined, gather, tensor = uvloop.run(calls())
    row("rtt", rtt, floor.median(floor.ping_pong_us("tcp", n)), "us")
    results["pipelined"] = {"ours": pipelined, "unit": "calls/s"}
    print(f"{'pipelined':<10} ours {pipelined:>10.0f} calls/s (target >= 30,000)", flush=True)
    row("gather4", gather, floor.median(floor.gather_us(4, n // 2)), "us")
    if tensor is not None:
        row("tensor", tensor, floor.median(floor.bulk_gbps(256 << 20, 3 if quick else 5)),
            "GB/s", higher_is_better=True)
    repeats = 3 if quick else 7
    row("startup", floor.median(_startup_forge(repeats)) * 1e3,
        floor.median(_startup_bare(repeats)) * 1e3, "ms")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores", flush=True)
    results = run(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
