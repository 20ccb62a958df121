"""Gathering what every process of a client reports, into one plain dictionary.

A client (a process that has started meshes) and each of its procs answer on Unix sockets
(see ``forge_core._introspect``); ``collect()`` asks them all. It works from the client itself
(the metrics endpoint, the dashboard of ``forge demo --dashboard``) and from another process
on the same host (``forge doctor``, ``forge dashboard``): the answers are the same JSON.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import _counters, _introspect


def client_report() -> dict[str, Any]:
    """What a client adds to its own snapshot: its meshes, services and run metrics."""
    from .._mesh import _live_meshes
    from ..service._controller import _live as live_controllers

    meshes = []
    for mesh in list(_live_meshes):
        children = list(getattr(mesh, "_children", []))
        if children:
            meshes.append({"name": mesh.name, "pids": [c.pid for c in children
                                                       if c.pid is not None]})
    services = []
    for controller in list(live_controllers):
        replicas = [{
            "index": r.index, "name": r.name, "state": r.state, "generation": r.generation,
            "restarts": max(r.generation - 1, 0), "error": r.error,
            "pids": [info.pid for info in r.infos]} for r in list(controller._replicas)]
        services.append({"name": controller._recipe.service, "stopped": controller._stopped,
                         "replicas": replicas})
    return {"kind": "client", "meshes": meshes, "services": services,
            "series": {name: list(points) for name, points in list(_counters.series.items())}}


def collect(client_pid: int | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """Every client of this user on this host (or only ``client_pid``) and its procs.

    ``{"time", "clients": [client snapshot + "procs": [proc snapshot or
    {"pid", "error"}]]}``; a proc that does not answer within ``timeout`` is listed with the
    error, so one hung process never hides the others.
    """
    pids = [client_pid] if client_pid else _introspect.live_pids("client")
    clients = []
    for pid in pids:
        try:
            client = _introspect.ask(pid, "client", timeout)
        except (OSError, ValueError) as exc:
            clients.append({"pid": pid, "error": f"not answering: {exc!r}", "procs": [],
                            "meshes": [], "services": []})
            continue
        procs = []
        for mesh in client.get("meshes", []):
            for pid_ in mesh["pids"]:
                try:
                    procs.append(_introspect.ask(pid_, "proc", timeout))
                except (OSError, ValueError) as exc:
                    procs.append({"pid": pid_, "mesh": mesh["name"], "actors": [],
                                  "error": f"not answering: {exc!r}"})
        client["procs"] = procs
        clients.append(client)
    return {"time": time.time(), "clients": clients}


def this_client() -> dict[str, Any]:
    """``collect()`` for the calling process only."""
    report = collect(os.getpid())
    return report["clients"][0] if report["clients"] else {}


def aggregate_metrics(client: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``record_metric`` values of a client and its procs, reduced across ranks."""
    merged: dict[str, list] = {}
    sources = [client.get("metrics", {})] + [p.get("metrics", {}) for p in client["procs"]]
    for metrics in sources:
        for name, (reduce, total, count, low, high, last) in metrics.items():
            entry = merged.setdefault(name, [reduce, 0.0, 0, low, high, last])
            entry[1] += total
            entry[2] += count
            entry[3] = min(entry[3], low)
            entry[4] = max(entry[4], high)
            entry[5] = last
    out = {}
    for name, (reduce, total, count, low, high, last) in merged.items():
        value = {"sum": total, "mean": total / count if count else 0.0, "max": high,
                 "min": low}[reduce]
        out[name] = {"reduce": reduce, "value": value, "count": count, "last": last}
    return out


def percentile(buckets: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (None for no calls)."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for bound, count in zip(list(_counters.BUCKETS) + [float("inf")], buckets):
        seen += count
        if seen >= q * total:
            return bound
    return float("inf")
