"""The fork server: one process that has imported the kernel once and forks every child.

A fresh ``python -m forge_core._bootstrap`` spends most of its start-up importing asyncio,
uvloop, the kernel and the plugins (about 0.2 s of CPU on a small machine, so four of them on
two cores take longer than the whole target for a 4-process mesh). The parent therefore starts
one *zygote* on its first spawn: it imports all of that, then waits. Each new proc is a fork of
it, which starts in milliseconds with everything already imported. The zygote never creates an
event loop or a thread, so forking it is safe, and it never imports the user's code or torch.

The parent talks to it over a Unix socket pair (``FORGE_ZYGOTE_FD``):

- parent -> zygote: one JSON request per proc (``{"id", "set", "unset", "cwd"}``: how the
  child's environment differs from the zygote's) with four file descriptors passed alongside
  (SCM_RIGHTS): the child's lifeline and hello pipe ends and the
  write ends of its stdout and stderr pipes, so the child is tied to the parent exactly as a
  directly spawned one is, and prints into pipes the parent reads (see ``_logs``);
- zygote -> parent: lines ``spawned <id> <pid>`` and ``exited <pid> <code>`` (the zygote is the
  children's parent, so it reaps them and reports how they ended).

The zygote ends when the parent does: the socket closes (and, as for every proc, Linux kills it
when its parent dies). Its children get the same death signal tied to the zygote, and they
watch the parent's lifeline themselves: no orphans either way.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys

CONTROL_ENV = "FORGE_ZYGOTE_FD"
MAX_REQUEST = 1 << 20  # an environment is a few KiB
FDS_PER_REQUEST = 4  # lifeline (read end), hello (write end), stdout, stderr


def _receive(control: socket.socket) -> tuple[dict | None, list[int]]:
    """One request and its file descriptors; ``(None, [])`` once the parent has gone."""
    fds = array.array("i")
    data, ancillary, _, _ = control.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(FDS_PER_REQUEST * 4))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


def _become_child(request: dict, fds: list[int], closing: list[int]) -> None:
    """In the forked child: take the request's environment and descriptors, then run the
    ordinary proc bootstrap. Never returns."""
    code = 1
    try:
        for fd in closing:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # a Ctrl-C in the terminal is the parent's to handle, as with Popen
        lifeline, hello, stdout, stderr = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((devnull, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        os.chdir(request["cwd"])
        zygote_env = dict(os.environ)
        os.environ.update(request["set"])
        for name in request["unset"]:
            os.environ.pop(name, None)
        os.environ.update({"FORGE_LIFELINE_FD": str(lifeline), "FORGE_HELLO_FD": str(hello),
                           "FORGE_PARENT_PID": str(os.getppid())})
        from . import plugins

        if any(zygote_env.get(k) != os.environ.get(k)
               for k in (plugins.RESOLVED_ENV, plugins.DISABLE_ENV)):
            plugins.reset()  # this child wants other plugins than the zygote loaded
        from . import _bootstrap

        _bootstrap.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _report_exits(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.sendall(f"exited {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def serve(control: socket.socket) -> None:
    try:
        _serve(control)
    except OSError:
        pass  # the parent is gone (a report to it failed); our children follow it


def _serve(control: socket.socket) -> None:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd is written
    while True:
        readable, _, _ = select.select([control, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 4096)
            _report_exits(control)
        if control not in readable:
            continue
        request, fds = _receive(control)
        if request is None:
            return  # the parent is gone; our children follow through their own lifelines
        if len(fds) != FDS_PER_REQUEST:
            for fd in fds:
                os.close(fd)
            control.sendall(f"failed {request.get('id')} expected {FDS_PER_REQUEST} fds\n".encode())
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become_child(request, fds, [control.fileno(), wake_read, wake_write])
        for fd in fds:
            os.close(fd)
        control.sendall(f"spawned {request['id']} {pid}\n".encode())


def main() -> None:
    from . import _bootstrap

    _bootstrap._die_with_parent()
    control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET,
                            fileno=int(os.environ.pop(CONTROL_ENV)))
    # What every proc imports, imported once here (and never an event loop or a thread): the
    # runtime and plugins, the actor API that actor modules import, cloudpickle for classes
    # that travel by value, the codec socket addresses need.
    import encodings.idna  # noqa: F401

    import cloudpickle  # noqa: F401
    import uvloop  # noqa: F401

    from . import _runtime, actor, plugins  # noqa: F401

    plugins.transports()
    control.sendall(b"ready\n")
    serve(control)


if __name__ == "__main__":
    main()
