"""Weight sync per backend, through ``benchmarks/bench_weights.py`` of a source checkout.

That script owns the measurement (a trainer actor publishing a state dict to two policy
actors, the floor sampled between its repeats); this module only finds it, picks the backends
this machine can run and turns its rows into figures: one sample per repeat, so median, min and
max. On the CPU backends the actors go on processes the suite already runs (a tcp mesh), which
then import torch once for every backend; the GPU backends start their own, one per GPU.
Installed without the source tree, the weights rows are skipped and say why.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .figures import Figure
from .floors import Rig
from .options import format_size

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_weights.py"
TENSOR_BYTES = 4 << 20  # the state dict is made of 4 MiB tensors (fewer when it is small)
# What one floor sample moves: a rate, steady long before 256 MiB (socket buffers are 4 MiB);
# moving the whole 1 GiB state dict through a raw socket took 3-4 s a sample here.
FLOOR_BYTES = 256 << 20
# What each backend is compared with: the cheapest way to move the same bytes without Forge.
FLOOR_NAMES = {"shm": "memcpy", "tcp": "socket", "cuda_ipc": "device copy",
               "nccl": "device copy"}


def _script() -> ModuleType | None:
    if not SCRIPT.exists():
        return None
    module = sys.modules.get("bench_weights")
    if module is None:
        spec = importlib.util.spec_from_file_location("bench_weights", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_weights"] = module
        spec.loader.exec_module(module)
        # Its actor classes are not importable by name in the spawned processes: send them by
        # value, as if the script were the one running.
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    return module


def plan(backends: list[str]) -> tuple[list[str], list[str]]:
    """The backends to run and, for the others, why not."""
    if not SCRIPT.exists():
        return [], [f"weights: {SCRIPT} not found (a source checkout has it)"]
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # The GPU backends want their plugin's own check too (cupy installed, a driver).
    from .. import plugins

    installed = plugins.weight_sync_backends()
    run, skipped = [], []
    for name in backends:
        backend = installed.get(name)
        needs_gpus = {"cuda_ipc": 1, "nccl": 3}.get(name, 0)
        if backend is None:
            skipped.append(f"weights {name}: backend not installed")
        elif gpus < needs_gpus:
            skipped.append(f"weights {name}: needs {needs_gpus} CUDA GPU(s) (trainer and 2 "
                           f"replicas{', one per GPU' if needs_gpus > 1 else ''}); found {gpus}")
        elif not backend.available()[0]:
            skipped.append(f"weights {name}: {backend.available()[1]}")
        else:
            run.append(name)
    return run, skipped


async def measure(backend: str, nbytes: int, repeats: int, rig: Rig, procs=None) -> list[Figure]:
    """Publish ``nbytes`` of float32 tensors to 2 replicas, ``repeats`` times after a warm-up:
    seconds per step and GB/s per replica, one sample per repeat, beside the backend's floor,
    which ``rig`` measures between the repeats. ``procs``: a mesh of at least 3 processes to
    run the trainer and the replicas on (CPU backends only), kept running afterwards."""
    script = _script()
    numel = min(TENSOR_BYTES, nbytes) // 4
    count = max(1, nbytes // (numel * 4))
    options: dict = {}
    floor_bytes = min(nbytes, FLOOR_BYTES)
    if backend == "shm":
        options["baseline"] = lambda: rig.memcpy_gbps(floor_bytes, repeats=2)
    elif backend == "tcp":
        options["baseline"] = lambda: rig.bulk_gbps(floor_bytes, repeats=2)
    else:
        options["device"] = "cuda"
        options["baseline"] = lambda: [script.device_copy_gbps(nbytes, repeats=2)]
        procs = None  # each process needs its own GPU: the CPU mesh will not do
        if backend == "nccl":  # one rank per GPU: trainer on 0, replicas on 1 and 2
            options["gpu_env"] = {"trainer": {"CUDA_VISIBLE_DEVICES": "0"},
                                  **{f"policy{i}": {"CUDA_VISIBLE_DEVICES": str(i + 1)}
                                     for i in range(2)}}
    row = await script.run_backend(backend, count, numel, repeats, procs=procs, **options)
    floors = row["samples"]["baseline_gbps"]
    size = format_size(row["bytes"])
    steps = row["samples"]["step_s"]
    common = dict(section="weights", transport=backend,
                  note=f"{size} to {row['replicas']} replicas, {len(steps)} repeats")
    floor_name = FLOOR_NAMES[backend]
    if backend in ("shm", "tcp"):
        floor_name += f" {format_size(floor_bytes)}"
    gbps = Figure(name=f"sync {size}, GB/s per replica", unit="GB/s", higher_is_better=True,
                  samples=[row["bytes"] / s / 1e9 for s in steps], floor=floor_name,
                  floor_samples=list(floors), **common)
    seconds = Figure(name=f"sync {size}, step", unit="s", higher_is_better=False,
                     samples=list(steps), **common)
    return [seconds, gbps]
