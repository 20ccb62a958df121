"""Starting, watching and stopping the OS processes of a ProcMesh (on the home loop).

Each child runs ``forge_core._bootstrap`` with its whole environment set before any of it
runs. On Linux it is forked from a fork server (``_zygote``) that has imported the kernel
already, so it starts in milliseconds; there is one fork server per set of variables that
change how Python itself starts (``PYTHON*``, ``LD_*``, ...), so a child's are those it asked
for. Elsewhere, with ``FORGE_ZYGOTE=0``, or past a few such sets, it is a fresh
``python -m forge_core._bootstrap``. Either way two pipes tie it to its parent:

- the *lifeline* (parent writes, child reads): the parent never writes; when the parent dies,
  however it dies, the kernel closes its end and the child sees end-of-file and exits. No
  orphans, even after kill -9 of the parent.
- the *hello* pipe (child writes, parent reads): the child reports who it is and where it
  listens; end-of-file there means the child is gone, which the parent turns into supervision
  events at once.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from . import _logs, plugins
from .errors import SupervisionError
from .transport import ProcInfo

log = logging.getLogger("forge.procs")

STOP_TIMEOUT = 5.0
PIPE_DRAIN_TIMEOUT = 1.0


class ChildProc:
    """One spawned OS process, as its parent sees it."""

    def __init__(self, runtime: Any, rank: int, env: dict[str, str],
                 mesh_log: "_logs.MeshLog | None" = None):
        self.runtime = runtime
        self.rank = rank
        loop = runtime.home_loop
        self.ready: asyncio.Future[ProcInfo] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.info: ProcInfo | None = None
        lifeline_read, self._lifeline = os.pipe()
        self._hello, hello_write = os.pipe()
        # Its stdout and stderr are pipes we read: each line reaches us named (see _logs).
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        full_env = dict(os.environ)
        full_env.update({
            "FORGE_SECRET": runtime.secret.hex(),
            "FORGE_PLUGINS": plugins.resolved_for_children(),
            "FORGE_PARENT_PID": str(os.getpid()),
            "FORGE_SYS_PATH": json.dumps([p or os.getcwd() for p in sys.path]),
        })
        full_env.update(env)
        try:
            self._process = _start(loop, full_env, lifeline_read, hello_write,
                                   out_write, err_write)
        except BaseException:
            os.close(out_read)
            os.close(err_read)
            raise
        finally:
            for fd in (lifeline_read, hello_write, out_write, err_write):
                os.close(fd)
        mesh_log = mesh_log or _logs.MeshLog("procs")
        self._pipes = [_logs.PipeReader(loop, out_read, mesh_log, rank, 1),
                       _logs.PipeReader(loop, err_read, mesh_log, rank, 2)]
        self._received = b""
        loop.add_reader(self._hello, self._on_hello_readable)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _on_hello_readable(self) -> None:
        try:
            data = os.read(self._hello, 65536)
        except OSError:
            data = b""
        if data:
            self._received += data
            if not self.ready.done() and b"\n" in self._received:
                line = self._received.split(b"\n", 1)[0]
                try:
                    hello = json.loads(line)
                    self.info = ProcInfo(hello["proc_id"], hello["host_id"], hello["pid"],
                                         hello["addresses"])
                    self.ready.set_result(self.info)
                except (ValueError, KeyError) as exc:
                    self.ready.set_exception(SupervisionError(
                        f"proc rank {self.rank} (pid {self.pid}) sent a bad hello: {exc!r}"))
            return
        # End of file: the child has exited (or is exiting).
        loop = self.runtime.home_loop
        loop.remove_reader(self._hello)
        os.close(self._hello)
        if self.info is not None:
            self.runtime.mark_dead(self.info.proc_id, "its process exited")
        loop.create_task(self._reap())

    async def _reap(self) -> None:
        code = await self._process.wait()
        # Its last lines: read them to the end before anyone hears that it exited (a process
        # it started may hold the pipes open, hence the time limit).
        await asyncio.wait([p.closed for p in self._pipes], timeout=PIPE_DRAIN_TIMEOUT)
        _logs.folder.flush_through()
        if not self.ready.done():
            self.ready.set_exception(SupervisionError(
                f"proc rank {self.rank} (pid {self.pid}) exited with code {code} before it "
                f"started; its stderr above says why"))
        if not self.exited.done():
            self.exited.set_result(code)

    async def stop(self) -> int:
        """Ask the child to exit (close its lifeline); kill it if it has not within 5 s."""
        self.close_lifeline()
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("proc rank %d (pid %d) did not exit within %.0f s; killing it",
                        self.rank, self.pid, STOP_TIMEOUT)
            self._process.kill()
            return await self.exited

    def close_lifeline(self) -> None:
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1


def launch(runtime: Any, envs: list[dict[str, str]],
           mesh_log: "_logs.MeshLog | None" = None) -> list[ChildProc]:
    """Start one child per environment, all at once (on the home loop)."""
    return [ChildProc(runtime, rank, env, mesh_log) for rank, env in enumerate(envs)]


# ---------------------------------------------------------------------------------------------
# How a child is started: forked by the zygote, or a fresh interpreter.

ZYGOTE_ENV = "FORGE_ZYGOTE"  # "0": start every proc as a fresh interpreter
# Environment variables read while Python itself starts: a child is forked from a zygote that
# started with the same values (one zygote per set of values).
_INTERPRETER_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "GLIBC_TUNABLES")


def _start(loop: asyncio.AbstractEventLoop, env: dict[str, str], lifeline: int, hello: int,
           stdout: int, stderr: int):
    env = {**env, "FORGE_LIFELINE_FD": str(lifeline), "FORGE_HELLO_FD": str(hello)}
    zygote = _zygote_for(loop, env)
    if zygote is not None:
        try:
            return zygote.spawn(env, lifeline, hello, stdout, stderr)
        except OSError as exc:  # e.g. the zygote just died: start this one directly
            log.debug("fork server unavailable (%r); starting the proc directly", exc)
    return _DirectProcess(subprocess.Popen(
        [sys.executable, "-m", "forge_core._bootstrap"], env=env, pass_fds=(lifeline, hello),
        stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        start_new_session=True))  # a Ctrl-C in the terminal is the parent's to handle


class _DirectProcess:
    """A child started as a fresh interpreter (it is our own child: we reap it)."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid: int | None = popen.pid

    async def wait(self) -> int:
        # Called once its hello pipe has closed, so it is (nearly) always a zombie by now:
        # poll for it rather than park a thread in wait() for each child.
        delay = 0.001
        while (code := self.popen.poll()) is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return code

    def kill(self) -> None:
        self.popen.kill()


