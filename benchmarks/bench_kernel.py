"""Kernel benchmarks, each beside its physical floor measured in the same run.

    python benchmarks/bench_kernel.py [--quick] [--json PATH]

The measurements live in ``forge_core.bench`` (``forge bench`` runs them per transport, with
repeats, a chart and JSON); this script keeps the kernel's own figures and start-up time.

Figures (medians over repeats; ratios are ours / floor, lower is better for times; the call
figures and their floors alternate over several rounds, whose own ratios are shown as a range):
  rtt        trivial cross-process call awaited one at a time vs raw uvloop TCP ping-pong
  pipelined  trivial calls with many in flight (calls/s)
  gather4    call() on a 4-process mesh vs raw uvloop gather from 4 echo processes
  tensor     256 MiB float32 tensor as an argument vs raw TCP bulk transfer (GB/s)
  startup    the first 4-process mesh of a fresh process (the fork server's start included;
             the process's own runtime already up) spawned and answering its first call,
             vs 4 bare Pythons started and answering
  startup_warm  a later 4-process mesh of the same process (the fork server is up)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import uvloop

from forge_core.actor import spawn_procs
from forge_core.bench import floors as floor
from forge_core.bench.calls import Bench, gather_us, latencies_us, pipelined_calls_s, tensor_gbps


_COLD_START = r"""
import time, uvloop
from forge_core._runtime import Runtime
from forge_core.actor import spawn_procs
from forge_core.bench.calls import Bench

Runtime.get()  # this process's own listeners, off the clock as in the warm figure

async def once():
    start = time.perf_counter()
    procs = spawn_procs(per_host={"procs": 4})
    await procs.spawn("b", Bench).nop.call()
    elapsed = time.perf_counter() - start
    await procs.stop()
    return elapsed

print(uvloop.run(once()))
"""


def _startup_cold(repeats: int) -> list[float]:
    """The first mesh of a fresh process: the fork server starts too."""
    return [float(subprocess.run([sys.executable, "-c", _COLD_START], capture_output=True,
                                 text=True, check=True, timeout=120).stdout)
            for _ in range(repeats)]


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
    rounds = 3 if quick else 7
    n = (1000 if quick else 5000) // rounds
    results: dict = {}

    def row(name, ours, base, unit, higher_is_better=False, spread=None):
        ratio = ours / base if base else float("nan")
        results[name] = {"ours": ours, "floor": base, "unit": unit, "ratio": ratio}
        better = "higher is better" if higher_is_better else "lower is better"
        extra = ""
        if spread:
            results[name]["round_ratios"] = spread
            extra = f", rounds {min(spread):.2f}..{max(spread):.2f}"
        print(f"{name:<12} ours {ours:>10.1f} {unit:<7} floor {base:>10.1f} {unit:<7} "
              f"ratio {ratio:5.2f} ({better}{extra})", flush=True)

    Runtime_warm = spawn_procs(per_host={"procs": 1})  # start the runtime once, off the clock
    Runtime_warm.stop().get(timeout=10)

    async def calls(rig: floor.Rig):
        # Ours and the floor alternate, round by round: a burst of load on this shared machine
        # lands on both, instead of skewing the ratio.
        procs = spawn_procs(per_host={"procs": 4})
        mesh = procs.spawn("b", Bench)
        one = mesh.slice(procs=0)
        samples: dict[str, list[float]] = {k: [] for k in ("rtt", "rtt_floor", "gather",
                                                           "gather_floor")}
        ratios: dict[str, list[float]] = {"rtt": [], "gather": []}
        for _ in range(rounds):
            for name, ours, base in (
                    ("rtt", lambda: latencies_us(one, n),
                     lambda: asyncio.to_thread(rig.ping_pong_us, "tcp", n)),
                    ("gather", lambda: gather_us(mesh, n // 2),
                     lambda: asyncio.to_thread(rig.gather_us, "tcp", 4, n // 2))):
                mine, theirs = await ours(), await base()
                samples[name] += mine
                samples[f"{name}_floor"] += theirs
                ratios[name].append(floor.median(mine) / floor.median(theirs))
        pipelined = await pipelined_calls_s(one, 20000 if quick else 100000)
        tensor = None
        try:
            import torch
        except ImportError:
            pass
        else:
            tensor = floor.median(await tensor_gbps(one, torch.rand(64 << 20), 3 if quick else 5))
        await procs.stop()
        return samples, ratios, pipelined, tensor

    with floor.Rig() as rig:
        samples, ratios, pipelined, tensor = uvloop.run(calls(rig))
    med = {k: floor.median(v) for k, v in samples.items()}
    row("rtt", med["rtt"], med["rtt_floor"], "us", spread=ratios["rtt"])
    results["pipelined"] = {"ours": pipelined, "unit": "calls/s"}
    print(f"{'pipelined':<12} ours {pipelined:>10.0f} calls/s (target >= 30,000)", flush=True)
    row("gather4", med["gather"], med["gather_floor"], "us", spread=ratios["gather"])
    if tensor is not None:
        row("tensor", tensor, floor.median(floor.bulk_gbps(256 << 20, 3 if quick else 5)),
            "GB/s", higher_is_better=True)
    repeats = 3 if quick else 7
    bare = floor.median(_startup_bare(repeats)) * 1e3
    row("startup", floor.median(_startup_cold(repeats)) * 1e3, bare, "ms")
    row("startup_warm", floor.median(_startup_forge(repeats)) * 1e3, bare, "ms")
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
