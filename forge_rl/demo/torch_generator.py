"""Sampling completions from the demo model with plain torch.

No KV cache: every new token re-runs the whole (tiny) sequence. For prompts
of ~5 tokens and answers of ~2 tokens that costs less than cache bookkeeping.
"""

from __future__ import annotations

import torch

from forge_rl.demo.model import LlamaForCausalLM, ModelConfig, build_model
from forge_rl.demo.tokenizer import CharTokenizer
from forge_rl.types import Completion


class TorchGenerator:
    """Same interface as `VLLMGenerator`: `generate(...)` and `load_state_dict(sd)`.

    `seed` drives sampling; `init_seed` drives the initial weights and should
    match the trainer's so both start from the same policy (or call
    `load_state_dict` with the trainer's weights before generating).
    """

    def __init__(self, model_config: ModelConfig, seed: int = 0, init_seed: int = 0, tokenizer: CharTokenizer | None = None):
        self.tokenizer = tokenizer or CharTokenizer()
        if model_config.vocab_size != self.tokenizer.vocab_size:
            raise ValueError("model vocab_size does not match the tokenizer")
        self.config = model_config
        self.model: LlamaForCausalLM = build_model(model_config, init_seed).eval()
        self.rng = torch.Generator().manual_seed(seed)
        self.weights_version = 0

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], version: int | None = None) -> None:
        self.model.load_state_dict(state_dict)
        self.weights_version = self.weights_version + 1 if version is None else version

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int = 1, max_tokens: int = 4, temperature: float = 1.0,
                 seed: int | None = None) -> list[list[Completion]]:
        """Samples `n` completions per prompt; returns one list of `n` per prompt.

        temperature 0 means greedy decoding. A `seed` makes this call's sampling depend on it
        alone (not on the calls before it), as vLLM's per-request seed does.
        """
        rng = self.rng if seed is None else torch.Generator().manual_seed(seed)
        tok = self.tokenizer
        prompt_ids = [tok.encode(p) for p in prompts]
        rows = [ids for ids in prompt_ids for _ in range(n)]
        width = max(len(ids) for ids in rows)
        if width + max_tokens > self.config.max_position_embeddings:
            raise ValueError("prompt + max_tokens exceeds max_position_embeddings")

        # Left padding lines up every row's last token in the final column.
        tokens = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            tokens[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1

        finished = torch.zeros(len(rows), dtype=torch.bool)
        sampled, sampled_logprobs = [], []
        for _ in range(max_tokens):
            logits = self.model(tokens, mask)[:, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            if temperature <= 0:
                next_token = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_token = torch.multinomial(probs, 1, generator=rng).squeeze(-1)
            next_token = torch.where(finished, torch.full_like(next_token, tok.pad_id), next_token)
            sampled.append(next_token)
            sampled_logprobs.append(logprobs.gather(-1, next_token[:, None]).squeeze(-1))
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
            finished |= next_token == tok.eos_id
            if finished.all():
                break

        sampled_t = torch.stack(sampled, dim=1).tolist()
        logprob_t = torch.stack(sampled_logprobs, dim=1).tolist()
        results: list[list[Completion]] = [[] for _ in prompts]
        for row, (ids, lps) in enumerate(zip(sampled_t, logprob_t)):
            if tok.eos_id in ids:
                length = ids.index(tok.eos_id) + 1
                reason = "stop"
                text_ids = ids[: length - 1]
            else:
                length = len(ids)
                reason = "length"
                text_ids = ids
            prompt_index = row // n
            results[prompt_index].append(
                Completion(
                    prompt=prompts[prompt_index],
                    prompt_ids=prompt_ids[prompt_index],
                    text=tok.decode(text_ids, skip_special=False),
                    token_ids=ids[:length],
                    logprobs=lps[:length],
                    finish_reason=reason,
                )
            )
        return results
