"""Tiny random Hugging Face models of each architecture `forge grpo` supports, built here
with transformers and a tokenizer made by the `tokenizers` library: nothing is downloaded."""

from __future__ import annotations

import json
import os

ARCHITECTURES = ("llama", "qwen2", "qwen3")

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def build_tokenizer(path: str, corpus: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.Punctuation()])
    specials = ["<unk>", "<pad>", "<eos>", "<|user|>", "<|assistant|>", "####"]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   pad_token="<pad>", eos_token="<eos>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_model(architecture: str, path: str, corpus: list[str], seed: int = 0) -> str:
    """A 2-layer, hidden-64 random model of ``architecture`` saved at ``path``."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    os.makedirs(path, exist_ok=True)
    tokenizer = build_tokenizer(path, corpus)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                  torch_dtype="float32")
    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[architecture]
    extra = {"head_dim": 32} if architecture != "qwen2" else {}
    extra["tie_word_embeddings"] = architecture != "llama"
    torch.manual_seed(seed)
    model = model_class(config_class(**common, **extra))
    model.save_pretrained(path, safe_serialization=True)
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["architectures"] == [model_class.__name__]
    return path


def corpus_of(data_path: str) -> list[str]:
    with open(data_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r["question"] + " " + r["answer"] for r in records]
