"""Forge's default allocator: one inventory per host, shared by every mesh and service.

Devices come from an inventory plugin: ``nvidia`` reads the GPUs the driver exposes (without
initialising CUDA in this process), ``fake`` stands in for them when ``FORGE_FAKE_GPUS=N`` is
set, so allocation is tested on machines without GPUs. Either way the parent's
``CUDA_VISIBLE_DEVICES`` is honoured: only the devices it lists are handed out, in its order,
non-contiguous ids and UUIDs included.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading

from forge_core.allocation import AllocationError, Grant, Request, describe_holders
from forge_core.hookspecs import hookimpl


def _visible(devices: list[str]) -> list[str]:
    """Restrict ``devices`` to the parent's CUDA_VISIBLE_DEVICES, in that order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return devices
    wanted = [d.strip() for d in visible.split(",") if d.strip()]
    known = set(devices)
    # UUIDs, or ids the inventory does not know about, are trusted as the parent gave them.
    return [d for d in wanted if d in known or not d.isdigit()]


class NvidiaInventory:
    name = "nvidia"

    def devices(self) -> list[str]:
        found = sorted(glob.glob("/proc/driver/nvidia/gpus/*"))
        if found:
            return _visible([str(i) for i in range(len(found))])
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                     timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                return []
            return _visible([m.group(1) for m in re.finditer(r"^GPU (\d+):", out, re.M)])
        return []


class FakeInventory:
    """``FORGE_FAKE_GPUS=8``: eight stand-in devices, for tests on machines without GPUs."""

    name = "fake"

    def devices(self) -> list[str]:
        count = int(os.environ.get("FORGE_FAKE_GPUS", "0") or 0)
        return _visible([str(i) for i in range(count)])


def _numa_nodes() -> list[list[int]]:
    nodes = []
    for path in sorted(glob.glob("/sys/devices/system/node/node[0-9]*/cpulist")):
        with open(path) as f:
            nodes.append(_parse_cpulist(f.read().strip()))
    return [n for n in nodes if n]


def _parse_cpulist(text: str) -> list[int]:
    cores: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cores.extend(range(int(low), int(high or low) + 1))
    return cores


class DefaultAllocator:
    """Lowest free devices first; a request is granted whole or refused at once."""

    name = "default"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gpu_holders: dict[int, tuple[str, int]] = {}  # grant id -> (owner, count)
        self._gpus_held: dict[str, int] = {}  # device -> grant id
        self._cpus_held: dict[int, int] = {}  # core -> grant id
        self._next_id = 0

    def _inventory(self) -> list[str]:
        from forge_core import plugins

        inventories = plugins._collect("forge_gpu_inventory")
        preferred = os.environ.get("FORGE_GPU_INVENTORY")
        for inventory in inventories:
            if preferred and inventory.name != preferred:
                continue
            devices = inventory.devices()
            if devices:
                return devices
        return []

    def grant(self, request: Request) -> Grant:
        devices = self._inventory() if request.gpus_per_proc else []
        with self._lock:
            grant_id = self._next_id
            self._next_id += 1
            gpus = self._take_gpus(request, devices, grant_id)
            try:
                cpus = self._take_cpus(request, grant_id)
            except AllocationError:
                self._free(grant_id)
                raise
        return Grant(gpus=gpus, cpus=cpus, release=lambda: self._release(grant_id))

    def _take_gpus(self, request: Request, devices: list[str], grant_id: int) -> list[list[str]]:
        if not request.gpus_per_proc or not devices:
            return [[] for _ in range(request.procs)]
        free = [d for d in devices if d not in self._gpus_held]
        wanted = request.procs * request.gpus_per_proc
        if wanted > len(free):
            raise AllocationError(
                f"{request.owner} asks for {wanted} GPU(s) but {len(free)} of {len(devices)} are "
                f"free on this host; held by {describe_holders(self._gpu_holders)}")
        chosen = free[:wanted]
        for device in chosen:
            self._gpus_held[device] = grant_id
        self._gpu_holders[grant_id] = (request.owner, wanted)
        per = request.gpus_per_proc
        return [chosen[i * per:(i + 1) * per] for i in range(request.procs)]

    def _take_cpus(self, request: Request, grant_id: int) -> list[list[int]]:
        if request.numa:
            nodes = _numa_nodes() or [sorted(os.sched_getaffinity(0))]
            return [nodes[i % len(nodes)] for i in range(request.procs)]
        if not request.cpus_per_proc:
            return [[] for _ in range(request.procs)]
        free = [c for c in sorted(os.sched_getaffinity(0)) if c not in self._cpus_held]
        wanted = request.procs * request.cpus_per_proc
        if wanted > len(free):
            raise AllocationError(f"{request.owner} asks for {wanted} CPU core(s) but "
                                  f"{len(free)} are free on this host")
        chosen = free[:wanted]
        for core in chosen:
            self._cpus_held[core] = grant_id
        per = request.cpus_per_proc
        return [chosen[i * per:(i + 1) * per] for i in range(request.procs)]

    def _free(self, grant_id: int) -> None:
        self._gpu_holders.pop(grant_id, None)
        for held in (self._gpus_held, self._cpus_held):
            for key in [k for k, owner in held.items() if owner == grant_id]:
                del held[key]

    def _release(self, grant_id: int) -> None:
        with self._lock:
            self._free(grant_id)

    def held(self) -> dict[str, str]:
        """Device -> owner, for diagnostics."""
        with self._lock:
            return {d: self._gpu_holders[g][0] for d, g in self._gpus_held.items()}


# One allocator per process: the inventory of this host is shared by every mesh it starts.
_DEFAULT = DefaultAllocator()


@hookimpl
def forge_allocators() -> list:
    return [_DEFAULT]


@hookimpl
def forge_gpu_inventory() -> list:
    return [FakeInventory(), NvidiaInventory()]
