"""Every proc answers "what are your actors doing?" from a thread of its own.

A hung proc is the one whose event loop cannot answer (an endpoint in ``time.sleep``, a C call
that never returns), so the answer cannot come from the loop: a daemon thread listens on a
Unix socket, ``<run dir>/proc-<pid>.sock``, and replies to each connection with one JSON
document: the proc's mesh and rank, each actor's per-endpoint counters, the calls running now
with their Python stacks, the calls queued behind them, ``record_metric`` values and recent
errors. JSON, never pickle: the reader needs no trust in the proc, and the socket lives in a
directory only this user can enter (mode 0700), so only this user's processes can ask.

The thread only reads: it copies plain attributes that the loop updates (see ``_counters``),
so a reply costs the proc nothing until someone asks.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

from . import _counters

log = logging.getLogger("forge.introspect")

RUN_DIR_ENV = "FORGE_RUN_DIR"
MESH_ENV = "FORGE_MESH"  # the name and rank of a proc within its mesh, set by spawn_procs
RANK_ENV = "FORGE_MESH_RANK"


def run_dir() -> str:
    """Where procs put their sockets: ``$FORGE_RUN_DIR``, or ``<tmp>/forge-<uid>``."""
    path = os.environ.get(RUN_DIR_ENV) or os.path.join(tempfile.gettempdir(),
                                                        f"forge-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def socket_path(pid: int, kind: str = "proc") -> str:
    return os.path.join(run_dir(), f"{kind}-{pid}.sock")


def start(runtime: Any, kind: str = "proc", extra: Any = None) -> None:
    """Serve introspection for this process: a proc (from its bootstrap), or a client (once it
    has meshes: ``extra()`` then adds its meshes and services to every snapshot)."""
    path = socket_path(os.getpid(), kind)
    try:
        os.unlink(path)  # a stale one: a pid is reused only after its owner is gone
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(16)
    except OSError as exc:  # introspection is a convenience: the proc runs on without it
        log.warning("introspection unavailable (%s: %r)", path, exc)
        server.close()
        return
    runtime._on_stop.append(lambda: _remove(path))
    home = threading.main_thread().ident
    threading.Thread(target=_serve, args=(server, runtime, home, extra),
                     name="forge-introspect", daemon=True).start()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _serve(server: socket.socket, runtime: Any, home: int, extra: Any) -> None:
    while True:
        conn, _ = server.accept()
        try:
            conn.settimeout(5)
            report = snapshot(runtime, home)
            if extra is not None:
                report.update(extra())
            conn.sendall(json.dumps(report, default=str).encode())
        except Exception as exc:  # one bad reader never stops the thread
            log.debug("introspection reply failed: %r", exc)
        finally:
            conn.close()


def snapshot(runtime: Any, home: int | None = None) -> dict[str, Any]:
    """What this proc and its actors are doing now (plain data, ready for JSON)."""
    home = home or threading.main_thread().ident
    now_wall, now_perf = time.time(), _counters._now()
    actors = []
    for host in list(runtime.actors.values()):
        running = []
        current = host.running_sync
        if current is not None:
            frame = sys._current_frames().get(home)
            stack = _trim(traceback.extract_stack(frame)) if frame is not None else []
            running.append(_running(current[0], current[1], stack, now_wall, now_perf))
        for endpoint, started, task in list(host.running_async.values()):
            stack = traceback.StackSummary.extract((f, f.f_lineno) for f in _awaiting(task))
            running.append(_running(endpoint, started, _trim(stack), now_wall, now_perf))
        actors.append({
            "actor": host.actor_id, "class": host.class_name, "rank": host.point.rank,
            "endpoints": {name: stats.copy() for name, stats in list(host.stats.items())},
            "running": running, "queued": host.queued()})
    return {
        "pid": os.getpid(), "host": runtime.info.host_id, "proc_id": runtime.info.proc_id,
        "parent_pid": int(os.environ.get("FORGE_PARENT_PID", "0") or 0),
        "mesh": os.environ.get(MESH_ENV, ""), "rank": int(os.environ.get(RANK_ENV, "0") or 0),
        "service": os.environ.get("FORGE_SERVICE", ""), "actors": actors,
        "metrics": {k: list(v) for k, v in list(_counters.user_metrics.items())},
        "errors": list(_counters.recent_errors)}


def _awaiting(task: Any) -> list:
    """A suspended task's chain of awaits, outermost first (its frames do not link to their
    callers, and ``Task.get_stack`` stops at the outermost)."""
    frames = []
    coro = task.get_coro()
    while coro is not None and len(frames) < 100:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def _running(endpoint: str, started: float, stack: list, now_wall: float,
             now_perf: float) -> dict[str, Any]:
    frames = [{"file": f.filename, "line": f.lineno, "function": f.name, "code": f.line or ""}
              for f in stack]
    return {"endpoint": endpoint, "seconds": now_perf - started,
            "since": now_wall - (now_perf - started), "stack": frames,
            # The endpoint's own line (the outermost frame below the kernel), which is what
            # the user wrote; the stack goes on to the innermost frame.
            "where": (f"{frames[0]['file']}:{frames[0]['line']} in {frames[0]['function']}"
                      if frames else "")}


def _trim(stack: traceback.StackSummary) -> list:
    """Drop the kernel's frames above the endpoint: the user wants to see their own code."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i].name in ("_call_sync", "_run_async") and stack[i].filename.endswith(
                os.path.join("forge_core", "_actors.py")):
            return list(stack[i + 1:])
    return list(stack)


def ask(pid: int, kind: str = "proc", timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot of process ``pid`` on this host (raises OSError if it does not answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(socket_path(pid, kind))
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def live_pids(kind: str = "proc") -> list[int]:
    """The pids of every live process of this user, of this kind, with a socket here."""
    pids = []
    prefix = f"{kind}-"
    for name in os.listdir(run_dir()):
        if name.startswith(prefix) and name.endswith(".sock"):
            pid = int(name[len(prefix):-5])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                _remove(os.path.join(run_dir(), name))  # killed with -9: its socket stayed
                continue
            except PermissionError:
                continue
            pids.append(pid)
    return sorted(pids)
