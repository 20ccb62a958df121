"""Starting `forge agent` processes on 127.0.0.2, 127.0.0.3, ... standing for separate hosts."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Agents:
    """``count`` agents, each with its own loopback address and host identity."""

    def __init__(self, count: int, secret: str | None = None, command_prefix: list[str] = ()):
        self.secret = secret or secrets.token_hex(32)
        self.addresses: list[str] = []
        self.procs: list[subprocess.Popen] = []
        for i in range(count):
            host = f"127.0.0.{i + 2}"
            address = f"{host}:{free_port(host)}"
            # The tests' actor classes must be importable on the "remote" hosts too.
            tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            path = os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))
            env = dict(os.environ, FORGE_SECRET=self.secret, PYTHONPATH=path)
            proc = subprocess.Popen(
                [*command_prefix, sys.executable, "-m", "forge_core.cli", "agent", "--listen",
                 address, "--host-id", f"host{i + 1}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True)
            self.addresses.append(address)
            self.procs.append(proc)
        for proc, address in zip(self.procs, self.addresses):
            line = proc.stdout.readline()
            if "ready" not in line:
                raise RuntimeError(f"agent on {address} did not start: {line!r}")

    def kill(self, index: int) -> None:
        os.killpg(self.procs[index].pid, signal.SIGKILL)
        self.procs[index].wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)

    def __enter__(self) -> "Agents":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] not in ("Z", "X")
    except OSError:
        return False


class cluster_secret:
    """Use ``secret`` in this (test) process's runtime for the duration: the runtime was created
    before the test set FORGE_SECRET, as a user's would not have been."""

    def __init__(self, secret: str):
        self.secret = secret

    def __enter__(self) -> None:
        from forge_core._runtime import Runtime
        from forge_core.transport import Authenticator

        self.runtime = Runtime.get()
        self.saved = (self.runtime.secret, self.runtime.auth)
        self.runtime.secret = bytes.fromhex(self.secret)
        self.runtime.auth = Authenticator(self.runtime.secret)

    def __exit__(self, *exc) -> None:
        self.runtime.secret, self.runtime.auth = self.saved
