"""Paged attention through torch's FlashAttention-2 varlen kernel (CUDA only).

Each step gathers every sequence's keys and values from the paged cache into one packed buffer
(the slot index is computed once per step and shared by all layers), then makes a single varlen
call with causal masking aligned at the end, so prefill, chunked prefill and decode rows all go
in one launch. GQA is native. FlashAttention has no float32 kernel: float32 goes to SDPA.
"""

from __future__ import annotations

import torch
from torch.nn.attention.varlen import varlen_attn

from kernels.attention import AttentionMetadata
from kernels.sdpa import SdpaAttention


class VarlenAttention:
    name = "torch-varlen"
    graph_safe = False  # the packed KV buffer's size is read back from the device every step

    def __init__(self) -> None:
        self.float32 = SdpaAttention()

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        if q.dtype not in (torch.float16, torch.bfloat16):
            return self.float32(q, k_cache, v_cache, meta, scale)
        slots, cu_k = meta.kv_gather(k_cache.shape[1])
        k = k_cache.view(-1, *k_cache.shape[2:]).index_select(0, slots)
        v = v_cache.view(-1, *v_cache.shape[2:]).index_select(0, slots)
        return varlen_attn(
            q,
            k,
            v,
            meta.cu_seqlens_q,
            cu_k,
            meta.max_seqlen_q,
            meta.max_seqlen_k,
            scale=scale,
            window_size=(-1, 0),
        )
