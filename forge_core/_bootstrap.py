"""The entry point of every spawned Forge process: ``python -m forge_core._bootstrap``.

It imports as little as it can (no torch: an actor that needs it imports it), starts the
runtime on a uvloop, reports its address to the parent on the hello pipe, and serves until its
lifeline closes (the parent stopped the mesh or died) or a STOP message arrives.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _die_with_parent() -> None:
    """Belt and braces beside the lifeline: ask Linux to kill us when the parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(os.environ.get("FORGE_PARENT_PID", os.getppid())):
        os._exit(1)  # the parent died before prctl took effect


def _bind_cores() -> None:
    """Bind to the cores the allocator chose for us (``FORGE_CPU_AFFINITY``), first thing."""
    cores = os.environ.get("FORGE_CPU_AFFINITY")
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})


def main() -> None:
    _die_with_parent()
    _bind_cores()
    # stdout is a pipe to the client: without this a print waits in a buffer for kilobytes
    # more, and is lost if the proc is killed.
    sys.stdout.reconfigure(line_buffering=True)
    sys.path[:] = json.loads(os.environ.pop("FORGE_SYS_PATH", "[]")) or sys.path
    lifeline = int(os.environ.pop("FORGE_LIFELINE_FD"))
    hello = int(os.environ.pop("FORGE_HELLO_FD"))

    from forge_core._runtime import Runtime, new_loop

    loop = new_loop()
    import asyncio

    asyncio.set_event_loop(loop)
    runtime = Runtime(loop)
    Runtime._instance = runtime
    loop.run_until_complete(runtime.start())
    from forge_core import _introspect

    _introspect.start(runtime)

    def on_lifeline() -> None:
        try:
            if os.read(lifeline, 1):
                return
        except OSError:
            pass
        runtime.stop_process()

    loop.add_reader(lifeline, on_lifeline)
    info = runtime.info
    os.write(hello, (json.dumps({"proc_id": info.proc_id, "host_id": info.host_id,
                                 "pid": info.pid, "addresses": info.addresses}) + "\n").encode())
    # Keep the hello pipe open: the parent reads its end-of-file as our death.
    loop.run_forever()


if __name__ == "__main__":
    main()
