"""``forge bench``'s measurements under pytest-benchmark, one group per figure, so that the
transports of a figure sit side by side in pytest-benchmark's table:

    pytest benchmarks/ --benchmark-only                     # the defaults of `forge bench`
    FORGE_BENCH_QUICK=1 pytest benchmarks/ --benchmark-only  # those of `forge bench --quick`

pytest-benchmark times each round of a step (e.g. 2,000 calls one at a time), so its columns
compare transports within a group; the figure itself (p50, GB/s, ...) and the floor measured
beside it are in each row's ``extra_info`` (``--benchmark-json`` keeps them). The normal test
run does not collect this folder.
"""

from __future__ import annotations

import os

import pytest

from forge_core.bench import weights
from forge_core.bench.options import (
    MESH_PROCS, SOCKET_KIND, TRANSPORTS, WEIGHT_BACKENDS, Options, format_size,
)
from forge_core.bench.suite import Suite, routing_policies

OPTIONS = Options.quick_defaults() if os.environ.get("FORGE_BENCH_QUICK") else Options()
OPTIONS.progress = False
CROSS = [t for t in TRANSPORTS if t != "in-process"]


@pytest.fixture(scope="module")
def bench():
    measured = Suite(OPTIONS)
    measured.start_meshes()
    yield measured
    measured.close()


def record(benchmark, bench: Suite, section: str, name: str, transport: str) -> None:
    figure = bench.samples.figure(section, name, transport)
    benchmark.extra_info.update({
        "figure": name, "unit": figure.unit, "median": figure.median, "min": figure.low,
        "max": figure.high, "repeats": figure.repeats, "floor": figure.floor,
        "floor_median": figure.floor_median, "x_floor": figure.ratio})


def rounds(benchmark, step, *args) -> None:
    benchmark.pedantic(step, args=args, rounds=OPTIONS.repeat, iterations=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rtt(benchmark, bench, transport):
    benchmark.group = f"rtt: {OPTIONS.rtt_calls} trivial calls, one at a time"
    if transport in SOCKET_KIND:
        for _ in range(OPTIONS.repeat):
            bench.ping_pong_floor(SOCKET_KIND[transport])
    rounds(benchmark, bench.latency, transport)
    record(benchmark, bench, "latency", "rtt p50", transport)
    benchmark.extra_info["p99"] = bench.samples.figure("latency", "rtt p99", transport).median


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pipelined(benchmark, bench, transport):
    benchmark.group = f"pipelined: {OPTIONS.pipelined_calls} trivial calls, 1000 in flight"
    rounds(benchmark, bench.pipelined, transport)
    record(benchmark, bench, "pipelined", "pipelined", transport)


@pytest.mark.parametrize("transport", CROSS)
def test_mesh_call(benchmark, bench, transport):
    benchmark.group = f"call() on {MESH_PROCS} processes: {OPTIONS.gather_calls} calls"
    for _ in range(OPTIONS.repeat):
        bench.gather_floor(SOCKET_KIND[transport])
    rounds(benchmark, bench.mesh_call, transport)
    record(benchmark, bench, "mesh", f"call() {MESH_PROCS} procs", transport)


@pytest.mark.parametrize("size", OPTIONS.sizes, ids=format_size)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tensor(benchmark, bench, transport, size):
    benchmark.group = f"tensor argument, {format_size(size)}"
    for _ in range(OPTIONS.repeat):
        bench.bulk_floors(size)
    rounds(benchmark, bench.tensor, transport, size)
    record(benchmark, bench, "tensor", f"tensor {format_size(size)}", transport)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", WEIGHT_BACKENDS)
def test_weight_sync(benchmark, bench, backend):
    benchmark.group = f"weight sync, {format_size(OPTIONS.weights_bytes)} to 2 replicas"
    run, skipped = weights.plan([backend])
    if not run:
        pytest.skip(skipped[0])
    # One round: the backend's own repeats and floor run inside it (bench_weights.py).
    benchmark.pedantic(bench.weights, args=(backend,), rounds=1, iterations=1)
    figure = next(f for f in bench.extra if f.transport == backend and f.unit == "GB/s")
    benchmark.extra_info.update({"gbps_per_replica": figure.median, "min": figure.low,
                                 "max": figure.high, "repeats": figure.repeats,
                                 "floor": figure.floor, "floor_median": figure.floor_median,
                                 "x_floor": figure.ratio})


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["2 fast replicas (floor)", *sorted(routing_policies())])
def test_routing_one_slow_replica(benchmark, bench, policy):
    benchmark.group = "routing: 3 replicas, one 250x slower (a round is the whole run)"
    if policy.startswith("2 fast"):
        benchmark.pedantic(bench.fast_replicas, rounds=1, iterations=1)
        record(benchmark, bench, "services", "route() p50", "round_robin")
        return
    benchmark.pedantic(bench.slow_replica, args=(policy,), rounds=1, iterations=1)
    record(benchmark, bench, "services", "p99, 1 of 3 replicas slow", policy)
