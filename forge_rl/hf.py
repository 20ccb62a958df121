"""Hugging Face causal LMs for the RL layer: loading, per-token logprobs, prompts from the
chat template, and checkpoints that transformers and vLLM load as they are.

Only ``transformers`` and ``torch``: the same functions serve the trainer, the reference
model and the torch generator.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import torch

from forge_rl.config import TRAINER_STEP

TRAINER_STATE = "trainer_state.pt"  # beside the HF files of a checkpoint

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=_DTYPES[dtype])
    return model.to(device)


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The question as the model's chat template frames it (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(question)["input_ids"]


def completion_logprobs(model, prompts: list[list[int]], completions: list[list[int]],
                        pad_id: int) -> list[torch.Tensor]:
    """For each (prompt, completion) pair, the logprob of every completion token under
    ``model`` (a tensor per pair, with gradients if enabled)."""
    sequences = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in sequences)
    device = next(model.parameters()).device
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.tensor(sequence, device=device)
        mask[row, :len(sequence)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = ids[:, 1:]
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = []
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        start = len(prompt) - 1  # the logit at position i predicts token i + 1
        out.append(picked[row, start:start + len(completion)])
    return out


def save_checkpoint(path: str, model, tokenizer, optimizer, step: int) -> str:
    """An HF model directory (what vLLM and transformers load) plus ``trainer_state.pt``:
    the step, the optimizer's state and every random generator's, for ``resume``."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}},
               os.path.join(path, TRAINER_STATE))
    with open(os.path.join(path, TRAINER_STEP), "w") as f:
        json.dump({"step": step}, f)
    return path


def load_trainer_state(path: str, optimizer) -> int:
    """Restore the optimizer and random generators of a checkpoint; returns its step."""
    state = torch.load(os.path.join(path, TRAINER_STATE), weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return int(state["step"])


def state_dict_for_sync(model) -> dict[str, Any]:
    """The parameters under the names vLLM's ``load_weights`` takes for Llama and Qwen
    models: transformers' own. A tied ``lm_head`` is left out (vLLM ties it too)."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()
            if not (tied and name == "lm_head.weight")}
