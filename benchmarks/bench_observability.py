"""What counting costs: trivial calls with the kernel's metrics on, beside off, in one run.

    python benchmarks/bench_observability.py [--rounds 7] [--calls 3000]

Two meshes of one process each, one started with ``FORGE_METRICS=0`` (its actors count
nothing), measured in alternating rounds so both see the same load on a shared machine:

- rtt: a trivial call awaited one at a time (median microseconds);
- pipelined: trivial calls with 1000 in flight (calls/s).

A third figure, "traced": the metrics-on mesh with OpenTelemetry tracing on (spans written
to a file in the temporary folder, as ``FORGE_TRACE_FILE`` does), a client and a server span
per call.

Prints the medians over rounds and the ratios (the budget for metrics: at most 5% slower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import uvloop

from forge_core import _tracing
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
                                                  for k in ("on", "off", "traced")}
    # On and off alternate; the traced rounds come after (their span writing would load the
    # machine under the others).
    plan = [("on", "off") if i % 2 == 0 else ("off", "on") for i in range(rounds)]
    plan += [("traced",)] * max(rounds // 2, 1)
    for order in plan:
        for label in order:
            mesh = meshes["on" if label == "traced" else label]
            _tracing.enabled = label == "traced"  # the client decides: traced calls or plain
            figures[label]["rtt_us"].append(statistics.median(await latencies_us(mesh, calls)))
            figures[label]["pipelined"].append(await pipelined_calls_s(mesh, calls * 3))
            _tracing.enabled = False
    for p in procs.values():
        await p.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    spans = os.path.join(tempfile.mkdtemp(prefix="forge-bench-spans-"), "spans.jsonl")
    os.environ["FORGE_TRACE_FILE"] = spans  # the procs read it when they start
    _tracing.setup()
    _tracing.enabled = False
    figures = uvloop.run(measure(args.rounds, args.calls))
    on, off = figures["on"], figures["off"]
    rtt_on, rtt_off = statistics.median(on["rtt_us"]), statistics.median(off["rtt_us"])
    p_on, p_off = statistics.median(on["pipelined"]), statistics.median(off["pipelined"])
    print(f"{'figure':<22}{'metrics off':>14}{'metrics on':>14}{'on/off':>10}")
    print(f"{'rtt (us, median)':<22}{rtt_off:>14.1f}{rtt_on:>14.1f}{rtt_on / rtt_off:>9.3f}x")
    print(f"{'pipelined (calls/s)':<22}{p_off:>14.0f}{p_on:>14.0f}{p_off / p_on:>9.3f}x slower")
    traced = figures["traced"]
    rtt_t, p_t = statistics.median(traced["rtt_us"]), statistics.median(traced["pipelined"])
    print(f"tracing on: rtt {rtt_t:.1f} us ({rtt_t / rtt_off:.2f}x metrics off), pipelined "
          f"{p_t:.0f} calls/s ({p_off / p_t:.2f}x slower); spans in {spans}")


if __name__ == "__main__":
    main()
