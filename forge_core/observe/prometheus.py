"""The client's counters as Prometheus text, with the ``prometheus_client`` library.

Nothing is counted with prometheus_client objects: the procs count in plain attributes (see
``forge_core._counters``) and a custom collector turns a fresh ``collect()`` into metric
families at every scrape, so a scrape costs the procs one snapshot each and calls nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import _counters
from .collect import aggregate_metrics, this_client

log = logging.getLogger("forge.observe")


class ForgeCollector:
    """Families: ``forge_calls_total``, ``forge_call_errors_total``, ``forge_calls_in_flight``,
    ``forge_call_seconds`` (histogram), labelled mesh/rank/actor/endpoint;
    ``forge_replica_healthy`` and ``forge_replica_restarts_total`` per service replica;
    ``forge_metric`` for every ``record_metric`` name, reduced across ranks."""

    def collect(self) -> Any:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        client = this_client()
        labels = ["mesh", "rank", "actor", "endpoint"]
        calls = CounterMetricFamily("forge_calls", "Finished endpoint calls", labels=labels)
        errors = CounterMetricFamily("forge_call_errors", "Endpoint calls that raised",
                                     labels=labels)
        flying = GaugeMetricFamily("forge_calls_in_flight", "Endpoint calls running now",
                                   labels=labels)
        seconds = HistogramMetricFamily("forge_call_seconds", "Endpoint call latency",
                                        labels=labels)
        bounds = [str(b) for b in _counters.BUCKETS] + ["+Inf"]
        for proc in client.get("procs", []):
            for actor in proc.get("actors", []):
                for endpoint, stats in actor["endpoints"].items():
                    values = [str(proc.get("mesh", "")), str(proc.get("rank", 0)),
                              actor["class"], endpoint]
                    calls.add_metric(values, stats["calls"])
                    errors.add_metric(values, stats["errors"])
                    flying.add_metric(values, stats["in_flight"])
                    cumulative, running = [], 0
                    for bound, count in zip(bounds, stats["buckets"]):
                        running += count
                        cumulative.append((bound, running))
                    seconds.add_metric(values, cumulative, stats["seconds"])
        yield from (calls, errors, flying, seconds)
        healthy = GaugeMetricFamily("forge_replica_healthy", "1 while a replica serves",
                                    labels=["service", "replica"])
        restarts = CounterMetricFamily("forge_replica_restarts", "Replica restarts",
                                       labels=["service", "replica"])
        for service in client.get("services", []):
            for replica in service["replicas"]:
                values = [service["name"], replica["name"]]
                healthy.add_metric(values, 1.0 if replica["state"] == "healthy" else 0.0)
                restarts.add_metric(values, replica["restarts"])
        yield from (healthy, restarts)
        user = GaugeMetricFamily("forge_metric", "record_metric values, reduced across ranks",
                                 labels=["name", "reduce"])
        for name, entry in aggregate_metrics(client).items():
            user.add_metric([name, entry["reduce"]], entry["value"])
        yield user


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` from this process (a thread); loopback unless ``host`` says other."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(ForgeCollector())
    start_http_server(port, addr=host, registry=registry)
    where = "loopback only" if host in ("127.0.0.1", "localhost", "::1") else "all can reach it"
    log.warning("forge: metrics at http://%s:%d/metrics (%s; FORGE_METRICS_HOST changes it)",
                host, port, where)
