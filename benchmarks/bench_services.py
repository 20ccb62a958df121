"""Service benchmarks, each beside its baseline measured in the same run.

    python benchmarks/bench_services.py [--quick] [--json PATH]

Figures (medians over repeats):
  route      svc.<ep>.route() round trip vs a direct call_one() to the same replica (<= 1.2x)
  slow       3 replicas, one 250x slower: p50/p99 of every call under round_robin and under
             least_loaded, beside the p99 of a service of only the fast replicas
  recovery   kill -9 of a replica -> its replacement answering through the interface, beside a
             bare spawn (process + actor + first call) of the same class

Not measured: replicas of several processes, remote hosts, interfaces in other processes.

``forge bench`` runs route() and every installed routing policy (``forge_core.bench.services``,
shared with this script); the recovery figure is this script's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

import uvloop

from forge_core.actor import spawn_procs
from forge_core.bench.floors import median, percentile
from forge_core.bench.services import FAST_S, SLOW_S, Bench, under_load
from forge_core.bench.services import route_vs_call_one as _route_vs_call_one
from forge_core.service._controller import STABLE_AFTER


# -- route vs call_one ---------------------------------------------------------------------------
async def route_vs_call_one(calls: int, repeats: int) -> tuple[float, float]:
    svc = await Bench.as_service()
    await _route_vs_call_one(svc, 300)  # warm-up
    pairs = [await _route_vs_call_one(svc, calls) for _ in range(repeats)]
    await svc.shutdown()
    return median([r for r, _ in pairs]), median([d for _, d in pairs])


# -- one slow replica ----------------------------------------------------------------------------
async def slow_replica(seconds: float, clients: int) -> dict:
    out = {}
    for router in ("round_robin", "least_loaded"):
        svc = await Bench.options(num_replicas=3, router=router).as_service(slow_replica=0)
        await under_load(svc, 0.3, clients)  # warm up
        lat = await under_load(svc, seconds, clients)
        slow_share = svc.metrics()[0].completed / max(1, sum(m.completed for m in svc.metrics()))
        out[router] = {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                       "calls": len(lat), "share_to_slow": slow_share}
        await svc.shutdown()
    svc = await Bench.options(num_replicas=2).as_service()  # the fast replicas alone
    await under_load(svc, 0.3, clients)
    lat = await under_load(svc, seconds, clients)
    out["fast_only"] = {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                        "calls": len(lat)}
    await svc.shutdown()
    return out


# -- recovery ------------------------------------------------------------------------------------
async def recovery(repeats: int) -> tuple[float, float]:
    svc = await Bench.options(num_replicas=3, probe_interval=1.0).as_service()
    times, bare = [], []
    for turn in range(repeats):
        # A bare spawn of the same class, then a recovery, in turns: both see the same machine.
        start = time.perf_counter()
        procs = spawn_procs(per_host={"procs": 1})
        await procs.spawn("b", Bench).pid.call_one()
        bare.append((time.perf_counter() - start) * 1e3)
        await procs.stop()
        await asyncio.sleep(STABLE_AFTER + 0.1)  # a death after serving: restarted at once
        index = turn % 3
        old = (await svc.pid.fanout())[index]
        generation = svc.metrics()[index].generation
        start = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        while True:  # until the replacement answers a call routed to it
            row = svc.metrics()[index]  # local: polling costs the machine nothing
            if row.state == "healthy" and row.generation > generation:
                pids = await svc.pid.fanout()
                if len(pids) == 3 and old not in pids:
                    break
            await asyncio.sleep(0.001)
        times.append((time.perf_counter() - start) * 1e3)
    await svc.shutdown()
    return median(times), median(bare)


def run(quick: bool) -> dict:
    results: dict = {}

    async def main() -> None:
        routed, direct = await route_vs_call_one(500 if quick else 2000, 3 if quick else 7)
        results["route"] = {"route_us": routed, "call_one_us": direct, "ratio": routed / direct}
        print(f"route      route() {routed:8.1f} us   call_one() {direct:8.1f} us   "
              f"ratio {routed / direct:.3f} (target <= 1.2)", flush=True)

        slow = await slow_replica(1.5 if quick else 4.0, clients=12)
        results["slow"] = slow
        for name in ("round_robin", "least_loaded", "fast_only"):
            row = slow[name]
            share = f"   share to slow {row['share_to_slow']:.1%}" if "share_to_slow" in row else ""
            print(f"slow       {name:<13} p50 {row['p50_ms']:7.1f} ms   p99 {row['p99_ms']:7.1f} ms"
                  f"   calls {row['calls']:6d}{share}", flush=True)

        recover, bare = await recovery(3 if quick else 5)
        results["recovery"] = {"kill_to_serving_ms": recover, "bare_spawn_ms": bare}
        print(f"recovery   kill -9 -> replacement serving {recover:7.1f} ms   "
              f"bare spawn {bare:7.1f} ms", flush=True)

    uvloop.run(main())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    logging.getLogger("forge_core.service").setLevel(logging.ERROR)  # restarts are expected here
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; slow replica {SLOW_S * 1e3:g}"
          f" ms vs {FAST_S * 1e3:g} ms per call", flush=True)
    results = run(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
