"""The loopback Slurm cluster that multi-host tests launch agents on (tests/cluster/slurm.py).

Slurm missing or not starting fails these tests with the reason: install it with
scripts/install_slurm.sh."""

from __future__ import annotations

import shutil
import time

import pytest

from cluster.slurm import SlurmCluster, SlurmError


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.mark.timeout(120)
def test_steps_run_on_the_node_they_name(tmp_path):
    with SlurmCluster(tmp_path, nodes=3) as cluster:
        assert cluster.node_states() == {"node1": "idle", "node2": "idle", "node3": "idle"}
        for node in cluster.nodes:
            out = cluster.run(["srun", "-N1", "-w", node, "printenv", "SLURMD_NODENAME"]).stdout
            assert out.split() == [node]
        # Two tasks on one node, and one task on each node, as a mesh launch would ask.
        out = cluster.run(["srun", "-N1", "-n2", "-w", "node2", "printenv", "SLURM_PROCID"])
        assert sorted(out.stdout.split()) == ["0", "1"]
        out = cluster.run(["srun", "-N3", "--ntasks-per-node=1", "printenv", "SLURMD_NODENAME"])
        assert sorted(out.stdout.split()) == cluster.nodes


@pytest.mark.timeout(120)
def test_long_steps_on_two_nodes_then_everything_stops(tmp_path):
    cluster = SlurmCluster(tmp_path, nodes=3).start()
    try:
        # Two agent-like steps held open on different nodes, started in the background.
        agents = {node: cluster.popen(["srun", "-N1", "-w", node, "sleep", "30"])
                  for node in ("node1", "node2")}

        def running():
            out = cluster.run(["squeue", "--noheader", "--states=RUNNING", "--format=%N"]).stdout
            return sorted(out.split()) == ["node1", "node2"]

        def sleeping():
            found = [p for p in cluster.pids() if _command(p) == "sleep"]
            return found if len(found) == 2 else None

        _wait_until(running, 10, "both steps to run")
        sleeps = _wait_until(sleeping, 10, "both tasks to start")
        # The third node still takes work while the other two are busy.
        out = cluster.run(["srun", "-N1", "-w", "node3", "printenv", "SLURMD_NODENAME"]).stdout
        assert out.split() == ["node3"]

        # Killing one agent's srun ends its step; the other keeps running.
        agents["node1"].kill()
        agents["node1"].wait(5)

        def only_node2_left():
            out = cluster.run(["squeue", "--noheader", "--format=%N"]).stdout
            return out.split() == ["node2"]

        _wait_until(only_node2_left, 10, "the killed agent's step to end")
        assert agents["node2"].poll() is None
        processes = cluster.pids()
    finally:
        started = time.monotonic()
        cluster.stop()
        stop_s = time.monotonic() - started
    assert stop_s < 5
    assert cluster.pids() == []
    assert [p for p in processes if _alive(p)] == []
    assert not any(_alive(p) for p in sleeps)


@pytest.mark.timeout(120)
def test_a_daemon_that_dies_at_start_is_reported(tmp_path, monkeypatch):
    # The real Slurm tools, but a slurmctld that fails at once, as a broken install would.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("munged", "slurmd", "srun", "sinfo"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    fake = bin_dir / "slurmctld"
    fake.write_text("#!/bin/sh\necho 'slurmctld: fatal: cannot start for this test' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    cluster = SlurmCluster(tmp_path / "slurm", nodes=2)
    with pytest.raises(SlurmError, match="(?s)slurmctld exited 3.*cannot start for this test"):
        cluster.start()
    assert cluster.pids() == []  # munged and the slurmds were stopped


@pytest.mark.timeout(120)
def test_missing_slurm_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="install_slurm.sh"):
        SlurmCluster(tmp_path).start()
