"""Qwen2 dense decoder (the LLM of FireRedASR2-LLM, Qwen2-7B-Instruct) on the paged engine.

Qwen2 is Qwen3's layer stack (engine/models/qwen3.py) with a different attention: biases on the
q, k and v projections and no per-head RMSNorm on q and k; RoPE (halves layout) and GQA are the
same. So the model is our Qwen3 with each layer's attention swapped for `Qwen2Attention`, which
reads the shared rotary tables; Hugging Face's parameter names load as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.models.layers import Rotary
from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from kernels.attention import AttentionBackend, AttentionMetadata, store_kv


def rope(x: torch.Tensor, rotary: Rotary, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, halves layout, in float32; x: (T, H, D)."""
    cos = rotary.cos[positions][:, None, :]
    sin = rotary.sin[positions][:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config, rotary: Rotary, attn: AttentionBackend) -> None:
        super().__init__()
        self.h, self.h_kv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d)
        self.k_proj = nn.Linear(cfg.hidden_size, self.h_kv * self.d)
        self.v_proj = nn.Linear(cfg.hidden_size, self.h_kv * self.d)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=False)
        self.rotary = rotary
        self.attn = attn
        self.scale = self.d**-0.5

    def forward(self, x, positions, kv, meta: AttentionMetadata) -> torch.Tensor:
        T = x.shape[0]
        q = rope(self.q_proj(x).view(T, self.h, self.d), self.rotary, positions)
        k = rope(self.k_proj(x).view(T, self.h_kv, self.d), self.rotary, positions)
        v = self.v_proj(x).view(T, self.h_kv, self.d)
        k_cache, v_cache = kv
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        o = self.attn(q, k_cache, v_cache, meta, self.scale)  # (T, H, D)
        return self.o_proj(o.reshape(T, self.h * self.d))


class Qwen2ForCausalLM(Qwen3ForCausalLM):
    def __init__(self, cfg: Qwen3Config, attn: AttentionBackend) -> None:
        super().__init__(cfg, attn)
        for layer in self.model.layers:
            layer.self_attn = Qwen2Attention(cfg, layer.self_attn.rotary, attn)


def qwen2_config(d: dict[str, Any]) -> Qwen3Config:
    """config.json of a Qwen2 checkpoint (model_type "qwen2")."""
    if d.get("model_type") != "qwen2":
        raise ValueError(f"not a Qwen2 config (model_type {d.get('model_type')!r})")
    if d.get("use_sliding_window"):
        raise ValueError("Qwen2 sliding-window attention is not supported")
    return Qwen3Config.from_dict(d)
