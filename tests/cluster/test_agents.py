"""Several hosts, stood for by agents on 127.0.0.2, 127.0.0.3, ... with their own identities."""

from __future__ import annotations

import os

import pytest


from actors import Where
from agents_helper import Agents, cluster_secret, wait_gone
from forge_core.actor import SupervisionError, spawn_cluster_procs

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def agents(monkeypatch):
    with Agents(3) as running, cluster_secret(running.secret):
        monkeypatch.setenv("FORGE_SECRET", running.secret)
        yield running


async def test_ranks_are_continuous_across_hosts(agents):
    mesh = spawn_cluster_procs(hosts=agents.addresses[:2], per_host={"procs": 2})
    assert mesh.extent == {"hosts": 2, "procs": 2}
    actors = mesh.spawn("w", Where)
    where = list(await actors.where.call())
    assert [w[0] for w in where] == [0, 1, 2, 3]
    assert [w[1] for w in where] == ["host1", "host1", "host2", "host2"]
    assert [w[2] for w in where] == ["0", "1", "2", "3"] and {w[3] for w in where} == {"4"}
    # actors on one host call actors on another (over TCP: different host identities)
    assert await actors.slice(hosts=0, procs=0).call_other.call_one(actors) == [
        "host1", "host1", "host2", "host2"]
    pids = [w[4] for w in where]
    await mesh.stop()
    assert not wait_gone(pids)


async def test_killing_an_agent_fails_its_procs_callers_and_spares_the_rest(agents):
    mesh = spawn_cluster_procs(hosts=agents.addresses, per_host={"procs": 1})
    actors = mesh.spawn("w", Where)
    await actors.where.call()
    agents.kill(1)
    with pytest.raises(SupervisionError):
        for _ in range(50):  # the death reaches us as the connection drops
            await actors.slice(hosts=1).where.call_one()
    assert (await actors.slice(hosts=0).where.call_one())[1] == "host1"
    assert (await actors.slice(hosts=2).where.call_one())[1] == "host3"
    await mesh.stop()


async def test_an_unreachable_host_fails_the_spawn_naming_it(agents):
    dead = "127.0.0.9:1"
    mesh = spawn_cluster_procs(hosts=[agents.addresses[0], dead], per_host={"procs": 1})
    with pytest.raises(Exception, match=r"host 127\.0\.0\.9:1: cannot reach its agent"):
        await mesh.spawn("w", Where).where.call()
    await mesh.stop()


async def test_a_wrong_secret_fails_the_spawn_naming_the_host(agents):
    with Agents(1) as other:  # a different cluster secret
        mesh = spawn_cluster_procs(hosts=other.addresses, per_host={"procs": 1})
        with pytest.raises(Exception, match=rf"host {other.addresses[0]}: the agent refused"):
            await mesh.spawn("w", Where).where.call()
        await mesh.stop()


def test_client_death_stops_its_remote_procs(tmp_path, agents):
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from forge_core.actor import Actor, endpoint, spawn_cluster_procs
        class P(Actor):
            @endpoint
            def pid(self):
                return os.getpid()
        mesh = spawn_cluster_procs(hosts={agents.addresses[:2]!r}, per_host={{"procs": 2}})
        print(" ".join(map(str, mesh.spawn("p", P).pid.call().get(timeout=60))), flush=True)
        time.sleep(60)
    """))
    env = dict(os.environ, FORGE_SECRET=agents.secret)
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=env)
    pids = [int(p) for p in client.stdout.readline().split()]
    assert len(pids) == 4
    client.kill()
    client.wait()
    assert not wait_gone(pids, timeout=5)


def test_agent_requires_a_secret(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FORGE_SECRET"}
    out = subprocess.run([sys.executable, "-m", "forge_core.cli", "agent", "--listen",
                          "127.0.0.2:0"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "cluster secret is required" in out.stderr
    loose = tmp_path / "secret"
    loose.write_text("x" * 40)
    loose.chmod(0o644)
    out = subprocess.run([sys.executable, "-m", "forge_core.cli", "agent", "--listen",
                          "127.0.0.2:0", "--secret-file", str(loose)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "chmod 600" in out.stderr


async def test_a_service_across_agent_hosts(agents):
    from actors import HostReplica

    service = await HostReplica.options(num_replicas=2, hosts=agents.addresses[:2]).as_service()
    try:
        hosts = set()
        for _ in range(8):
            hosts.add(await service.host.route())
        assert hosts <= {"host1", "host2"} and hosts
        assert sorted(await service.host.fanout()) in (["host1", "host1"], ["host1", "host2"],
                                                       ["host2", "host2"])
    finally:
        await service.shutdown()
