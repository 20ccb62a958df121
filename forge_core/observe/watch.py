"""What a client starts with its first mesh: its introspection socket, and what the
environment asks for.

- ``FORGE_METRICS_PORT=N``: Prometheus text at ``http://127.0.0.1:N/metrics``
  (``FORGE_METRICS_HOST`` to listen elsewhere);
- ``FORGE_METRICS_FILE=PATH``: a JSON line of every counter every ``FORGE_METRICS_INTERVAL``
  seconds (default 10);
- ``FORGE_SLOW_CALL_SECONDS`` (default 60, 0 turns it off): a call running longer than this
  in any proc is named in this client's log, with host, pid, actor and endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

log = logging.getLogger("forge.observe")

_started = False
_lock = threading.Lock()


def client_started() -> None:
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        _started = True
    from .. import _introspect
    from .._runtime import Runtime
    from .collect import client_report

    _introspect.start(Runtime.get(), "client", client_report)
    port = os.environ.get("FORGE_METRICS_PORT")
    if port:
        from .prometheus import serve_metrics

        serve_metrics(int(port), os.environ.get("FORGE_METRICS_HOST", "127.0.0.1"))
    path = os.environ.get("FORGE_METRICS_FILE")
    interval = float(os.environ.get("FORGE_METRICS_INTERVAL", "10"))
    slow = float(os.environ.get("FORGE_SLOW_CALL_SECONDS", "60"))
    if path or slow > 0:
        threading.Thread(target=_watch, args=(path, interval, slow), daemon=True,
                         name="forge-watch").start()


def _watch(path: str | None, interval: float, slow: float) -> None:
    from .collect import this_client

    warned: set[tuple[int, str, float]] = set()
    period = min(interval if path else slow / 2, slow / 2 if slow > 0 else interval)
    next_line = time.monotonic()
    while True:
        time.sleep(max(period, 0.5))
        try:
            client = this_client()
        except Exception as exc:  # never let the watch take the client down
            log.debug("watch: %r", exc)
            continue
        if slow > 0:
            for key, text in slow_calls(client, slow):
                if key not in warned:
                    warned.add(key)
                    log.warning("%s", text)
        if path and time.monotonic() >= next_line:
            next_line = time.monotonic() + interval
            write_jsonl(path, client)


def slow_calls(client: dict, threshold: float) -> list[tuple[tuple, str]]:
    """(key, message) for each call in the client's procs running longer than ``threshold``."""
    found = []
    for proc in client.get("procs", []):
        for actor in proc.get("actors", []):
            for call in actor.get("running", []):
                if call["seconds"] >= threshold:
                    key = (proc["pid"], call["endpoint"], round(call["since"], 3))
                    found.append((key, (
                        f"slow call: {actor['class']}.{call['endpoint']} has run "
                        f"{call['seconds']:.0f} s on host {proc.get('host')} pid {proc['pid']} "
                        f"({proc.get('mesh')} rank {proc.get('rank')}, actor {actor['actor']}) "
                        f"at {call['where']}; {len(actor['queued'])} call(s) wait behind it; "
                        f"`forge doctor` shows its stack")))
    return found


def write_jsonl(path: str, client: dict) -> None:
    from .collect import aggregate_metrics

    line = {"time": time.time(), "pid": client.get("pid"), "endpoints": [
        {"mesh": p.get("mesh"), "rank": p.get("rank"), "pid": p["pid"], "actor": a["class"],
         "endpoint": name, **stats}
        for p in client.get("procs", []) for a in p.get("actors", [])
        for name, stats in a["endpoints"].items()],
        "services": client.get("services", []), "metrics": aggregate_metrics(client)}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
