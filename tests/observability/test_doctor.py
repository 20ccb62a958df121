"""forge doctor names a hung endpoint (host, pid, actor, endpoint, line) within 10 s while
the rest keep serving; a call running past the threshold is named in the client's log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from forge_core._runtime import host_identity
from forge_core.actor import spawn_procs

from obs_actors import Worker

pytestmark = pytest.mark.timeout(60)

HERE = os.path.dirname(__file__)


def doctor(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "forge_core.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_doctor_names_an_endpoint_stuck_in_sleep_and_one_stuck_in_an_await():
    procs = spawn_procs({"procs": 3}, name="workers")
    workers = procs.spawn("worker", Worker)
    await workers.ping.call()
    pids = dict(enumerate(c.pid for c in procs._children))
    sleeping = workers.slice(procs=0).nap.call_one(60)
    hanging = workers.slice(procs=1).hang.call_one()
    started = time.monotonic()
    await asyncio.sleep(1.5)
    text = await asyncio.to_thread(doctor, "--client", str(os.getpid()), "--threshold", "1")
    assert time.monotonic() - started < 10
    assert f"workers rank 0: host {host_identity()} pid {pids[0]}" in text, text
    lines = text.splitlines()
    nap = next(line for line in lines if "Worker.nap" in line)
    hang = next(line for line in lines if "Worker.hang" in line)
    assert "STUCK?" in nap and "obs_actors.py" in nap and "in nap" in nap
    assert "STUCK?" in hang and "obs_actors.py" in hang and "in hang" in hang
    assert f"pid {pids[0]}" in text and f"pid {pids[1]}" in text
    assert "time.sleep(seconds)" in text and "await asyncio.Event().wait()" in text
    # The line numbers are those of the source.
    source = open(os.path.join(HERE, "obs_actors.py")).read().splitlines()
    line_no = next(i + 1 for i, line in enumerate(source) if "time.sleep(seconds)" in line)
    assert f"obs_actors.py:{line_no} in nap" in nap
    # The third proc keeps serving, and a stuck proc still answers doctor's JSON.
    assert await workers.slice(procs=2).ping.call_one() == 2
    raw = json.loads(await asyncio.to_thread(doctor, "--client", str(os.getpid()), "--json"))
    [client] = raw["clients"]
    by_pid = {p["pid"]: p for p in client["procs"]}
    assert by_pid[pids[0]]["actors"][0]["running"][0]["endpoint"] == "nap"
    assert by_pid[pids[0]]["host"]
    sleeping.cancel()
    hanging.cancel()
    await procs.stop()


SLOW_CLIENT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {here!r})
    from forge_core.actor import spawn_procs
    from obs_actors import Worker

    async def main():
        procs = spawn_procs({{"procs": 1}}, name="slowpoke")
        worker = procs.spawn("worker", Worker)
        await worker.nap.call_one(4)
        await procs.stop()

    asyncio.run(main())
""")


def test_a_call_past_the_threshold_is_named_in_the_clients_log():
    env = {**os.environ, "FORGE_SLOW_CALL_SECONDS": "1"}
    done = subprocess.run([sys.executable, "-c", SLOW_CLIENT.format(here=HERE)], env=env,
                          capture_output=True, text=True, timeout=40)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "slow call" in line]
    assert "Worker.nap" in line and "pid " in line and host_identity() in line
    assert "slowpoke rank 0" in line and "obs_actors.py" in line
