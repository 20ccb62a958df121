"""The fork server: procs are forks of one process that imported the kernel once; they get
their own environment, output and randomness, come from a fork server started with the
interpreter variables they ask for, and die with the fork server as with their parent."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from forge_core import _procs
from forge_core.actor import Actor, SupervisionError, endpoint, spawn_procs

pytestmark = pytest.mark.timeout(90)


class Inspect(Actor):
    @endpoint
    def parent(self) -> int:
        return os.getppid()

    @endpoint
    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    @endpoint
    def random(self) -> float:
        return random.random()

    @endpoint
    def say(self, text: str) -> None:
        print(text, flush=True)
        print(text, file=sys.stderr, flush=True)

    @endpoint
    def cwd(self) -> str:
        return os.getcwd()


async def test_procs_are_forks_of_the_fork_server_with_their_own_environment():
    procs = spawn_procs(per_host={"procs": 2}, env={"FORGE_TEST_VALUE": "7"})
    mesh = procs.spawn("i", Inspect)
    parents = await mesh.parent.call()
    assert len(set(parents)) == 1 and set(parents) <= set(_procs.fork_server_pids())
    assert list(await mesh.env.call("FORGE_TEST_VALUE")) == ["7", "7"]
    assert list(await mesh.env.call("RANK")) == ["0", "1"]
    # Forks share the server's random state at birth; Python reseeds each fork.
    assert len(set(await mesh.random.call())) == 2
    assert set(await mesh.cwd.call()) == {os.getcwd()}
    await procs.stop()


async def test_a_proc_prints_where_its_parent_prints_now(capfd):
    procs = spawn_procs(per_host={"procs": 1})
    await procs.spawn("i", Inspect).say.call_one("hello from a fork")
    await procs.stop()
    out, err = capfd.readouterr()
    assert "hello from a fork" in out and "hello from a fork" in err


async def test_an_environment_that_changes_how_python_starts_gets_its_own_fork_server():
    plain = spawn_procs(per_host={"procs": 1})
    usual = await plain.spawn("i", Inspect).parent.call_one()
    procs = spawn_procs(per_host={"procs": 1}, env={"PYTHONFAULTHANDLER": "1"})
    mesh = procs.spawn("i", Inspect)
    server = await mesh.parent.call_one()
    assert server in _procs.fork_server_pids() and server != usual
    with open(f"/proc/{server}/environ", "rb") as f:  # what that interpreter started with
        assert b"PYTHONFAULTHANDLER=1" in f.read().split(b"\0")
    assert await mesh.env.call_one("PYTHONFAULTHANDLER") == "1"
    await procs.stop()
    await plain.stop()


def test_forge_zygote_0_starts_every_proc_directly():
    script = textwrap.dedent("""
        import os
        from forge_core.actor import Actor, endpoint, spawn_procs

        class Parent(Actor):
            @endpoint
            def parent(self):
                return os.getppid()

        procs = spawn_procs(per_host={"procs": 2})
        print(procs.spawn("p", Parent).parent.call().get(timeout=30) == [os.getpid()] * 2)
        procs.stop().get(timeout=10)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "FORGE_ZYGOTE": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


async def test_killing_the_fork_server_fails_its_procs_and_the_next_spawn_starts_a_new_one():
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("i", Inspect)
    (server,) = set(await mesh.parent.call())
    assert server in _procs.fork_server_pids() and server != os.getpid()
    os.kill(server, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(SupervisionError):
        while time.monotonic() - start < 5:
            await mesh.parent.call()
    assert time.monotonic() - start < 2.5
    await procs.stop()
    again = spawn_procs(per_host={"procs": 1})
    new_server = await again.spawn("i", Inspect).parent.call_one()
    assert new_server != server and new_server in _procs.fork_server_pids()
    await again.stop()


def test_a_request_the_fork_server_refuses_fails_its_proc_at_once():
    # A request without its four descriptors forks nothing: the proc waiting on it must end
    # (its start then fails) rather than wait for a child that will never exist.
    async def refused() -> int:
        loop = asyncio.get_running_loop()
        zygote = _procs._Zygote(loop, frozenset())
        try:
            process = zygote._by_id[99] = _procs._ForkedProcess(loop)
            request = {"id": 99, "cwd": os.getcwd(), "set": {}, "unset": []}
            zygote._control.sendmsg([json.dumps(request).encode()])  # no descriptors
            return await asyncio.wait_for(process.wait(), 30)
        finally:
            loop.remove_reader(zygote._control.fileno())
            zygote._control.close()  # the fork server sees its parent gone and exits
            zygote._popen.wait(timeout=30)

    assert asyncio.run(refused()) == 1
