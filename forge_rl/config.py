"""The configuration of a GRPO run on a Hugging Face model: a YAML file plus ``key=value``
overrides from the command line, read with OmegaConf against the schema below.

Two keys have no default, ``model`` (a local HF-format directory) and ``steps``; every other
key has one that runs on a 2-core CPU, so a two-line file is a complete config. Everything
a run needs is checked here, before any process starts: an unknown key, a missing directory,
a model vLLM cannot serve each fail at once with a message that names the key or the path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# The causal-LM classes whose parameter names the trainer hands to vLLM's reload unchanged
# (transformers and vLLM name them alike), and which both libraries load from a directory.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
MIN_CPU_HEAD_DIM = 32  # vLLM's CPU attention kernels need a head size of at least 32


TRAINER_STEP = "trainer_state.json"  # beside a checkpoint: its step, readable without torch


def checkpoint_step(path: str) -> int:
    """The training step the checkpoint at ``path`` was saved at."""
    with open(os.path.join(path, TRAINER_STEP)) as f:
        return int(json.load(f)["step"])


class ConfigError(ValueError):
    """A config that cannot run; the message names the key or path and what to do."""


@dataclass
class GRPOConfig:
    model: str = "???"  # a local HF model directory (config.json, safetensors, tokenizer)
    steps: int = "???"  # type: ignore[assignment]  # training steps in all (a resumed
    # run trains the ones its checkpoint has not: the same command finishes the job)
    data: str = ""  # JSONL of {"question", "answer"} (GSM8K style); "" = the shipped set
    mode: str = "async"  # or "sync"
    max_policy_age: int = 1
    generator: str = "auto"  # vllm where installed, else torch
    policy_replicas: int = 1
    prompts_per_step: int = 4
    group_size: int = 4
    max_tokens: int = 24
    max_len: int = 256  # prompt + completion tokens the engine makes room for
    temperature: float = 1.0
    lr: float = 1e-5
    beta: float = 0.04  # weight of the KL term against the reference model; 0: no reference
    clip_eps: float = 0.2
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"  # cuda where there is a GPU, else cpu
    checkpoint_every: int = 0  # save the model every N steps (0: only at the end)
    resume: str = ""  # a checkpoint directory to continue from
    output: str = "forge-grpo-out"
    weight_sync: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for your own actors


def load(path: str | None, overrides: list[str] | None = None) -> GRPOConfig:
    """The config of ``path`` (YAML) with ``key=value`` overrides, checked; raises
    ``ConfigError``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(GRPOConfig)
    where = path or "the command line"
    try:
        layers = [schema]
        if path:
            if not os.path.isfile(path):
                raise ConfigError(f"config file {path!r} not found")
            layers.append(OmegaConf.load(path))
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        known = ", ".join(f.name for f in GRPOConfig.__dataclass_fields__.values())
        detail = str(exc).splitlines()[0]
        if "Key" in type(exc).__name__ and "not in" in str(exc):
            raise ConfigError(f"{where}: unknown key {key!r}; the keys are: {known}") from None
        if "Missing" in type(exc).__name__:
            raise ConfigError(f"{where}: {key!r} is required (e.g. {key}=...)") from None
        raise ConfigError(f"{where}: key {key!r}: {detail}") from None
    check(cfg)
    return cfg


def data_path(cfg: GRPOConfig) -> str:
    if cfg.data:
        return cfg.data
    return str(resources.files("forge_rl").joinpath("data", "arithmetic_word_problems.jsonl"))


def check(cfg: GRPOConfig) -> None:
    """Everything that can be known wrong before a process starts."""
    if not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise ConfigError(f"steps must be a positive integer, not {cfg.steps!r}")
    for key in ("policy_replicas", "prompts_per_step", "group_size", "max_tokens"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, not {getattr(cfg, key)!r}")
    for key in ("max_policy_age", "checkpoint_every"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, not {getattr(cfg, key)!r}")
    if cfg.beta < 0:
        raise ConfigError(f"beta must be >= 0 (0 turns the KL term off), not {cfg.beta!r}")
    if cfg.mode not in ("async", "sync"):
        raise ConfigError(f"mode must be 'async' or 'sync', not {cfg.mode!r}")
    if cfg.generator not in ("auto", "vllm", "torch"):
        raise ConfigError(f"generator must be auto, vllm or torch, not {cfg.generator!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {cfg.device!r}")
    if cfg.device == "cuda" and not _has_cuda():
        raise ConfigError("device=cuda: no CUDA GPU is visible here (device=auto picks one "
                          "where there is one)")
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be float32, bfloat16 or float16, not {cfg.dtype!r}")
    model_config = check_model_dir(cfg.model, "model")
    if cfg.generator in ("auto", "vllm"):
        check_servable(model_config, cfg.model)
    if cfg.resume:
        check_model_dir(cfg.resume, "resume")
        state = os.path.join(cfg.resume, TRAINER_STEP)
        optimizer = os.path.join(cfg.resume, "trainer_state.pt")
        if not (os.path.isfile(state) and os.path.isfile(optimizer)):
            raise ConfigError(f"resume: {cfg.resume!r} has no trainer_state.pt and "
                              f"trainer_state.json: it is not a checkpoint that `forge grpo` "
                              f"wrote")
        done = checkpoint_step(cfg.resume)
        if done >= cfg.steps:
            raise ConfigError(f"resume: {cfg.resume!r} was saved at step {done}, and steps="
                              f"{cfg.steps} counts the run's steps in all, so none are left; "
                              f"raise steps above {done}")
    path = data_path(cfg)
    if not os.path.isfile(path):
        raise ConfigError(f"data: {path!r} not found (a JSONL file of "
                          f'{{"question": ..., "answer": "... #### 42"}} lines)')


def check_model_dir(path: str, key: str) -> dict[str, Any]:
    """The model's config.json, once the directory is known to hold a model and tokenizer."""
    if not os.path.isdir(path):
        raise ConfigError(f"{key}: {path!r} is not a directory (a local Hugging Face model "
                          f"folder with config.json, *.safetensors and tokenizer files)")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ConfigError(f"{key}: {path!r} has no config.json: not a Hugging Face model folder")
    if not any(name.endswith(".safetensors") for name in os.listdir(path)):
        raise ConfigError(f"{key}: {path!r} has no *.safetensors weights")
    if not any(os.path.isfile(os.path.join(path, n)) for n in ("tokenizer.json",
                                                                "tokenizer_config.json")):
        raise ConfigError(f"{key}: {path!r} has no tokenizer (tokenizer.json or "
                          f"tokenizer_config.json)")
    with open(config_file) as f:
        return json.load(f)


def check_servable(model_config: dict[str, Any], path: str) -> None:
    """Whether vLLM can serve the model and the trainer can sync it (raises ConfigError)."""
    architectures = model_config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise ConfigError(
            f"model: {path!r} is a {', '.join(architectures) or 'model of no architecture'}; "
            f"weight sync into vLLM supports {', '.join(SUPPORTED_ARCHITECTURES)} (or set "
            f"generator=torch)")
    head_dim = model_config.get("head_dim") or (
        model_config["hidden_size"] // model_config["num_attention_heads"])
    if head_dim < MIN_CPU_HEAD_DIM and not _has_cuda():
        raise ConfigError(f"model: {path!r} has attention heads of size {head_dim}; vLLM on "
                          f"the CPU needs at least {MIN_CPU_HEAD_DIM} (or set generator=torch)")


def resolve_device(device: str) -> str:
    return ("cuda" if _has_cuda() else "cpu") if device == "auto" else device


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
