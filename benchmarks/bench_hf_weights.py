"""Weight sync at real size: a Qwen-shaped model of 0.5B parameters (random weights, built
here: nothing is downloaded), published by a trainer actor and loaded by 2 policy actors,
the way ``forge grpo`` does it (HF names, a tied lm_head left out, the replicas' loader
takes the tensors by name), beside a memcpy of the same bytes measured in the same run.

    python benchmarks/bench_hf_weights.py [--repeats 3] [--dtype bfloat16] [--backend auto]

Shapes are Qwen2-0.5B's (hidden 896, 24 layers, MLP 4864, 14 heads, 2 KV heads, vocabulary
151936, tied embeddings): 494M parameters. Per step: publish (the trainer's one copy into
the snapshot), load (both replicas at once, each copying into its model), step = both. On a
GPU host the trainer and replicas sit on the GPU and the backend is cuda_ipc.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch

from forge_core.actor import Actor, endpoint, spawn_procs
from forge_core.bench.floors import memcpy_gbps

QWEN2_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                  max_position_embeddings=4096, tie_word_embeddings=True)


def build(dtype: str, device: str, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(**QWEN2_0_5B)
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device), torch.no_grad():
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval().requires_grad_(False)


class QwenTrainer(Actor):
    def __init__(self, dtype: str, device: str, backend: str):
        from forge_core.weights import WeightPublisher

        self.model = build(dtype, device)
        self.publisher = WeightPublisher(backend)

    @endpoint
    def size(self) -> tuple[int, int]:
        from forge_rl.hf import state_dict_for_sync

        tensors = state_dict_for_sync(self.model)
        return sum(t.numel() for t in tensors.values()), sum(
            t.numel() * t.element_size() for t in tensors.values())

    @endpoint
    async def publish(self, version: int):
        from forge_rl.hf import state_dict_for_sync

        with torch.no_grad():
            self.model.model.norm.weight.add_(1)  # a new version differs
        start = time.perf_counter()
        handle = await self.publisher.publish(state_dict_for_sync(self.model), version)
        return handle, time.perf_counter() - start

    @endpoint
    def checksum(self) -> float:
        return float(self.model.model.norm.weight.float().sum())


class QwenPolicy(Actor):
    def __init__(self, dtype: str, device: str):
        self.model = build(dtype, device, seed=1)

    def _load(self, tensors: dict) -> None:
        self.model.load_state_dict(tensors, strict=False)  # lm_head is the embedding (tied)

    @endpoint
    async def load(self, handle) -> float:
        start = time.perf_counter()
        assert await handle.load_into(self._load)
        return time.perf_counter() - start

    @endpoint
    def checksum(self) -> float:
        return float(self.model.model.norm.weight.float().sum())


async def measure(repeats: int, dtype: str, backend: str, device: str) -> dict:
    procs = [spawn_procs({"procs": 1}, name=name) for name in ("trainer", "policy0", "policy1")]
    try:
        trainer = procs[0].spawn("trainer", QwenTrainer, dtype, device, backend)
        policies = [p.spawn("policy", QwenPolicy, dtype, device) for p in procs[1:]]
        params, nbytes = await trainer.size.call_one()
        await asyncio.gather(*(p.checksum.call_one() for p in policies))
        rows = {"publish_s": [], "load_s": [], "step_s": [], "memcpy_gbps": []}
        for version in range(repeats + 1):  # the first is a warm-up (pools, page faults)
            start = time.perf_counter()
            handle, publish_s = await trainer.publish.call_one(version)
            loads = await asyncio.gather(*(p.load.call_one(handle) for p in policies))
            step_s = time.perf_counter() - start
            if version:
                rows["publish_s"].append(publish_s)
                rows["load_s"].append(max(loads))
                rows["step_s"].append(step_s)
                rows["memcpy_gbps"].append(statistics.median(memcpy_gbps(nbytes, repeats=1)))
        expected = await trainer.checksum.call_one()
        assert all([await p.checksum.call_one() == expected for p in policies])
        backends = [name for name, _ in handle.sources]
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
    return {"params": params, "nbytes": nbytes, "backends": backends, **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    r = asyncio.run(measure(args.repeats, args.dtype, args.backend, device))
    gb = r["nbytes"] / 1e9
    med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list) and v
           and isinstance(v[0], float)}
    print(f"Qwen2-0.5B shapes, {r['params'] / 1e6:.0f}M parameters, {args.dtype}, "
          f"{gb:.2f} GB, 2 replicas, {device}, backend {','.join(r['backends'])}; "
          f"median of {args.repeats} steps (min..max)")
    for key, label in (("publish_s", "publish"), ("load_s", "load (slowest replica)"),
                       ("step_s", "step (publish + both loads)")):
        values = r[key]
        print(f"  {label:<28} {med[key]:7.3f} s ({min(values):.3f}..{max(values):.3f})  "
              f"{gb / med[key]:6.2f} GB/s")
    print(f"  {'memcpy, same bytes, same run':<28} {gb / med['memcpy_gbps']:7.3f} s"
          f"                  {med['memcpy_gbps']:6.2f} GB/s;  load is "
          f"{gb / med['load_s'] / med['memcpy_gbps']:.2f}x memcpy, step "
          f"{gb / med['step_s'] / med['memcpy_gbps']:.2f}x")


if __name__ == "__main__":
    main()
