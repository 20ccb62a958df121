"""What a policy replica generates with: vLLM on the model directory, or transformers.

Both take prompts as token ids (the chat template applied by the replica), return groups of
``Completion`` with the sampled tokens' logprobs under the temperature-1 distribution, take
new weights by their Hugging Face names (``load``), and report the logprobs they assign to a
fixed completion (``logprobs``), which is how a test sees that a sync took.
"""

from __future__ import annotations

import os
from typing import Any

from forge_rl.types import Completion


def make_engine(kind: str, model_dir: str, dtype: str, seed: int, max_len: int,
                device: str = "cpu") -> Any:
    if kind == "auto":
        import importlib.util

        kind = "vllm" if importlib.util.find_spec("vllm") is not None else "torch"
    if kind == "vllm":
        return VLLMEngine(model_dir, dtype, seed, max_len)
    return TorchEngine(model_dir, dtype, device)


def _completion(tok, text: str, prompt_ids: list[int], new: list[int],
                logprobs: list[float]) -> Completion:
    stopped = bool(new) and new[-1] == tok.eos_token_id
    body = new[:-1] if stopped else new
    return Completion(text, prompt_ids, tok.decode(body), new, logprobs,
                      "stop" if stopped else "length")


class TorchEngine:
    name = "torch"

    def __init__(self, model_dir: str, dtype: str, device: str = "cpu"):
        from forge_rl import hf

        self.tokenizer = hf.load_tokenizer(model_dir)
        self.model = hf.load_model(model_dir, dtype, device).eval()
        self.device = device

    def load(self, tensors: dict) -> None:
        # A tied lm_head is not sent (it is the embedding): load the rest by name.
        missing, unexpected = self.model.load_state_dict(tensors, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise ValueError(f"weights do not fit the model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")

    def sample(self, prompts: list[str], prompt_ids: list[list[int]], n: int, max_tokens: int,
               temperature: float, seed: int | None) -> list[list[Completion]]:
        import torch

        tok = self.tokenizer
        groups = []
        for index, (text, ids) in enumerate(zip(prompts, prompt_ids)):
            if seed is not None:
                torch.manual_seed(seed * 1009 + index)  # the same chunk samples the same
            with torch.no_grad():
                out = self.model.generate(
                    torch.tensor([ids], device=self.device),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                    do_sample=temperature > 0, temperature=max(temperature, 1e-5), top_k=0,
                    top_p=1.0, max_new_tokens=max_tokens, num_return_sequences=n,
                    output_logits=True, return_dict_in_generate=True,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
            group = []
            for row in range(n):
                new = out.sequences[row, len(ids):].tolist()
                if tok.eos_token_id in new:
                    new = new[:new.index(tok.eos_token_id) + 1]
                group.append(_completion(tok, text, ids, new,
                                         [float(logprobs[row, t, x]) for t, x in enumerate(new)]))
            groups.append(group)
        return groups

    def logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        import torch

        from forge_rl import hf

        with torch.no_grad():
            [lps] = hf.completion_logprobs(self.model, [prompt_ids], [completion_ids],
                                           self.tokenizer.pad_token_id)
        return lps.tolist()


class VLLMEngine:
    """vLLM in this process (no engine subprocess), weights swapped in place by name with the
    worker's ``reload_weights`` (the parameters' loaders are gone after start-up on the CPU)."""

    name = "vllm"

    def __init__(self, model_dir: str, dtype: str, seed: int, max_len: int):
        from forge_rl import hf

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        self.tokenizer = hf.load_tokenizer(model_dir)
        self.llm = LLM(model=model_dir, dtype=dtype, max_model_len=max_len, enforce_eager=True,
                       enable_prefix_caching=False, seed=seed)

    def load(self, tensors: dict) -> None:
        weights = {name: t.detach().to("cpu") for name, t in tensors.items()}
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": iter(weights.items())})
        self.llm.reset_prefix_cache()

    def sample(self, prompts: list[str], prompt_ids: list[list[int]], n: int, max_tokens: int,
               temperature: float, seed: int | None) -> list[list[Completion]]:
        from vllm import SamplingParams

        tok = self.tokenizer
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, logprobs=0,
                                stop_token_ids=[tok.eos_token_id], detokenize=False, seed=seed)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                                    use_tqdm=False)
        groups = []
        for text, ids, output in zip(prompts, prompt_ids, outputs):
            group = []
            for sample in output.outputs:
                new = list(sample.token_ids)
                lps = [step[x].logprob for step, x in zip(sample.logprobs or [], new)]
                group.append(_completion(tok, text, ids, new, lps))
            groups.append(group)
        return groups

    def logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """vLLM's own logprobs of ``completion_ids`` after ``prompt_ids`` (prompt logprobs)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        [output] = self.llm.generate([{"prompt_token_ids": prompt_ids + completion_ids}],
                                     params, use_tqdm=False)
        per_position = output.prompt_logprobs[len(prompt_ids):]
        return [step[x].logprob for step, x in zip(per_position, completion_ids)]
