"""The suite behind ``forge bench``: what runs, in which order, and how samples become figures.

Every repeat runs every call measurement once, each floor just before the figures it is the
floor of, so a busy moment on a shared machine lands on ours and on the floor alike (a burst
shows as a wide min..max, not as a skewed ratio). Weight sync and services run after, each with
its floor inside its own step.

Starting processes is most of a run's time on a small machine (a Python process, and torch in
those that receive a tensor), so the suite starts as few as it can: one mesh of 4 processes per
transport serves every call figure, weight sync runs on 3 processes of the tcp mesh for every
CPU backend, and one service serves every routing figure (2 fast replicas for the floor, then a
slow third added by ``scale(3)``, routed by each policy in turn). Every clock starts after the
processes it measures are up and warm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import uvloop

from . import calls, floors, services, weights
from .figures import Figure
from .options import MESH_PROCS, SOCKET_KIND, WEIGHTS_MAX_REPEATS, Options, format_size
from .progress import Progress

TRANSPORT_ENV = "FORGE_TRANSPORT"  # the kernel's: forces one transport for every peer


@dataclass
class Result:
    figures: list[Figure]
    skipped: list[str]
    elapsed_s: float


class _Samples:
    """Samples as they come, by figure and by floor; figures are built once all are in."""

    def __init__(self) -> None:
        self.ours: dict[tuple, list[float]] = defaultdict(list)
        self.specs: dict[tuple, tuple[str, bool, str | None]] = {}
        self.floors: dict[str, list[float]] = defaultdict(list)

    def add(self, section: str, name: str, transport: str, unit: str, value: float, *,
            higher: bool = False, floor: str | None = None) -> None:
        key = (section, name, transport)
        self.specs[key] = (unit, higher, floor)
        self.ours[key].append(value)

    def floor(self, name: str, value: float) -> None:
        self.floors[name].append(value)

    def figure(self, section: str, name: str, transport: str) -> Figure:
        key = (section, name, transport)
        unit, higher, floor = self.specs[key]
        return Figure(*key, unit=unit, higher_is_better=higher, samples=list(self.ours[key]),
                      floor=floor, floor_samples=list(self.floors.get(floor, [])))

    def figures(self) -> list[Figure]:
        return [self.figure(*key) for key in self.ours]


@dataclass
class _Step:
    label: str
    run: Callable[[], None]


@dataclass
class Suite:
    """The measurements as steps that each add one sample per figure (and its floor's)."""

    options: Options
    samples: _Samples = field(default_factory=_Samples)
    skipped: list[str] = field(default_factory=list)
    extra: list[Figure] = field(default_factory=list)
    procs: dict = field(default_factory=dict)    # transport -> ProcMesh (not in-process)
    meshes: dict = field(default_factory=dict)   # transport -> (ProcMesh or None, ActorMesh)
    weights_mesh: object = None  # weight sync's own processes, when no tcp mesh runs
    service: object = None  # the services section's one service (its interface)
    service_replicas: int = 0
    # One tensor per size for the whole run: allocating 256 MiB is not what we measure.
    tensor_cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loop = uvloop.new_event_loop()  # one loop for every Forge call: channels persist
        self.rig = floors.Rig()  # the floors' servers and buffers, for the whole run

    def call(self, coro):
        return self.loop.run_until_complete(coro)

    # -- the plan -------------------------------------------------------------------------
    def steps(self) -> list[_Step]:
        o = self.options
        steps: list[_Step] = []
        if self.needs_meshes():
            steps.append(_Step("start meshes", self.start_meshes))
            for r in range(o.repeat):
                steps += self.call_steps(f"{r + 1}/{o.repeat}")
        run: list[str] = []
        if "weights" in o.sections:
            run, skipped = weights.plan(list(o.weight_backends))
            self.skipped += skipped
        if run:
            if self.needs_meshes():
                # Their memory (pooled buffers, received tensors) is not the weights' to share;
                # the tcp mesh stays: weight sync runs on its processes.
                steps.append(_Step("stop meshes but tcp", lambda: self.stop_meshes(keep="tcp")))
            for backend in run:
                steps.append(_Step(f"weights {backend} {format_size(o.weights_bytes)} to 2 "
                                   f"replicas", lambda b=backend: self.weights(b)))
        if run or self.needs_meshes():
            steps.append(_Step("stop meshes", self.stop_meshes))
        if "services" in o.sections:
            steps.append(_Step("services: 2 fast replicas (floor), route() vs call_one()",
                               self.fast_replicas))
            for policy in sorted(routing_policies()):
                steps.append(_Step(f"services: {policy}", lambda p=policy: self.slow_replica(p)))
        return steps

    def call_steps(self, repeat: str) -> list[_Step]:
        o, steps = self.options, []
        cross = [t for t in o.transports if t != "in-process"]
        if {"latency", "mesh"} & set(o.sections):
            for t in cross:
                kind = SOCKET_KIND[t]
                if "latency" in o.sections:
                    steps.append(_Step(f"[{repeat}] floor {kind} ping-pong",
                                       lambda k=kind: self.ping_pong_floor(k)))
                if "mesh" in o.sections:
                    steps.append(_Step(f"[{repeat}] floor {kind} gather",
                                       lambda k=kind: self.gather_floor(k)))
        for t in o.transports:
            if "latency" in o.sections:
                steps.append(_Step(f"[{repeat}] {t} rtt", lambda t=t: self.latency(t)))
            if "pipelined" in o.sections:
                steps.append(_Step(f"[{repeat}] {t} pipelined", lambda t=t: self.pipelined(t)))
            if "mesh" in o.sections and t != "in-process":
                steps.append(_Step(f"[{repeat}] {t} call() x{MESH_PROCS}",
                                   lambda t=t: self.mesh_call(t)))
        if "tensor" in o.sections:
            for size in o.sizes:
                steps.append(_Step(f"[{repeat}] floors {format_size(size)}",
                                   lambda s=size: self.bulk_floors(s)))
                for t in o.transports:
                    steps.append(_Step(f"[{repeat}] {t} tensor {format_size(size)}",
                                       lambda t=t, s=size: self.tensor(t, s)))
        return steps

    # -- meshes -----------------------------------------------------------------------------
    def needs_meshes(self) -> bool:
        calls_sections = {"latency", "pipelined", "mesh", "tensor"} & set(self.options.sections)
        return bool(calls_sections and self.options.transports)

    def spawn_procs(self) -> None:
        """Start the call figures' processes; returns at once, they boot in the background
        (``run`` calls this first, so that they boot while this process imports torch)."""
        from ..actor import spawn_procs

        for t in self.options.transports:
            if t != "in-process" and t not in self.procs:
                # The environment makes the children's own connections (weight sync's, between
                # trainer and replicas) use the transport too, not only ours to them.
                self.procs[t] = spawn_procs(per_host={"procs": MESH_PROCS}, transport=t,
                                            env={TRANSPORT_ENV: t})

    def start_meshes(self) -> None:
        """Every mesh up, connected and warm before any clock starts."""
        from ..actor import this_proc

        self.spawn_procs()
        # torch first, before the first message: the kernel's pickler checks tensors against
        # sys.modules["torch"] and fails on a torch still half imported by this thread.
        tensor = self.tensors(min(self.options.sizes)) if "tensor" in self.options.sections \
            else None
        for t in self.options.transports:
            procs = self.procs.get(t)
            host = procs if procs is not None else this_proc()
            self.meshes[t] = (procs, host.spawn("forge_bench", calls.Bench))

        async def warm() -> None:
            await asyncio.gather(*(mesh.nop.call() for _, mesh in self.meshes.values()))
            if tensor is not None:  # each receiver imports torch here, all at once, not timed
                await asyncio.gather(*(self.one(t).nbytes.call_one(tensor) for t in self.meshes))

        self.call(warm())

    def stop_meshes(self, keep: str | None = None) -> None:
        """Stop every mesh (but ``keep``'s) and let the call figures' buffers go."""
        for t in [t for t in self.procs if t != keep]:
            self.call(self.procs.pop(t).stop())
        for t in [t for t in self.meshes if t != keep]:
            del self.meshes[t]
        if keep is None and self.weights_mesh is not None:
            self.call(self.weights_mesh.stop())
            self.weights_mesh = None
        self.tensor_cache.clear()
        self.rig.forget_buffers()

    def close(self) -> None:
        try:
            if self.service is not None:
                self.call(self.service.shutdown())
                self.service = None
            self.stop_meshes()
        finally:
            self.rig.close()
            self.loop.close()

    def one(self, transport: str):
        procs, mesh = self.meshes[transport]
        return mesh if procs is None else mesh.slice(procs=0)

    # -- call figures -------------------------------------------------------------------------
    def ping_pong_floor(self, kind: str) -> None:
        times = self.rig.ping_pong_us(kind, self.options.rtt_calls)
        self.samples.floor(f"{kind} ping-pong p50", floors.percentile(times, 50))
        self.samples.floor(f"{kind} ping-pong p99", floors.percentile(times, 99))

    def latency(self, t: str) -> None:
        times = self.call(calls.latencies_us(self.one(t), self.options.rtt_calls))
        kind = SOCKET_KIND.get(t)
        for q in (50, 99):
            self.samples.add("latency", f"rtt p{q}", t, "us", floors.percentile(times, q),
                             floor=f"{kind} ping-pong p{q}" if kind else None)

    def pipelined(self, t: str) -> None:
        rate = self.call(calls.pipelined_calls_s(self.one(t), self.options.pipelined_calls))
        self.samples.add("pipelined", "pipelined", t, "calls/s", rate, higher=True)

    def gather_floor(self, kind: str) -> None:
        times = self.rig.gather_us(kind, MESH_PROCS, self.options.gather_calls)
        self.samples.floor(f"{kind} gather{MESH_PROCS} calls/s", 1e6 * len(times) / sum(times))
        self.samples.floor(f"{kind} gather{MESH_PROCS} p50", floors.percentile(times, 50))

    def mesh_call(self, t: str) -> None:
        times = self.call(calls.gather_us(self.meshes[t][1], self.options.gather_calls))
        kind, name = SOCKET_KIND[t], f"call() {MESH_PROCS} procs"
        self.samples.add("mesh", name, t, "calls/s", 1e6 * len(times) / sum(times), higher=True,
                         floor=f"{kind} gather{MESH_PROCS} calls/s")
        self.samples.add("mesh", f"{name} p50", t, "us", floors.percentile(times, 50),
                         floor=f"{kind} gather{MESH_PROCS} p50")

    # -- tensors ------------------------------------------------------------------------------
    @staticmethod
    def transfers(size: int) -> int:
        """Transfers per sample: enough small ones that a sample is not one scheduler tick."""
        return max(1, min(20, (64 << 20) // size))

    def bulk_floors(self, size: int) -> None:
        n, wanted = self.transfers(size), set(self.options.transports)
        if wanted & {"in-process", "shm"}:
            self.samples.floor(f"memcpy {format_size(size)}",
                               floors.median(self.rig.memcpy_gbps(size, n)))
        if "tcp" in wanted:
            self.samples.floor(f"socket {format_size(size)}",
                               floors.median(self.rig.bulk_gbps(size, n)))

    def tensor(self, t: str, size: int) -> None:
        tensor = self.tensors(size)
        rates = self.call(calls.tensor_gbps(self.one(t), tensor, self.transfers(size)))
        floor = "socket" if t == "tcp" else "memcpy"
        self.samples.add("tensor", f"tensor {format_size(size)}", t, "GB/s",
                         floors.median(rates), higher=True, floor=f"{floor} {format_size(size)}")

    def tensors(self, size: int):
        if size not in self.tensor_cache:
            import torch

            self.tensor_cache[size] = torch.rand(size // 4)
        return self.tensor_cache[size]

    # -- weights and services -------------------------------------------------------------------
    def weights(self, backend: str) -> None:
        repeats = min(self.options.repeat, WEIGHTS_MAX_REPEATS)
        self.extra += self.call(weights.measure(backend, self.options.weights_bytes, repeats,
                                                self.rig, procs=self.weights_procs()))
        self.rig.forget_buffers()  # a 1 GiB payload is no use to what comes next

    def weights_procs(self):
        """Weight sync's processes: the tcp mesh's (control over tcp, as in bench_weights.py),
        or 3 of their own, started like them, when no tcp figure runs."""
        if "tcp" in self.procs:
            return self.procs["tcp"]
        if self.weights_mesh is None:
            from ..actor import spawn_procs

            self.weights_mesh = spawn_procs(per_host={"procs": 3}, transport="tcp",
                                            env={TRANSPORT_ENV: "tcp"})
        return self.weights_mesh

    def replicas(self, count: int):
        """The one service, with ``count`` replicas: 2 fast ones, then a slow third."""
        async def resize() -> None:
            if self.service is None:
                self.service = await services.Bench.options(num_replicas=count).as_service(
                    slow_replica=services.SLOW_REPLICA)
            elif self.service_replicas != count:
                await self.service.scale(count)  # scale(2) drops the slow one again
            self.service_replicas = count

        self.call(resize())
        return self.service

    def fast_replicas(self) -> None:
        """The floor of the routing figures, on the service's 2 fast replicas: latencies
        under load, and route() beside a direct call_one() to one replica."""
        svc = self.replicas(2)

        async def measure() -> list[dict]:
            await services.route_vs_call_one(svc, 300)  # warm-up
            for _ in range(self.options.repeat):
                routed, direct = await services.route_vs_call_one(svc, self.options.route_calls)
                self.samples.add("services", "route() p50", "round_robin", "us", routed,
                                 floor="call_one() p50")
                self.samples.floor("call_one() p50", direct)
            return await services.load_windows(svc, self.options.repeat, self.options.window_s)

        for window in self.call(measure()):
            for q in ("p50", "p99"):
                self.samples.floor(f"2 fast replicas {q}", window[f"{q}_ms"])

    def slow_replica(self, policy: str) -> None:
        svc = services.routed_by(self.replicas(3), policy)
        windows = self.call(services.load_windows(svc, self.options.repeat, self.options.window_s,
                                                  sessions=policy == "session_sticky"))
        for window in windows:
            for q in ("p50", "p99"):
                self.samples.add("services", f"{q}, 1 of 3 replicas slow", policy, "ms",
                                 window[f"{q}_ms"], floor=f"2 fast replicas {q}")


def routing_policies() -> list[str]:
    from .. import plugins

    return list(plugins.routing_policies())


def run(options: Options) -> Result:
    """Run the suite: every figure is a median over ``options.repeat`` samples."""
    # Replica restarts and slow-call warnings are expected here; they would tear the table.
    logging.getLogger("forge_core.service").setLevel(logging.ERROR)
    suite = Suite(options)
    start = time.monotonic()
    progress = None
    try:
        if suite.needs_meshes():
            suite.spawn_procs()  # they boot while planning imports torch here
        steps = suite.steps()
        progress = Progress(len(steps), enabled=options.progress)
        for step in steps:
            progress.step(step.label)
            step.run()
    finally:
        if progress is not None:
            progress.close()
        suite.close()
    return Result(suite.samples.figures() + suite.extra, suite.skipped,
                  time.monotonic() - start)
