"""Which transport carries each pair of processes: in-process for the same process, else the
cheapest installed one that reaches the peer (shm on one host, tcp between hosts), hosts told
apart by the identity a process reports; forcing by name per mesh and globally."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from forge_core import plugins
from forge_core._runtime import Runtime
from forge_core.actor import Actor, endpoint, spawn_procs, this_proc
from forge_core.errors import TransportError

pytestmark = pytest.mark.timeout(60)

needs_shm = pytest.mark.skipif("shm" not in plugins.transports(),
                               reason="the shm transport plugin is not installed")


class Probe(Actor):
    @endpoint
    def host(self) -> str:
        return Runtime.get().info.host_id

    @endpoint(concurrent=True)  # it may call its own mesh, itself included
    async def transports_to(self, other) -> list:
        """Call every actor of ``other``; say which transport each call went over."""
        await other.host.call()
        return _used(other, asyncio.get_running_loop())


def _used(mesh, loop=None) -> list:
    runtime = Runtime.get()
    loop = loop or runtime.home_loop  # synchronous calls go out from the home loop
    return [runtime.channel(info, loop, mesh._transport).transport_name
            for info in mesh._targets()]


def _probes(**options):
    procs = spawn_procs(**options)
    mesh = procs.spawn("probe", Probe)
    mesh.host.call().get(timeout=30)
    return mesh


def test_an_actor_in_this_process_is_called_in_process():
    mesh = this_proc().spawn("probe", Probe)
    assert mesh.host.call_one().get(timeout=10) == Runtime.get().info.host_id
    assert _used(mesh) == ["local"]


@needs_shm
def test_processes_of_one_host_use_shm():
    mesh = _probes(per_host={"procs": 2})
    assert _used(mesh) == ["shm", "shm"]
    assert mesh.slice(procs=0).transports_to.call_one(mesh).get(timeout=30) == ["local", "shm"]


def test_hosts_are_told_apart_by_identity_not_address():
    # All on this machine, all on 127.0.0.1: only FORGE_HOST_ID says they are two hosts.
    host_a = _probes(per_host={"procs": 2}, env={"FORGE_HOST_ID": "test-host-a"})
    host_b = _probes(per_host={"procs": 1}, env={"FORGE_HOST_ID": "test-host-b"})
    assert host_a.host.call().get(timeout=30) == ["test-host-a", "test-host-a"]
    assert _used(host_a) == ["tcp", "tcp"]  # this process reports the real host
    first = host_a.slice(procs=0)
    assert first.transports_to.call_one(host_b).get(timeout=30) == ["tcp"]
    if "shm" in Runtime.get().transports:
        assert first.transports_to.call_one(host_a).get(timeout=30) == ["local", "shm"]


def test_a_mesh_can_force_a_transport():
    forced = _probes(per_host={"procs": 2}, transport="tcp")
    assert _used(forced) == ["tcp", "tcp"]
    # The choice travels with the handle: an actor calling this mesh uses tcp too.
    other = _probes(per_host={"procs": 1})
    assert other.transports_to.call_one(forced).get(timeout=30) == ["tcp", "tcp"]


@needs_shm
def test_one_process_reached_through_two_handles_uses_what_each_handle_asks_for():
    from forge_core._mesh import ActorMesh

    mesh = _probes(per_host={"procs": 1})
    over_tcp = ActorMesh(mesh._class_name, mesh._endpoints, mesh._actor_id, mesh._sizes,
                         mesh._spawned, transport="tcp")
    assert over_tcp.host.call().get(timeout=30) == mesh.host.call().get(timeout=30)
    assert (_used(mesh), _used(over_tcp)) == (["shm"], ["tcp"])


def test_FORGE_TRANSPORT_forces_one_for_every_peer(monkeypatch):
    monkeypatch.setenv("FORGE_TRANSPORT", "tcp")  # children inherit it
    mesh = _probes(per_host={"procs": 2})
    assert _used(mesh) == ["tcp", "tcp"]
    assert mesh.slice(procs=0).transports_to.call_one(mesh).get(timeout=30) == ["local", "tcp"]


@needs_shm
def test_forcing_a_transport_that_cannot_reach_the_peer_is_a_clear_error():
    procs = spawn_procs(per_host={"procs": 1}, env={"FORGE_HOST_ID": "elsewhere"},
                        transport="shm")
    mesh = procs.spawn("probe", Probe)
    with pytest.raises(TransportError, match=r"'shm' was forced but cannot reach .*elsewhere"):
        mesh.host.call_one().get(timeout=30)


_OVER_TCP_ONLY = textwrap.dedent("""
    import asyncio, numpy
    from forge_core import plugins
    from forge_core._runtime import Runtime
    from forge_core.actor import Actor, endpoint, spawn_procs

    def used(mesh, loop):
        runtime = Runtime.get()
        return [runtime.channel(i, loop).transport_name for i in mesh._targets()]

    class Probe(Actor):
        @endpoint
        def installed(self):
            return sorted(Runtime.get().transports)

        @endpoint(concurrent=True)
        async def transports_to(self, other):
            total = sum(await other.double.call(numpy.ones(1 << 18)))
            return used(other, asyncio.get_running_loop()), total

        @endpoint
        def double(self, array):
            return float((array * 2).sum())

    assert "shm" not in plugins.transports()
    procs = spawn_procs(per_host={"procs": 2})
    mesh = procs.spawn("probe", Probe)
    assert mesh.installed.call().get(timeout=30) == [["tcp"], ["tcp"]]
    assert mesh.double.call(numpy.ones(1 << 18)).get(timeout=30) == [2.0 * (1 << 18)] * 2
    assert used(mesh, Runtime.get().home_loop) == ["tcp", "tcp"]
    got = mesh.slice(procs=0).transports_to.call_one(mesh).get(timeout=30)
    assert got == (["local", "tcp"], 4.0 * (1 << 18)), got
    procs.stop().get(timeout=10)
    print("ok")
""")


@pytest.mark.parametrize("env", [{"FORGE_DISABLE_PLUGINS": "shm"},
                                 {"FORGE_PLUGINS": "tcp=forge_transport_tcp"}],
                         ids=["shm-blocked", "shm-not-installed"])
def test_without_shm_everything_runs_over_tcp(env):
    pytest.importorskip("numpy")
    full_env = {k: v for k, v in os.environ.items() if k != "FORGE_TRANSPORT"}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", _OVER_TCP_ONLY], capture_output=True, text=True,
                         timeout=60, env=full_env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
