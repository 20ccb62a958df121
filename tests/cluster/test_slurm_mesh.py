"""A multi-host mesh under a real (throwaway) Slurm cluster: one `forge agent` per node,
launched with `srun`, as a site would. Fails, never skips, where Slurm cannot start."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from actors import Where
from agents_helper import cluster_secret, free_port, wait_gone
from cluster.slurm import SlurmCluster
from forge_core.actor import spawn_cluster_procs

pytestmark = pytest.mark.timeout(120)


def _start_agents(cluster: SlurmCluster, secret: str) -> list[str]:
    addresses = []
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for index, node in enumerate(cluster.nodes):
        host = f"127.0.0.{index + 2}"
        address = f"{host}:{free_port(host)}"
        command = ["srun", "-N1", "-n1", "-w", node, "--export=ALL",
                   sys.executable, "-m", "forge_core.cli", "agent", "--listen", address,
                   "--host-id", node]
        cluster.env.update(FORGE_SECRET=secret,
                           PYTHONPATH=os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
        proc = cluster.popen(command, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert "ready" in line, f"agent on {node} did not start: {line!r}\n{cluster.log(node)}"
        addresses.append(address)
    return addresses


def test_mesh_across_slurm_nodes(tmp_path, monkeypatch):
    secret = secrets.token_hex(32)
    with SlurmCluster(tmp_path, nodes=2) as cluster:
        addresses = _start_agents(cluster, secret)
        monkeypatch.setenv("FORGE_SECRET", secret)
        with cluster_secret(secret):
            mesh = spawn_cluster_procs(hosts=addresses, per_host={"procs": 2})
            actors = mesh.spawn("w", Where)
            where = list(actors.where.call().get(timeout=60))
            assert [w[0] for w in where] == [0, 1, 2, 3]
            assert [w[1] for w in where] == ["node1", "node1", "node2", "node2"]
            pids = [w[4] for w in where]
            mesh.stop().get(timeout=15)
            assert not wait_gone(pids)
            # ... and a service whose replicas span the Slurm nodes
            import asyncio

            from actors import HostReplica

            async def service_across_nodes() -> list:
                service = await HostReplica.options(num_replicas=2, hosts=addresses).as_service()
                try:
                    return [await service.host.route() for _ in range(4)]
                finally:
                    await service.shutdown()

            assert set(asyncio.run(service_across_nodes())) <= {"node1", "node2"}
