"""A tiny Llama-architecture causal LM in plain torch.

Parameter names and shapes follow HF `LlamaForCausalLM`
(`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`, ...,
`lm_head.weight`), and the rotary embedding uses the same "rotate half"
convention, so a state dict from here can be saved as a HF model folder and
served by vLLM, and weights can be synced between the two by name.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Size knobs of the model. Defaults are the demo's tuned tiny size.

    head_dim = hidden_size // num_heads is kept at 32 by default because
    vLLM's CPU attention only supports some head sizes (32, 64, 80, ...).
    """

    vocab_size: int = 26
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 2
    max_position_embeddings: int = 32
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # Much larger than HF's 0.02: at this width 0.02 leaves the residual
    # stream so small that learning (supervised or RL) sits on a plateau
    # for many steps before attention starts to look at the operands.
    init_std: float = 0.1
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")

    def to_hf_config(self) -> dict:
        """`config.json` contents that transformers and vLLM read as Llama."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "initializer_range": self.init_std,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
            "use_cache": True,
        }

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float):
    """cos/sin tables of shape [batch, seq, head_dim] for the given positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # [B, T, head_dim/2]
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, heads, T, head_dim]; cos/sin: [B, T, head_dim] broadcast over heads.
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask):
        batch, seq, _ = x.shape

        def heads(t, n):
            return t.view(batch, seq, n, self.head_dim).transpose(1, 2)

        q = apply_rotary(heads(self.q_proj(x), self.num_heads), cos, sin)
        k = apply_rotary(heads(self.k_proj(x), self.num_kv_heads), cos, sin)
        v = heads(self.v_proj(x), self.num_kv_heads)
        if self.num_kv_heads != self.num_heads:  # grouped-query attention
            repeat = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    """Holds what HF keeps under the `model.` prefix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab].

        attention_mask ([B, T], 1 = real token) allows padding on either
        side: positions count real tokens only, so a left-padded prompt gets
        the same rotary positions as the unpadded one.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)

        seq = input_ids.shape[1]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=input_ids.device).tril()
        mask = causal[None] & valid[:, None, :]
        # A padded query may see no real key; letting every token see itself
        # keeps softmax finite there (those outputs are never used).
        mask = mask | torch.eye(seq, dtype=torch.bool, device=input_ids.device)[None]
        mask = mask[:, None]  # broadcast over heads

        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


def build_model(cfg: ModelConfig, seed: int) -> LlamaForCausalLM:
    """Random init from `seed` alone, so every process builds identical weights."""
    generator = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, cfg.init_std, generator=generator)
    return model


# ----------------------------- safetensors -----------------------------

_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
}
_TORCH_DTYPES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Writes the safetensors format without the `safetensors` package.

    Layout: 8-byte little-endian header length, a JSON header mapping each
    name to dtype/shape/byte offsets (padded with spaces to 8 bytes), then
    the raw little-endian tensor bytes back to back.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Reads what `write_safetensors` (or the `safetensors` package) wrote."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        payload = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _TORCH_DTYPES[info["dtype"]]
        raw = torch.frombuffer(bytearray(payload[start:end]), dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(info["shape"]).clone()
    return tensors


def save_safetensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Uses the `safetensors` package when installed, else the built-in writer."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        write_safetensors(tensors, path)
        return
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def save_model_folder(model: LlamaForCausalLM, tokenizer, folder: str) -> str:
    """Writes a HF-style model folder that `vllm.LLM(model=folder)` can load.

    Needs the `tokenizers` package for `tokenizer.json`.
    """
    cfg = model.config
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg.to_hf_config(), f, indent=2)
    generation_config = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(generation_config, f, indent=2)
    save_safetensors(model.state_dict(), os.path.join(folder, "model.safetensors"))
    tokenizer.save(folder)
    return folder


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def log_probs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each `tokens` entry under `logits` (same leading dims)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


__all__ = [
    "ModelConfig",
    "LlamaForCausalLM",
    "build_model",
    "save_model_folder",
    "write_safetensors",
    "read_safetensors",
    "save_safetensors",
    "count_parameters",
    "log_probs_of",
]