class _ForkedProcess:
    """A child forked by the zygote, which reaps it and reports its exit code."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.pid: int | None = None  # known once the zygote has forked it
        self._code: asyncio.Future[int] = loop.create_future()
        self._kill_when_known = False

    def _forked(self, pid: int) -> None:
        self.pid = pid
        if self._kill_when_known:
            self.kill()

    def _exited(self, code: int) -> None:
        if not self._code.done():
            self._code.set_result(code)

    async def wait(self) -> int:
        return await self._code

    def kill(self) -> None:
        if self.pid is None:
            self._kill_when_known = True
            return
        if not self._code.done():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Zygote:
    """The parent's side of the fork server (see ``_zygote``): one per home loop and set of
    interpreter variables (``PYTHON*``, ...) that its children ask for, started on first use
    and again if it dies. Requests are sent at once: the socket holds them, descriptors
    included, until the zygote has imported everything and reads them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interpreter_env: frozenset):
        from ._zygote import CONTROL_ENV

        self.loop = loop
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ordinary = {k: v for k, v in os.environ.items() if not k.startswith(_INTERPRETER_PREFIXES)}
        self.base_env = {**ordinary, **dict(interpreter_env),
                         "FORGE_PLUGINS": plugins.resolved_for_children(),
                         "FORGE_PARENT_PID": str(os.getpid())}
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "forge_core._zygote"],
                env={**self.base_env, CONTROL_ENV: str(theirs.fileno())},
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        self.alive = True
        self._next_id = 0
        self._by_id: dict[int, _ForkedProcess] = {}
        self._by_pid: dict[int, _ForkedProcess] = {}
        self._received = b""
        loop.add_reader(self._control.fileno(), self._on_readable)

    def spawn(self, env: dict[str, str], lifeline: int, hello: int, stdout: int,
              stderr: int) -> _ForkedProcess:
        self._next_id += 1
        request = {"id": self._next_id, "cwd": os.getcwd(),
                   "set": {k: v for k, v in env.items() if self.base_env.get(k) != v},
                   "unset": [k for k in self.base_env if k not in env]}
        fds = array.array("i", [lifeline, hello, stdout, stderr])
        self._control.sendmsg([json.dumps(request).encode()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        process = self._by_id[self._next_id] = _ForkedProcess(self.loop)
        return process

    def _on_readable(self) -> None:
        try:
            data = self._control.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._died()
            return
        for line in data.decode().splitlines():
            kind, *fields = line.split()
            if kind == "spawned":
                process = self._by_id.pop(int(fields[0]))
                self._by_pid[int(fields[1])] = process
                process._forked(int(fields[1]))
            elif kind == "exited":
                process = self._by_pid.pop(int(fields[0]), None)
                if process is not None:
                    process._exited(int(fields[1]))
            elif kind == "failed":  # no child: the proc's start fails, nobody waits on it
                log.error("the fork server refused a request: %s", line)
                process = self._by_id.pop(int(fields[0]), None) if fields[0].isdigit() else None
                if process is not None:
                    process._exited(1)

    def _died(self) -> None:
        """Its children die with it (they are tied to it like any proc to its parent)."""
        self.alive = False
        self.loop.remove_reader(self._control.fileno())
        self._control.close()
        for process in [*self._by_id.values(), *self._by_pid.values()]:
            process._exited(-signal.SIGKILL)
        self._by_id.clear()
        self._by_pid.clear()
        self.loop.create_task(_DirectProcess(self._popen).wait())  # reap it
        log.debug("the fork server exited")


_zygotes: dict[tuple[int, frozenset], _Zygote] = {}  # by home loop and interpreter variables
_MAX_ZYGOTES = 4  # per home loop; a child whose interpreter variables need a fifth starts fresh


def _zygote_for(loop: asyncio.AbstractEventLoop, env: dict[str, str]) -> _Zygote | None:
    if os.environ.get(ZYGOTE_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return None
    interpreter_env = frozenset((k, v) for k, v in env.items()
                                if k.startswith(_INTERPRETER_PREFIXES))
    key = (id(loop), interpreter_env)
    zygote = _zygotes.get(key)
    if zygote is not None and zygote.alive and zygote.loop is loop:
        return zygote
    for dead in [k for k, z in _zygotes.items() if not z.alive]:
        del _zygotes[dead]
    if sum(k[0] == id(loop) for k in _zygotes) >= _MAX_ZYGOTES:
        return None
    zygote = _zygotes[key] = _Zygote(loop, interpreter_env)
    return zygote


def fork_server_pids() -> list[int]:
    """The live fork servers of this process (tests tell them apart from mesh processes)."""
    return [z._popen.pid for z in _zygotes.values() if z.alive]
