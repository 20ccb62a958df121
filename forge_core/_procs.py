"""Starting, watching and stopping the OS processes of a ProcMesh (on the home loop).

Each child is ``python -m forge_core._bootstrap`` with its whole environment set before it
starts. Two pipes tie it to its parent:

- the *lifeline* (parent writes, child reads): the parent never writes; when the parent dies,
  however it dies, the kernel closes its end and the child sees end-of-file and exits. No
  orphans, even after kill -9 of the parent.
- the *hello* pipe (child writes, parent reads): the child reports who it is and where it
  listens; end-of-file there means the child is gone, which the parent turns into supervision
  events at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from typing import Any

from . import plugins
from .errors import SupervisionError
from .transport import ProcInfo

log = logging.getLogger("forge.procs")

STOP_TIMEOUT = 5.0


class ChildProc:
    """One spawned OS process, as its parent sees it."""

    def __init__(self, runtime: Any, rank: int, env: dict[str, str]):
        self.runtime = runtime
        self.rank = rank
        loop = runtime.home_loop
        self.ready: asyncio.Future[ProcInfo] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.info: ProcInfo | None = None
        lifeline_read, self._lifeline = os.pipe()
        self._hello, hello_write = os.pipe()
        full_env = dict(os.environ)
        full_env.update({
            "FORGE_SECRET": runtime.secret.hex(),
            "FORGE_PLUGINS": plugins.resolved_for_children(),
            "FORGE_LIFELINE_FD": str(lifeline_read),
            "FORGE_HELLO_FD": str(hello_write),
            "FORGE_PARENT_PID": str(os.getpid()),
            "FORGE_SYS_PATH": json.dumps([p or os.getcwd() for p in sys.path]),
        })
        full_env.update(env)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "forge_core._bootstrap"], env=full_env,
                pass_fds=(lifeline_read, hello_write), stdin=subprocess.DEVNULL,
                start_new_session=True)  # a Ctrl-C in the terminal is the parent's to handle
        finally:
            os.close(lifeline_read)
            os.close(hello_write)
        self.pid = self.popen.pid
        self._received = b""
        loop.add_reader(self._hello, self._on_hello_readable)

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
        # The hello pipe closes as the process exits, so it is (nearly) always a zombie by
        # now: poll for it rather than park a thread in wait() for each child.
        delay = 0.001
        while (code := self.popen.poll()) is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
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
            self.popen.kill()
            return await self.exited

    def close_lifeline(self) -> None:
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1


def launch(runtime: Any, envs: list[dict[str, str]]) -> list[ChildProc]:
    """Start one child per environment, all at once (on the home loop)."""
    return [ChildProc(runtime, rank, env) for rank, env in enumerate(envs)]
