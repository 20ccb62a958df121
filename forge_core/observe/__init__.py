"""Observability: what every process of a Forge client is doing, counted and shown.

    from forge_core.observe import record_metric
    record_metric("reward", 0.8, reduce="mean")       # in any actor, or in the client

- ``record_metric(name, value, reduce)``: a metric of your own (sum, mean, max or min),
  reduced across ranks when the client collects it;
- ``collect()``: every client of this user on this host and its procs, as plain data;
- ``serve_metrics(port)``: Prometheus text at ``/metrics`` (``FORGE_METRICS_PORT`` does it
  for any client);
- ``serve_dashboard(port)``: the live web page (``forge dashboard``, ``forge demo --dashboard``);
- ``doctor_report()``: what ``forge doctor`` prints.

Where the data comes from: ``forge_core._counters`` (counting in the procs) and
``forge_core._introspect`` (each process answers on a Unix socket from a thread of its own).
"""

from __future__ import annotations

from .. import _counters
from .collect import aggregate_metrics, collect


def record_metric(name: str, value: float, reduce: str = "mean") -> None:
    """Record ``value`` under ``name``; ``reduce`` (sum, mean, max, min) says how values from
    every call and every rank combine."""
    _counters.record(name, value, reduce)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    from .prometheus import serve_metrics as serve

    serve(port, host)


def serve_dashboard(port: int = 0, host: str = "127.0.0.1", client_pid: int | None = None):
    from .dashboard import serve

    return serve(port, host, client_pid)


def doctor_report(client_pid: int | None = None, threshold: float = 5.0) -> str:
    from .doctor import report

    return report(collect(client_pid), threshold)


__all__ = ["aggregate_metrics", "collect", "doctor_report", "record_metric", "serve_dashboard",
           "serve_metrics"]
