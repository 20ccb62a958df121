"""What counting costs: trivial calls with the kernel's metrics on, beside off, in one run.

    python benchmarks/bench_observability.py [--rounds 7] [--calls 3000]

Two meshes of one process each, one started with ``FORGE_METRICS=0`` (its actors count
nothing), measured in alternating rounds so both see the same load on a shared machine:

- rtt: a trivial call awaited one at a time (median microseconds);
- pipelined: trivial calls with 1000 in flight (calls/s).

Prints the medians over rounds and the on/off ratio (the issue's budget: at most 5% slower).
Tracing is not measured: the kernel carries no trace context yet (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import uvloop

from forge_core.actor import spawn_procs
from forge_core.bench.calls import Bench, latencies_us, pipelined_calls_s


async def measure(rounds: int, calls: int) -> dict[str, dict[str, list[float]]]:
    meshes = {}
    procs = {}
    for label, env in (("on", {}), ("off", {"FORGE_METRICS": "0"})):
        procs[label] = spawn_procs({"procs": 1}, env=env, name=f"metrics-{label}")
        meshes[label] = procs[label].spawn("bench", Bench)
        await meshes[label].nop.call()
    figures: dict[str, dict[str, list[float]]] = {k: {"rtt_us": [], "pipelined": []}
                                                  for k in meshes}
    for i in range(rounds):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        for label in order:
            figures[label]["rtt_us"].append(
                statistics.median(await latencies_us(meshes[label], calls)))
            figures[label]["pipelined"].append(await pipelined_calls_s(meshes[label], calls * 3))
    for p in procs.values():
        await p.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    figures = uvloop.run(measure(args.rounds, args.calls))
    on, off = figures["on"], figures["off"]
    rtt_on, rtt_off = statistics.median(on["rtt_us"]), statistics.median(off["rtt_us"])
    p_on, p_off = statistics.median(on["pipelined"]), statistics.median(off["pipelined"])
    print(f"{'figure':<22}{'metrics off':>14}{'metrics on':>14}{'on/off':>10}")
    print(f"{'rtt (us, median)':<22}{rtt_off:>14.1f}{rtt_on:>14.1f}{rtt_on / rtt_off:>9.3f}x")
    print(f"{'pipelined (calls/s)':<22}{p_off:>14.0f}{p_on:>14.0f}{p_off / p_on:>9.3f}x slower")


if __name__ == "__main__":
    main()
