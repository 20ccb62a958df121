"""The service controller: an actor that owns a service's replicas and keeps them healthy.

It lives in the process that called ``as_service`` (which therefore owns the replicas'
processes and hears of their deaths first, through the kernel's supervision). It never sits on
the path of a call: interfaces route straight to replicas and ask the controller only for news
(``watch``, a long poll that answers when the replica set changes).

Health, in order of speed:
- a replica process that exits is declared dead by the kernel (``Runtime.mark_dead``) the
  moment its parent sees its pipe close; the controller is told through a death listener;
- a replica that is alive but hung fails a liveness probe (``PING``, answered on its event
  loop) and is killed;
either way it is taken out of routing at once (a new view), its remaining processes are ended,
and a new generation is started with the same arguments and ``setup``. A replica that keeps
failing to start is retried with exponential backoff, then given up with its error reported.
User exceptions never reach this module: they travel from replica to caller.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from .._runtime import Runtime
from ..actor import Actor, endpoint
from ._replica import Replica, ReplicaRecipe, describe_error, is_stopped_by_someone_else
from ._view import FAILED, HEALTHY, RESTARTING, STOPPED, STOPPING, ServiceView

log = logging.getLogger(__name__)

WATCH_TIMEOUT = 30.0  # a watch answers at least this often, so a lost caller costs little
STABLE_AFTER = 1.0  # a replica dying sooner than this after starting counts as a failed start
MAX_BACKOFF = 30.0
DRAIN_GRACE = 0.25  # between taking a scaled-away replica out of routing and stopping it

_live: "weakref.WeakSet[ServiceController]" = weakref.WeakSet()


class ServiceController(Actor):
    def __init__(self, recipe: ReplicaRecipe):
        self._recipe = recipe
        self._config = recipe.config
        self._replicas: list[Replica] = []
        self._by_proc: dict[str, Replica] = {}  # proc id -> the healthy replica it serves
        self._version = 0
        self._changed = asyncio.Event()
        self._stopped = False
        self._lock = asyncio.Lock()  # start, scale and shutdown one at a time
        self._tasks: set[asyncio.Task] = set()  # probes and recoveries, cancelled at shutdown
        self._runtime = Runtime.get()
        self._actor_id: bytes | None = None
        self._listener = self._heard_of_death
        _live.add(self)

    # -- endpoints ---------------------------------------------------------------------------
    @endpoint(concurrent=True)
    async def start(self, actor_id: bytes) -> tuple[str, Any]:
        """Start every replica; ("ok", view) or ("error", exception) after cleaning up."""
        self._actor_id = actor_id
        self._runtime.death_listeners.append(self._listener)
        async with self._lock:
            error = await self._add_replicas(self._config.num_replicas)
            if error is not None:
                await self._stop_everything()
                return ("error", error)
        self._spawn_task(self._probe_forever())
        return ("ok", self._view())

    @endpoint(concurrent=True)
    async def watch(self, version: int, timeout: float = WATCH_TIMEOUT) -> ServiceView:
        """The current view as soon as it is newer than ``version`` (or after ``timeout``)."""
        if self._version <= version and not self._stopped:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return self._view()

    @endpoint
    def view(self) -> ServiceView:
        return self._view()

    @endpoint(concurrent=True)
    async def scale(self, num_replicas: int) -> tuple[str, Any]:
        if not isinstance(num_replicas, int) or num_replicas < 1:
            return ("error", ValueError(f"scale() takes a replica count >= 1, not "
                                        f"{num_replicas!r} (use shutdown() to stop them all)"))
        async with self._lock:
            if self._stopped:
                return ("error", RuntimeError(f"service {self._recipe.service!r} was shut down"))
            have = len(self._replicas)
            if num_replicas > have:
                error = await self._add_replicas(num_replicas - have)
                if error is not None:
                    return ("error", error)
            elif num_replicas < have:
                await self._remove_replicas(self._replicas[num_replicas:])
        return ("ok", self._view())

    @endpoint(concurrent=True)
    async def shutdown(self) -> ServiceView:
        await self._stop_everything()
        return self._view()

    # -- the replica set ---------------------------------------------------------------------
    async def _add_replicas(self, count: int) -> BaseException | None:
        start = len(self._replicas)
        fresh = [Replica(start + i, self._recipe.service) for i in range(count)]
        self._replicas.extend(fresh)
        self._bump()
        results = await asyncio.gather(*(r.start(self._recipe) for r in fresh),
                                       return_exceptions=True)
        error = next((e for e in results if isinstance(e, BaseException)), None)
        if error is not None or self._stopped:
            # All or nothing: a scale-up that partly failed leaves the service as it was.
            await self._remove_replicas(fresh)
            return error
        for replica in fresh:
            self._serve(replica)
        self._bump()
        return None

    async def _remove_replicas(self, gone: list[Replica]) -> None:
        for replica in gone:
            self._unmap(replica)
            replica.retired = True
            replica.state = STOPPING
        self._bump()  # out of routing first; calls already sent may finish or be retried
        if any(r.mesh is not None for r in gone):
            await asyncio.sleep(DRAIN_GRACE)
        await asyncio.gather(*(r.stop() for r in gone), return_exceptions=True)
        for replica in gone:
            replica.state = STOPPED
        self._replicas = [r for r in self._replicas if r not in gone]
        self._bump()

    def _serve(self, replica: Replica) -> None:
        replica.mark_healthy(HEALTHY)
        for info in replica.infos:
            self._by_proc[info.proc_id] = replica

    def _unmap(self, replica: Replica) -> None:
        for info in replica.infos:
            if self._by_proc.get(info.proc_id) is replica:
                del self._by_proc[info.proc_id]

    async def _stop_everything(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        _live.discard(self)
        if self._listener in self._runtime.death_listeners:
            self._runtime.death_listeners.remove(self._listener)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        replicas = list(self._replicas)
        for replica in replicas:
            self._unmap(replica)
            replica.retired = True
            replica.state = STOPPING
        await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        for replica in replicas:
            replica.state = STOPPED
        self._bump()  # answers every watch: interfaces learn the service is gone
        # The kernel has no "stop this actor": drop it from the runtime so that it is collected
        # and later calls (a stale interface's watch) fail at once instead of waiting.
        if self._actor_id is not None:
            self._runtime.actors.pop(self._actor_id, None)

    # -- failures ----------------------------------------------------------------------------
    def _heard_of_death(self, proc_id: str, reason: str) -> None:
        # Called by the kernel from whichever thread noticed; handle it on our loop.
        if proc_id in self._by_proc:
            self._runtime.home_loop.call_soon_threadsafe(self._on_death, proc_id, reason)

    def _on_death(self, proc_id: str, reason: str) -> None:
        replica = self._by_proc.get(proc_id)
        if replica is None or replica.state != HEALTHY or self._stopped:
            return
        if is_stopped_by_someone_else(replica.procs):
            self._unmap(replica)
            replica.state = STOPPED
            self._bump()
            return
        self._spawn_task(self._recover(replica, f"its process died ({reason})", kill=False))

    async def _probe_forever(self) -> None:
        interval, timeout = self._config.probe_interval, self._config.probe_timeout
        while not self._stopped:
            await asyncio.sleep(interval)
            serving = [(r, r.generation) for r in self._replicas if r.state == HEALTHY]
            problems = await asyncio.gather(*(r.probe(timeout) for r, _ in serving))
            for (replica, generation), problem in zip(serving, problems):
                if (problem is not None and replica.state == HEALTHY
                        and replica.generation == generation and not self._stopped):
                    self._spawn_task(self._recover(replica, problem, kill=True))

    async def _recover(self, replica: Replica, reason: str, kill: bool) -> None:
        """Take a dead or hung replica out of routing, end it, and start it again."""
        replica.failures = replica.failures + 1 if replica.uptime() < STABLE_AFTER else 0
        self._unmap(replica)
        replica.state = RESTARTING
        replica.error = reason
        self._bump()  # interfaces stop routing to it now
        log.warning("%s (generation %d) is unhealthy: %s; restarting it", replica.name,
                    replica.generation, reason)
        if kill:
            replica.kill()  # calls waiting on a hung replica fail now and are retried
        await replica.stop()
        await self._restart(replica)

    async def _restart(self, replica: Replica) -> None:
        config = self._config
        while not self._stopped and not replica.retired:
            if replica.failures > config.max_restarts:
                replica.state = FAILED
                self._bump()
                log.error("%s failed to start %d times in a row; giving up on it. Last error: %s",
                          replica.name, replica.failures, replica.error)
                return
            if replica.failures:
                delay = min(config.restart_backoff * 2 ** (replica.failures - 1), MAX_BACKOFF)
                await asyncio.sleep(delay)
            if self._stopped or replica.retired:
                return
            replica.state = RESTARTING
            try:
                await replica.start(self._recipe)
            except Exception as exc:
                replica.failures += 1
                replica.error = f"restart failed: {describe_error(exc)}"
                log.warning("%s: %s", replica.name, replica.error)
                continue
            if self._stopped or replica.retired:  # scaled away or shut down meanwhile
                await replica.stop()
                return
            self._serve(replica)
            self._bump()
            log.info("%s is serving again (generation %d)", replica.name, replica.generation)
            return

    # -- views -------------------------------------------------------------------------------
    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _view(self) -> ServiceView:
        routable = {HEALTHY}
        return ServiceView(self._version, self._stopped,
                           tuple(r.entry(routable) for r in self._replicas))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("service %s: a supervision task failed", self._recipe.service,
                      exc_info=task.exception())


def shutdown_all(timeout: float = 20.0) -> int:
    """Shut down every service whose controller lives in this process (for test fixtures)."""
    import concurrent.futures

    controllers = list(_live)
    if not controllers:
        return 0
    runtime = Runtime.get()
    futures = [asyncio.run_coroutine_threadsafe(c._stop_everything(), runtime.home_loop)
               for c in controllers]
    concurrent.futures.wait(futures, timeout=timeout)
    return len(controllers)


__all__ = ["ServiceController", "shutdown_all"]
