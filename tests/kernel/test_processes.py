"""Process lifetime: scripts without a main guard, no orphans, fast parallel start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


def test_the_walkthrough_runs_as_written():
    out = subprocess.run([sys.executable, str(REPO / "examples" / "walkthrough.py")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "call: [1, 1, 1, 1, 1, 1, 1, 1]" in out.stdout
    assert "after broadcast: [2, 2, 2, 2, 2, 2, 2, 2]" in out.stdout


def test_a_script_without_main_guard_is_not_rerun_in_children(tmp_path):
    marker = tmp_path / "runs"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from forge_core.actor import Actor, endpoint, spawn_procs
        with open({str(marker)!r}, "a") as f:
            f.write("run\\n")

        def helper(x):
            return x * 2

        class Doubler(Actor):
            @endpoint
            def double(self, x):
                return helper(x)

        async def main():
            procs = spawn_procs(per_host={{"procs": 2}})
            print(list(await procs.spawn("d", Doubler).double.call(21)))
            await procs.stop()

        asyncio.run(main())
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[42, 42]" in out.stdout
    assert marker.read_text() == "run\n"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.parametrize("how", ["kill9", "exit"])
def test_children_die_with_their_parent(tmp_path, how):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from forge_core.actor import Actor, endpoint, spawn_procs

        class Pid(Actor):
            @endpoint
            def pid(self):
                return os.getpid()

        procs = spawn_procs(per_host={"procs": 3})
        pids = procs.spawn("p", Pid).pid.call().get(timeout=30)
        print(" ".join(map(str, pids)), flush=True)
        sys.stdin.readline()  # the test has seen the children alive
        if sys.argv[1] == "exit":
            os._exit(0)
        time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    parent.stdin.write("go\n")
    parent.stdin.flush()
    if how == "kill9":
        parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


def test_stop_ends_every_process_within_five_seconds():
    from actors import Counter
    from forge_core.actor import spawn_procs

    procs = spawn_procs(per_host={"procs": 4})
    pids = procs.spawn("c", Counter).pid.call().get(timeout=30)
    start = time.monotonic()
    procs.stop().get(timeout=10)
    assert time.monotonic() - start < 5
    assert not [p for p in pids if _alive(p)]


def test_children_get_the_environment_before_they_start():
    from forge_core.actor import Actor, spawn_procs  # noqa: F401
    from actors import Counter  # noqa: F401

    procs = spawn_procs(per_host={"procs": 2}, env={"FORGE_TEST_VALUE": "42"})
    mesh = procs.spawn("e", EnvReader)
    assert mesh.read.call().get(timeout=30) == [("42", "0"), ("42", "1")]
    procs.stop().get(timeout=10)


from forge_core.actor import Actor, endpoint  # noqa: E402


class EnvReader(Actor):
    @endpoint
    def read(self):
        return os.environ.get("FORGE_TEST_VALUE"), os.environ.get("RANK")
