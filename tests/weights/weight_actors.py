"""A trainer and a policy for the weight-sync tests (importable by name in child processes)."""

from __future__ import annotations

import asyncio
import os

import torch

from forge_core.actor import Actor, endpoint
from forge_core.weights import WeightPublisher, WeightsGate


def make_model(seed: int, width: int = 64, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    blocks: list[torch.nn.Module] = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, width), torch.nn.LayerNorm(width)]
    model = torch.nn.Sequential(*blocks)
    model.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # a non-float entry
    return model


def memfd_descriptors() -> int:
    """Weight segments this process holds open (distinct files: mmap keeps a dup of each)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "forge-weights" in os.readlink(f"/proc/self/fd/{fd}"):
                inodes.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return len(inodes)


def memfd_mappings() -> int:
    """Weight segments this process has mapped."""
    with open("/proc/self/maps") as maps:
        return len({line.split()[4] for line in maps if "memfd:forge-weights" in line})


class Trainer(Actor):
    def __init__(self, backend: str = "auto", seed: int = 0, width: int = 64):
        self.model = make_model(seed, width)
        self.publisher = WeightPublisher(backend)

    @endpoint
    async def step_and_publish(self, version: int):
        with torch.no_grad():  # stands in for an optimizer step
            for param in self.model.parameters():
                param.add_(torch.randn_like(param))
            self.model.steps += 1
        return await self.publisher.publish(self.model.state_dict(), version)

    @endpoint
    async def publish(self, version: int):
        return await self.publisher.publish(self.model.state_dict(), version)

    @endpoint
    def weights(self) -> dict:
        return {name: t.clone() for name, t in self.model.state_dict().items()}

    @endpoint
    def segments(self) -> int:
        return memfd_descriptors()

    @endpoint
    async def close(self) -> int:
        await self.publisher.aclose()
        return memfd_descriptors()

    @endpoint
    def pid(self) -> int:
        return os.getpid()


class Policy(Actor):
    def __init__(self, seed: int = 1, width: int = 64):
        self.model = make_model(seed, width)
        self.gate = WeightsGate()

    @endpoint(concurrent=True)
    async def generate(self, steps: int = 3) -> tuple:
        """Reads the weights across a few awaits: they must not change under it."""
        async with self.gate.generating() as version:
            before = fingerprint(self.model)
            for _ in range(steps):
                await asyncio.sleep(0.002)
                with torch.no_grad():
                    self.model(torch.ones(1, self.model[0].in_features))
            return version, fingerprint(self.model) == before

    @endpoint(concurrent=True)
    async def update_weights(self, handle) -> bool:
        return await self.gate.update(handle, self.model)

    @endpoint
    async def fetch(self, handle) -> dict:
        return await handle.fetch()

    @endpoint
    def weights(self) -> dict:
        return {name: t.clone() for name, t in self.model.state_dict().items()}

    @endpoint
    def mappings(self) -> int:
        return memfd_mappings()


def fingerprint(model: torch.nn.Module) -> bytes:
    import hashlib

    digest = hashlib.sha1()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


class GpuTrainer(Trainer):
    """The trainer on the GPU this process sees."""

    def __init__(self, backend: str, seed: int = 0, width: int = 256, group_size=None):
        self.model = make_model(seed, width).cuda()
        self.publisher = WeightPublisher(backend, group_size=group_size)

    @endpoint
    def weights(self) -> dict:
        return {name: t.cpu() for name, t in self.model.state_dict().items()}


class GpuPolicy(Policy):
    def __init__(self, seed: int = 1, width: int = 256):
        self.model = make_model(seed, width).cuda()
        self.gate = WeightsGate()

    @endpoint
    def weights(self) -> dict:
        return {name: t.cpu() for name, t in self.model.state_dict().items()}

    @endpoint
    async def fetch_on_gpu(self, handle) -> dict:
        fetched = await handle.fetch("cuda")
        assert all(t.is_cuda for t in fetched.values())
        return {name: t.cpu() for name, t in fetched.items()}

    @endpoint
    def generate(self, steps: int = 1) -> tuple:  # not used on GPU
        return self.gate.version, True


class NcclProbe(Actor):
    """One NCCL rank on its GPU, bootstrapped through actor messages."""

    def __init__(self):
        self.group = None

    @endpoint
    def unique_id(self):
        from forge_transport_nccl.nccl import NcclGroup

        return NcclGroup.new_unique_id()

    @endpoint
    async def join(self, world_size: int, unique_id, rank: int) -> int:
        from forge_transport_nccl.nccl import NcclGroup

        self.group = await asyncio.to_thread(NcclGroup, world_size, unique_id, rank, 0)
        return torch.cuda.current_device()

    @endpoint
    async def broadcast_model(self, seed: int) -> dict:
        """Rank 0 packs make_model(seed) into one buffer and broadcasts it; every rank unpacks
        what it received into a state dict (rank 0 into a second buffer: a world of one still
        moves the bytes)."""
        from forge_core.weights import Chunk, _views, plan_layout

        state = make_model(seed if self.group.rank == 0 else seed + 1000).cuda().state_dict()
        layout, nbytes = plan_layout(list(state.items()))
        flat = torch.zeros(nbytes, dtype=torch.uint8, device="cuda")
        if self.group.rank == 0:
            for spec, tensor in zip(layout, state.values()):
                flat[spec.offset:spec.offset + spec.nbytes].copy_(
                    tensor.contiguous().view(-1).view(torch.uint8))
        received = torch.full_like(flat, 7)
        self.group.broadcast(flat, root=0, out=received)
        torch.cuda.synchronize()
        views = _views(tuple(layout), Chunk(0, len(layout), received))
        return {name: t.cpu() for name, t in views.items()}

    @endpoint
    def close(self) -> None:
        self.group.close()
