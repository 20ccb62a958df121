"""The live dashboard: one web page served from a thread of the client (or of ``forge
dashboard``), polling ``/api/state``, which is ``collect()`` boiled down to tables."""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from .collect import aggregate_metrics, collect, percentile

log = logging.getLogger("forge.observe")


def state(client_pid: int | None = None) -> dict[str, Any]:
    """What the page shows: replicas, procs, recent errors and the run's metric series."""
    clients = collect(client_pid)["clients"]
    replicas, procs, errors, series, metrics = [], [], [], {}, {}
    for client in clients:
        by_mesh: dict[str, list] = {}
        for proc in client.get("procs", []):
            by_mesh.setdefault(proc.get("mesh", ""), []).append(proc)
            buckets, in_flight, calls = None, 0, 0
            for actor in proc.get("actors", []):
                for stats in actor["endpoints"].values():
                    in_flight += stats["in_flight"]
                    calls += stats["calls"]
                    buckets = stats["buckets"] if buckets is None else [
                        a + b for a, b in zip(buckets, stats["buckets"])]
            procs.append({"mesh": proc.get("mesh"), "rank": proc.get("rank"),
                          "pid": proc["pid"], "host": proc.get("host"), "calls": calls,
                          "in_flight": in_flight, "error": proc.get("error"),
                          "running": [f"{a['class']}.{c['endpoint']} {c['seconds']:.1f} s"
                                      for a in proc.get("actors", []) for c in a["running"]],
                          **_latency(buckets)})
            errors.extend({**e, "mesh": proc.get("mesh"), "pid": proc["pid"]}
                          for e in proc.get("errors", []))
        for service in client.get("services", []):
            for replica in service["replicas"]:
                mine = [p for p in procs if p["mesh"] == replica["name"]
                        and p["pid"] in replica["pids"]]
                replicas.append({
                    "service": service["name"], "name": replica["name"],
                    "state": replica["state"], "generation": replica["generation"],
                    "restarts": replica["restarts"], "error": replica["error"],
                    "in_flight": sum(p["in_flight"] for p in mine),
                    "p50_ms": max((p["p50_ms"] or 0 for p in mine), default=None),
                    "p99_ms": max((p["p99_ms"] or 0 for p in mine), default=None)})
        series.update(client.get("series", {}))
        metrics.update(aggregate_metrics(client))
    errors.sort(key=lambda e: e["time"])
    return {"clients": [c["pid"] for c in clients], "replicas": replicas, "procs": procs,
            "errors": errors[-20:], "series": series, "metrics": metrics}


def _latency(buckets: list[int] | None) -> dict[str, float | None]:
    if not buckets:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = percentile(buckets, 0.5), percentile(buckets, 0.99)
    return {"p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000}


def serve(port: int = 0, host: str = "127.0.0.1",
          client_pid: int | None = None) -> ThreadingHTTPServer:
    """Serve the page on ``host:port`` (0: any free port) from a daemon thread; returns the
    server (``server.server_address``, ``server.shutdown()``)."""
    page = resources.files(__package__).joinpath("dashboard.html").read_bytes()
    target = client_pid if client_pid is not None else (os.getpid() if _is_client() else None)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path.startswith("/api/state"):
                body, kind = json.dumps(state(target), default=str).encode(), "application/json"
            elif self.path in ("/", "/index.html"):
                body, kind = page, "text/html; charset=utf-8"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # a request line per poll is noise
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="forge-dashboard").start()
    where = "loopback only" if host in ("127.0.0.1", "localhost", "::1") else "all can reach it"
    log.warning("forge: dashboard at http://%s:%d/ (%s)", host, server.server_address[1], where)
    return server


def _is_client() -> bool:
    from .. import _introspect

    return os.getpid() in _introspect.live_pids("client")
