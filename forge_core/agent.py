"""Host agents: ``forge agent`` starts, supervises and reaps procs on its host for clients.

Whatever a site uses to start one process per host (Slurm's ``srun``, a Kubernetes pod, ssh, a
systemd unit) starts ``forge agent --listen ADDRESS:PORT``. The agent is a Forge process like
any other, with one actor, ``HostAgent``, at a well-known id. Every connection to it must pass
the HMAC handshake over the cluster secret (``FORGE_SECRET`` or ``--secret-file``), so only
holders of the secret can make it start processes.

A client's ``spawn_cluster_procs(hosts=[...], per_host=...)`` asks every agent at once for its
share of the mesh, numbering ranks continuously across hosts, then keeps one ``hold`` call open
per agent. If the client dies, its connection drops, the runtime cancels that call, and the
agent stops the client's processes: no orphans on remote hosts either.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import stat
import sys
import uuid
from typing import Any

from . import allocation
from ._endpoint import endpoint, endpoints_of
from ._procs import launch
from .errors import ForgeError
from .transport import ProcInfo

log = logging.getLogger("forge.agent")

AGENT_ACTOR_ID = b"forge.agent"


class HostAgent:
    """Spawns procs on this host on request, and stops them when asked or when their client
    disconnects."""

    def __init__(self) -> None:
        self._meshes: dict[str, list] = {}  # mesh id -> ChildProc list
        self._releases: dict[str, Any] = {}
        self._stopped: dict[str, asyncio.Event] = {}

    @endpoint
    def info(self) -> dict:
        from ._runtime import Runtime

        runtime = Runtime.get()
        return {"host_id": runtime.info.host_id, "pid": os.getpid(),
                "meshes": {k: len(v) for k, v in self._meshes.items()}}

    @endpoint
    def free_port(self) -> int:
        return allocation.free_port(os.environ.get("FORGE_TCP_HOST", "127.0.0.1"))

    @endpoint(concurrent=True)
    async def spawn(self, mesh_id: str, request: allocation.Request, first_rank: int,
                    world_size: int, master: tuple[str, int], env: dict[str, str]
                    ) -> list[ProcInfo]:
        from ._runtime import Runtime

        envs, release = allocation.plan_mesh(request, first_rank, world_size, master)
        for child_env in envs:
            child_env.update(env)
        children = launch(Runtime.get(), envs)
        self._meshes[mesh_id] = children
        self._releases[mesh_id] = release
        self._stopped[mesh_id] = asyncio.Event()
        try:
            return list(await asyncio.gather(*(c.ready for c in children)))
        except BaseException:
            await self._stop(mesh_id)
            raise

    @endpoint(concurrent=True)
    async def hold(self, mesh_id: str) -> None:
        """Returns when the mesh is stopped; if the client disconnects first, stop the mesh."""
        stopped = self._stopped.get(mesh_id)
        if stopped is None:
            return
        try:
            await stopped.wait()
        except asyncio.CancelledError:
            log.warning("client of mesh %s disconnected; stopping its processes", mesh_id)
            await self._stop(mesh_id)
            raise

    @endpoint(concurrent=True)
    async def stop(self, mesh_id: str) -> None:
        await self._stop(mesh_id)

    async def _stop(self, mesh_id: str) -> None:
        children = self._meshes.pop(mesh_id, [])
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
        release = self._releases.pop(mesh_id, None)
        if release is not None:
            release()
        stopped = self._stopped.pop(mesh_id, None)
        if stopped is not None:
            stopped.set()


# ---------------------------------------------------------------------------------------------
# The client side


def agent_handle(address: str):
    """An actor mesh of one: the HostAgent listening at ``address`` (host:port)."""
    from ._mesh import ActorMesh

    info = ProcInfo(f"agent@{address}", f"agent@{address}", 0, {"tcp": address})
    spawned: concurrent.futures.Future = concurrent.futures.Future()
    spawned.set_result(([info], [None]))
    return ActorMesh("HostAgent", endpoints_of(HostAgent), AGENT_ACTOR_ID, {}, spawned, "tcp")


async def spawn_on_agents(hosts: list[str], sizes: dict[str, int], per_host_count: int,
                          request: allocation.Request, env: dict[str, str]
                          ) -> tuple[list[ProcInfo], Any]:
    """Ask every agent for its share of a mesh (on the home loop). Returns the processes in
    rank order and an async ``stop()``."""
    mesh_id = uuid.uuid4().hex[:12]
    agents = [agent_handle(address) for address in hosts]

    async def ask(index: int, call):
        try:
            return await call
        except Exception as exc:
            raise ForgeError(f"host {hosts[index]}: {_explain(exc)}") from exc

    master_port = await ask(0, agents[0].free_port.call_one())
    master = (hosts[0].rpartition(":")[0], master_port)
    world = per_host_count * len(hosts)
    shares = await asyncio.gather(
        *(ask(i, agent.spawn.call_one(mesh_id, request, i * per_host_count, world, master, env))
          for i, agent in enumerate(agents)), return_exceptions=True)
    failures = [s for s in shares if isinstance(s, BaseException)]
    holds = []
    for i, agent in enumerate(agents):
        if not isinstance(shares[i], BaseException):
            hold = agent.hold.call_one(mesh_id)  # stays open for the mesh's lifetime
            hold.add_done_callback(_ignore_failure)  # an agent that dies fails its procs' calls
            holds.append(hold)

    async def stop() -> None:
        await asyncio.gather(*(agent.stop.call_one(mesh_id) for agent in agents),
                             return_exceptions=True)
        await asyncio.gather(*holds, return_exceptions=True)

    if failures:
        await stop()
        raise failures[0]
    return [info for share in shares for info in share], stop


def _ignore_failure(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _explain(exc: BaseException) -> str:
    text = str(exc)
    if "cluster secret" in text:
        return f"the agent refused the cluster secret ({text})"
    if "cannot connect" in text or "unreachable" in text:
        return f"cannot reach its agent ({text})"
    return text


# ---------------------------------------------------------------------------------------------
# `forge agent`


def read_secret(secret_file: str | None) -> str:
    """The cluster secret, hex, from ``--secret-file`` (owner-only) or ``FORGE_SECRET``."""
    if secret_file:
        mode = os.stat(secret_file).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SystemExit(f"forge agent: {secret_file} must be readable by its owner only "
                             f"(chmod 600 {secret_file})")
        with open(secret_file) as f:
            text = f.read().strip()
        return text.encode().hex() if not _is_hex(text) else text
    secret = os.environ.get("FORGE_SECRET")
    if not secret:
        raise SystemExit("forge agent: a cluster secret is required: set FORGE_SECRET (hex) or "
                         "pass --secret-file PATH (a file readable only by you)")
    return secret


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
        return len(text) >= 32
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--host-id", help="this host's identity (default: hostname and boot id)")
    parser.add_argument("--secret-file", help="file holding the cluster secret (mode 600)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    os.environ["FORGE_SECRET"] = read_secret(args.secret_file)
    os.environ["FORGE_TCP_HOST"] = host  # the procs it starts listen where clients can reach
    if args.host_id:
        os.environ["FORGE_HOST_ID"] = args.host_id
    logging.basicConfig(level=logging.INFO, format="forge agent: %(message)s")

    from ._actors import ActorHost
    from ._runtime import Runtime, new_loop
    from ._shape import Point

    loop = new_loop()
    asyncio.set_event_loop(loop)
    runtime = Runtime(loop, listen_options={"tcp": {"host": host, "port": int(port)}})
    Runtime._instance = runtime
    loop.run_until_complete(runtime.start())
    runtime.actors[AGENT_ACTOR_ID] = ActorHost("forge.agent", HostAgent(), Point({}, {}))
    log.info("listening on %s as host %s", runtime.info.addresses.get("tcp"), runtime.info.host_id)
    print(f"forge agent ready on {runtime.info.addresses.get('tcp')}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
