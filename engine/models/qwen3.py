"""Qwen3 dense decoder (the chat models, and the decoder inside Qwen3-ASR), and Qwen2 (the LLM
of FireRedASR2-LLM): Qwen3's layers with biases on q, k and v and no per-head q/k RMSNorm
(`Qwen3Config.qk_norm`, `attention_bias`; a config.json with model_type "qwen2" sets both).

Per layer: RMSNorm -> attention (GQA; per-head RMSNorm on q and k before RoPE) -> residual ->
RMSNorm -> SwiGLU MLP -> residual. Each residual add is fused into the next RMSNorm
(kernels/fused.py), so a layer hands on (output, residual stream) rather than their sum. Input
embeddings may be injected at given positions (audio or image features at placeholder tokens).
Parameter names follow the Hugging Face checkpoints, so their state dicts load as they are.
Works on a flat batch of T tokens from many sequences; the KV cache is paged
(kernels/attention.py). `forward_dense` is the same model without a cache, for training: padded
(B, L) rows, causal SDPA, the torch references of the fused kernels (autograd-safe everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.models.layers import GatedMLP, RMSNorm, Rotary, fuse_linears
from kernels.attention import AttentionBackend, AttentionMetadata
from kernels.fused import qk_norm_rope_ref, rms_norm_ref, rope_store, silu_mul_ref
from kernels.linear import linear
from kernels.sdpa import sdpa


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    qk_norm: bool = True  # per-head RMSNorm on q and k (Qwen3); Qwen2 has none
    attention_bias: bool = False  # biases on the q, k and v projections (Qwen2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Qwen3Config:
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"rope scaling {rope!r} is not supported")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 1_000_000.0)),
            max_position_embeddings=d.get("max_position_embeddings", 40960),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            qk_norm=d.get("model_type") != "qwen2",
            attention_bias=d.get("attention_bias", d.get("model_type") == "qwen2"),
        )


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config, rotary: Rotary, attn: AttentionBackend) -> None:
        super().__init__()
        self.h, self.h_kv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.h_kv * self.d, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.h_kv * self.d, bias=bias)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.eps = cfg.rms_norm_eps
        self.rotary = rotary
        self.attn = attn
        self.scale = self.d**-0.5
        self.qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None  # set by fuse()

    def fuse(self) -> None:
        """q, k and v projected by one GEMM (engine/models/layers.py's `fuse_linears`)."""
        self.qkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, hidden) -> q (T, H, D), k and v (T, H_kv, D); views of one output once fused."""
        T = x.shape[0]
        if self.qkv is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            kv = self.h_kv * self.d
            q, k, v = linear(x, *self.qkv).split([self.h * self.d, kv, kv], dim=-1)
        return q.view(T, self.h, self.d), k.view(T, self.h_kv, self.d), v.view(T, self.h_kv, self.d)

    def forward(self, x, positions, kv, meta: AttentionMetadata) -> torch.Tensor:
        T = x.shape[0]
        k_cache, v_cache = kv
        q = rope_store(
            *self._project(x),
            self.q_norm.weight if self.q_norm is not None else None,  # None: rotary alone
            self.k_norm.weight if self.k_norm is not None else None,
            self.eps,
            self.rotary.cos,
            self.rotary.sin,
            positions,
            k_cache,
            v_cache,
            meta.slot_mapping,
        )
        o = self.attn(q, k_cache, v_cache, meta, self.scale)  # (T, H, D)
        return linear(o.reshape(T, self.h * self.d), self.o_proj.weight, self.o_proj.bias)

    def dense(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, L, hidden), right-padded rows; causal attention within each row."""
        B, L, _ = x.shape
        q, k = qk_norm_rope_ref(
            self.q_proj(x).view(B, L, self.h, self.d),
            self.k_proj(x).view(B, L, self.h_kv, self.d),
            getattr(self.q_norm, "weight", None),
            getattr(self.k_norm, "weight", None),
            self.eps,
            self.rotary.cos,
            self.rotary.sin,
            positions,
        )
        v = self.v_proj(x).view(B, L, self.h_kv, self.d)
        # KV heads repeated rather than enable_gqa: every SDPA kernel (flash included) takes it.
        k, v = (t.repeat_interleave(self.h // self.h_kv, dim=2) for t in (k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        o = sdpa(q, k, v, is_causal=True, scale=self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, self.h * self.d))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config, rotary: Rotary, attn: AttentionBackend) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rotary, attn)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, residual, positions, kv, meta) -> tuple[torch.Tensor, torch.Tensor]:
        """(the layer's output, the residual stream before it): the next norm adds them."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, kv, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual

    def dense(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The layer on (B, L, hidden) without a cache; returns the new residual stream."""
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        x = x + self.self_attn.dense(rms_norm_ref(x, norm1.weight, norm1.eps), positions)
        h, m = rms_norm_ref(x, norm2.weight, norm2.eps), self.mlp
        return x + m.down_proj(silu_mul_ref(m.gate_proj(h), m.up_proj(h)))  # autograd-safe

    def fuse(self) -> None:
        self.self_attn.fuse()
        self.mlp.fuse()


class Qwen3Model(nn.Module):
    def __init__(self, cfg: Qwen3Config, attn: AttentionBackend) -> None:
        super().__init__()
        rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, rotary, attn) for _ in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen3ForCausalLM(nn.Module):
    def __init__(self, cfg: Qwen3Config, attn: AttentionBackend) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg, attn)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # (T,)
        positions: torch.Tensor,  # (T,)
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,  # (rows (K,), values (K, hidden))
    ) -> torch.Tensor:  # (T, hidden)
        x = self.model.embed_tokens(input_ids)
        if embeds is not None:
            rows, values = embeds
            x = x.index_copy(0, rows, values.to(x.dtype))
        residual = None
        for layer, kv in zip(self.model.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, positions, kv, meta)
        return self.model.norm(x, residual)[0]

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: x (B, L, hidden) input embeddings (audio already injected), rows
        right-padded (causal attention never lets a real token see the padding after it).
        Returns the final-normed hidden states (B, L, hidden)."""
        positions = torch.arange(x.shape[1], device=x.device)
        for layer in self.model.layers:
            x = layer.dense(x, positions)
        return rms_norm_ref(x, self.model.norm.weight, self.model.norm.eps)

    def fuse_projections(self) -> None:
        """q/k/v and gate/up each as one GEMM for serving (the engine calls it before it
        captures graphs); the dense training path keeps the separate projections."""
        for layer in self.model.layers:
            layer.fuse()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.lm_head.weight).float()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Hugging Face names as they are; a stored lm_head of a tied model is ignored."""
        if self.config.tie_word_embeddings:
            weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
        elif "lm_head.weight" not in weights:
            raise ValueError("the config says untied embeddings, but lm_head.weight is missing")
        expected = dict(self.named_parameters())
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"weights do not match Qwen3: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, p in expected.items():
                w = weights[name]
                if w.shape != p.shape:
                    raise ValueError(
                        f"{name}: checkpoint shape {tuple(w.shape)} != {tuple(p.shape)}"
                    )
                p.copy_(w)
