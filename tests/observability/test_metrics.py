"""The Prometheus endpoint (FORGE_METRICS_PORT) has per-endpoint call counters and latency
histograms that agree with the calls made, replicas' calls included; record_metric values
are reduced across ranks; the endpoint listens on loopback and says so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from forge_core.actor import spawn_procs
from forge_core.observe import collect

from obs_actors import Worker

pytestmark = pytest.mark.timeout(90)

HERE = os.path.dirname(__file__)

CLIENT = textwrap.dedent("""
    import asyncio, sys, urllib.request
    sys.path.insert(0, {here!r})
    from forge_core.actor import spawn_procs
    from obs_actors import Echo, Worker

    async def main():
        procs = spawn_procs({{"procs": 2}}, name="workers")
        workers = procs.spawn("worker", Worker)
        for _ in range(7):
            await workers.ping.call()                      # 7 calls on each of 2 ranks
        for _ in range(3):
            try:
                await workers.slice(procs=0).fail.call_one()
            except Exception:
                pass
        echo = await Echo.options(num_replicas=2).as_service()
        for i in range(10):
            await echo.echo.route(i)                       # 10 calls over 2 replicas
        text = urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read()
        print(text.decode())
        await echo.shutdown()
        await procs.stop()

    asyncio.run(main())
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name):]] = float(value)
    return out


def test_the_metrics_endpoint_counts_every_call_per_endpoint():
    port = free_port()
    env = {**os.environ, "FORGE_METRICS_PORT": str(port)}
    done = subprocess.run([sys.executable, "-c", CLIENT.format(here=HERE, port=port)], env=env,
                          capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    calls = samples(text, "forge_calls_total")
    pings = {k: v for k, v in calls.items() if 'endpoint="ping"' in k}
    assert sorted(pings.values()) == [7.0, 7.0], calls
    assert sum(v for k, v in calls.items() if 'endpoint="fail"' in k) == 3
    errors = samples(text, "forge_call_errors_total")
    assert sum(v for k, v in errors.items() if 'endpoint="fail"' in k) == 3
    echoes = {k: v for k, v in calls.items() if 'endpoint="echo"' in k}
    assert len(echoes) == 2 and sum(echoes.values()) == 10, echoes  # both replicas served
    assert all('mesh="Echo.r' in k for k in echoes)
    histogram = samples(text, "forge_call_seconds_count")
    assert sum(v for k, v in histogram.items() if 'endpoint="ping"' in k) == 14
    buckets = samples(text, "forge_call_seconds_bucket")
    assert any('endpoint="ping"' in k and 'le="+Inf"' in k and v == 7 for k, v in buckets.items())
    healthy = samples(text, "forge_replica_healthy")
    assert sorted(healthy.values()) == [1.0, 1.0]
    assert f"metrics at http://127.0.0.1:{port}/metrics (loopback only" in done.stderr


async def test_record_metric_is_reduced_across_ranks():
    procs = spawn_procs({"procs": 4}, name="recorders")
    workers = procs.spawn("worker", Worker)
    for rank in range(4):
        await workers.slice(procs=rank).record.call_one(float(rank + 1))  # 1, 2, 3, 4
    [client] = collect(os.getpid())["clients"]
    from forge_core.observe import aggregate_metrics

    metrics = aggregate_metrics(client)
    assert metrics["work_done"]["value"] == 10.0
    assert metrics["work_max"]["value"] == 4.0
    assert metrics["work_mean"]["value"] == 2.5
    await procs.stop()


def test_a_bad_reduction_is_refused_with_the_choices():
    from forge_core.observe import record_metric

    with pytest.raises(ValueError, match="sum, mean, max, min"):
        record_metric("x_test_only", 1.0, reduce="median")
