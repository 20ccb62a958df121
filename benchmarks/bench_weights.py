"""Weight sync: a state dict from a trainer actor to two policy actors, per backend.

    python benchmarks/bench_weights.py [--quick] [--only shm,tcp,cuda_ipc,nccl] [--repeats 5]

The default state dict is 1 GiB (256 tensors of 4 MiB); ``--quick`` makes it 64 MiB. Each row
is a median over repeats (the step's min..max beside it), after one warm-up (which fills the
pools and the replicas' caches); ``run_backend`` returns every repeat's sample too:

- publish: ``publisher.publish(...)`` in the trainer (the one copy in), GB/s.
- load: ``handle.load_into(model)`` in each replica, both replicas at once, GB/s per replica.
- step: publish plus both loads, as the RL loop waits for them; "per replica" is state-dict
  bytes over that whole time.
- fetch (tcp, one replica at a time): ``handle.fetch()``, the engine-loader path, which keeps
  the received chunks as they are (no copy into a model).

Baselines come from the same run, measured between the repeats (so both see the same load
on a shared machine): single-thread memcpy (numpy) for shm, a raw socket bulk transfer between
two processes for tcp, a device-to-device copy for the GPU rows. Control
messages travel over TCP (``FORGE_TRANSPORT=tcp``), so the tcp rows measure TCP on loopback.
``forge bench`` places the trainer and the replicas on processes of a mesh it already runs
(``procs=``, started with the same ``FORGE_TRANSPORT``) instead of starting three of its own.

Not measured: cross-host TCP, page faults of the first publish (the warm-up absorbs them), and
NCCL across GPUs on a machine with one GPU (NCCL cannot put two ranks on one GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from baselines import bulk_gbps, memcpy_gbps  # noqa: E402
from forge_core.actor import Actor, endpoint, spawn_procs  # noqa: E402

ENV = {"FORGE_TRANSPORT": "tcp"}


class Blob(torch.nn.Module):
    """``count`` parameters of ``numel`` float32 each, named p.0, p.1, ..."""

    def __init__(self, count: int, numel: int, device: str = "cpu"):
        super().__init__()
        self.p = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.full((numel,), float(i), device=device), requires_grad=False)
             for i in range(count)])


class BenchTrainer(Actor):
    def __init__(self, backend: str, count: int, numel: int, device: str, group_size=None):
        from forge_core.weights import WeightPublisher

        self.model = Blob(count, numel, device)
        self.publisher = WeightPublisher(backend, group_size=group_size)

    @endpoint
    async def publish(self, version: int):
        with torch.no_grad():
            self.model.p[0].add_(1)
        start = time.perf_counter()
        handle = await self.publisher.publish(self.model.state_dict(), version)
        return handle, time.perf_counter() - start

    @endpoint
    def checksum(self) -> float:
        return float(self.model.p[0].sum())

    @endpoint
    async def close(self) -> None:
        await self.publisher.aclose()
        self.model = None  # the process may outlive this actor (a mesh lent by forge bench)


class BenchPolicy(Actor):
    def __init__(self, count: int, numel: int, device: str):
        self.model = Blob(count, numel, device)

    @endpoint
    async def load(self, handle) -> float:
        start = time.perf_counter()
        assert await handle.load_into(self.model)
        return time.perf_counter() - start

    @endpoint
    async def fetch(self, handle) -> float:
        start = time.perf_counter()
        state = await handle.fetch(str(self.model.p[0].device))
        seconds = time.perf_counter() - start
        assert len(state) == len(self.model.p)
        return seconds

    @endpoint
    def checksum(self) -> float:
        return float(self.model.p[0].sum())

    @endpoint
    def close(self) -> None:
        self.model = None  # as the trainer's: free 1 GiB in a process that stays


async def run_backend(backend: str, count: int, numel: int, repeats: int, device: str = "cpu",
                      replicas: int = 2, sequential: bool = False, gpu_env=None,
                      fetch: bool = False, baseline=None, procs=None) -> dict:
    """Publish ``count`` tensors of ``numel`` float32 to ``replicas`` policies, ``repeats``
    times after a warm-up. With ``procs`` (a mesh of at least ``replicas + 1`` processes, which
    the caller keeps running) the trainer goes on its process 0 and the policies on the next
    ones; without it each gets a process of its own, started and stopped here (with
    ``gpu_env``'s environment: a lent mesh keeps the one it was started with).

    The row holds medians (as before) and, in ``samples``, every repeat's value with
    ``repeats``, so that a caller can give min and max too."""
    nbytes = count * numel * 4
    placed = _place(procs, replicas, gpu_env or {})
    try:
        group = replicas if backend == "nccl" else None
        trainer = placed[0].spawn("trainer", BenchTrainer, backend, count, numel, device, group)
        policies = [p.spawn("policy", BenchPolicy, count, numel, device) for p in placed[1:]]
        samples = await _steps(trainer, policies, repeats, sequential, fetch, baseline)
        expected = await trainer.checksum.call_one()
        assert all([await p.checksum.call_one() == expected for p in policies])
        await trainer.close.call_one()
        await asyncio.gather(*(p.close.call_one() for p in policies))
    finally:
        if procs is None:  # ours: started above
            await asyncio.gather(*(p.stop() for p in placed))
    return _row(backend, replicas, sequential, nbytes, samples)


def _place(procs, replicas: int, envs: dict) -> list:
    """One process mesh for the trainer, then one per policy."""
    if procs is not None:
        if len(procs) < replicas + 1:
            raise ValueError(f"weight sync needs {replicas + 1} processes, the mesh has "
                             f"{len(procs)}")
        return [procs.slice(procs=i) for i in range(replicas + 1)]
    names = ["trainer"] + [f"policy{i}" for i in range(replicas)]
    return [spawn_procs({"procs": 1}, env={**ENV, **envs.get(name, {})}) for name in names]


async def _steps(trainer, policies: list, repeats: int, sequential: bool, fetch: bool,
                 baseline) -> dict[str, list[float]]:
    """Seconds per repeat (publish, each load, the whole step, fetches) and the floor's GB/s."""
    samples: dict[str, list[float]] = {
        "publish_s": [], "load_s": [], "step_s": [], "fetch_s": [], "baseline_gbps": []}
    for version in range(1, repeats + 2):
        if baseline is not None and version > 1:
            samples["baseline_gbps"].extend(baseline())  # interleaved: both see the same load
        start = time.perf_counter()
        handle, published = await trainer.publish.call_one(version)
        if sequential:
            loads = [await p.load.call_one(handle) for p in policies]
        else:
            loads = await asyncio.gather(*(p.load.call_one(handle) for p in policies))
        step = time.perf_counter() - start
        fetched = [await p.fetch.call_one(handle) for p in policies] if fetch else []
        if version == 1:
            continue  # warm-up: pools, mappings, connections
        samples["fetch_s"].extend(fetched)
        samples["publish_s"].append(published)
        samples["load_s"].extend(loads)
        samples["step_s"].append(step)
    return samples


def _row(backend: str, replicas: int, sequential: bool, nbytes: int,
         samples: dict[str, list[float]]) -> dict:
    med = statistics.median
    steps = samples["step_s"]
    return {
        "backend": backend, "replicas": replicas,
        "mode": "one at a time" if sequential else "together",
        "bytes": nbytes, "repeats": len(steps),
        "publish_gbps": nbytes / med(samples["publish_s"]) / 1e9,
        "load_gbps_per_replica": nbytes / med(samples["load_s"]) / 1e9,
        "step_s": med(steps), "step_s_min": min(steps), "step_s_max": max(steps),
        "step_gbps_per_replica": nbytes / med(steps) / 1e9,
        "fetch_gbps": nbytes / med(samples["fetch_s"]) / 1e9 if samples["fetch_s"] else None,
        "baseline_gbps": med(samples["baseline_gbps"]) if samples["baseline_gbps"] else None,
        "samples": samples,
    }


def device_copy_gbps(nbytes: int, repeats: int = 5) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        rates.append(nbytes / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    parser.add_argument("--only", default="shm,tcp,cuda_ipc,nccl")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    count, numel = (64, 1 << 18) if args.quick else (256, 1 << 20)  # 1 MiB or 4 MiB tensors
    nbytes = count * numel * 4
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"# weight sync: {count} tensors, {nbytes / 2**30:.3f} GiB, 2 replicas, median of "
          f"{args.repeats}; Python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs" + (f", GPU: {torch.cuda.get_device_name()}" if gpus else ""))
    rows, skipped = [], []

    def measured(row: dict) -> None:
        rows.append(row)
        if not args.json:
            print_row(row)

    def memcpy() -> list[float]:
        return memcpy_gbps(min(nbytes, 256 << 20), repeats=2)

    def socket() -> list[float]:
        return bulk_gbps(nbytes, repeats=1)

    if not args.json:
        print(f"{'backend':9} {'mode':>14} {'publish':>9} {'load/replica':>13} {'step':>8} "
              f"{'(min..max)':>27} {'step/replica':>13}  baseline (same run)")
    if "shm" in only:
        measured(asyncio.run(run_backend("shm", count, numel, args.repeats, baseline=memcpy)))
    if "tcp" in only:
        measured(asyncio.run(run_backend("tcp", count, numel, args.repeats, sequential=True,
                                         fetch=True, baseline=socket)))
        measured(asyncio.run(run_backend("tcp", count, numel, args.repeats, baseline=socket)))
    if gpus and ("cuda_ipc" in only or "nccl" in only):
        def device_copy() -> list[float]:
            return [device_copy_gbps(nbytes, repeats=2)]
    if "cuda_ipc" in only:
        if gpus:  # every process on GPU 0: the colocated case
            measured(asyncio.run(run_backend("cuda_ipc", count, numel, args.repeats, "cuda",
                                             baseline=device_copy)))
        else:
            skipped.append("cuda_ipc: no CUDA GPU")
    if "nccl" in only:
        if gpus >= 3:
            env = {"trainer": {"CUDA_VISIBLE_DEVICES": "0"},
                   **{f"policy{i}": {"CUDA_VISIBLE_DEVICES": str(i + 1)} for i in range(2)}}
            measured(asyncio.run(run_backend("nccl", count, numel, args.repeats, "cuda",
                                             gpu_env=env, baseline=device_copy)))
        else:
            skipped.append(f"nccl: needs 3 GPUs (trainer + 2 replicas, one rank per GPU); "
                           f"this machine has {gpus}")
    if args.json:
        print(json.dumps({"rows": rows, "skipped": skipped}, indent=1))
    for line in skipped:
        print(f"skipped: {line}")


FLOORS = {"shm": ("memcpy", 0.5), "tcp": ("socket", 0.8), "cuda_ipc": ("device copy", None),
          "nccl": ("device copy", None)}


def print_row(row: dict) -> None:
    name, target = FLOORS[row["backend"]]
    base = row["baseline_gbps"]
    ratio = f"{name} {base:.2f}GB/s: load {row['load_gbps_per_replica'] / base:.2f}x"
    if target:
        ratio += f" (target >= {target}x), step {row['step_gbps_per_replica'] / base:.2f}x"
    if row.get("fetch_gbps"):
        ratio += f"; fetch() {row['fetch_gbps']:.2f}GB/s = {row['fetch_gbps'] / base:.2f}x"
    spread = f"({row['step_s_min']:.3f}..{row['step_s_max']:.3f}s, {row['repeats']} repeats)"
    print(f"{row['backend']:9} {row['mode']:>14} {row['publish_gbps']:>7.2f}GB/s "
          f"{row['load_gbps_per_replica']:>9.2f}GB/s {row['step_s']:>7.3f}s "
          f"{spread:>27} {row['step_gbps_per_replica']:>9.2f}GB/s  {ratio}", flush=True)


if __name__ == "__main__":
    main()
