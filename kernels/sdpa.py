"""torch's scaled_dot_product_attention as the project calls it (`sdpa`), and paged attention on
it (`SdpaAttention`): the reference and the CPU path.

Decode-only batches gather every sequence's blocks into one padded batch and make one SDPA call;
batches with prefill go sequence by sequence with a causal mask aligned at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.attention import AttentionMetadata

# torch 2.11 prefers cuDNN's attention on sm_90. It builds an execution plan for every new shape
# (our windows, prompts and training batches change shape from call to call), and with a mask its
# backward gives NaN gradients where the length is 64 mod 128 (pytorch/pytorch#196678; the demo
# model's training skipped non-finite steps). Every other backend, in torch's order.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention on any backend but cuDNN's (see SDPA_BACKENDS)."""
    with sdpa_kernel(SDPA_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence, (L, H_kv, D), from its blocks."""
    n_blocks = -(-length // cache.shape[1])
    return cache[block_table[:n_blocks].long()].flatten(0, 1)[:length]


class SdpaAttention:
    name = "sdpa"
    graph_safe = True  # decode: one gather of max_seqlen_k keys per sequence, masked

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        if meta.is_decode:
            return self._decode(q, k_cache, v_cache, meta, scale)
        out = torch.empty_like(q)
        cu = meta.cu_seqlens_q.tolist()
        lengths = meta.seqused_k.tolist()
        for b, length in enumerate(lengths):
            lo, hi = cu[b], cu[b + 1]
            if hi == lo:
                continue
            k = gather_kv(k_cache, meta.block_tables[b], length)  # (L, H_kv, D)
            v = gather_kv(v_cache, meta.block_tables[b], length)
            n = hi - lo
            mask = None  # a whole prompt: plain causal, which lets SDPA pick a flash kernel
            if n != length:  # query i sits at position length - n + i, sees keys up to there
                qpos = torch.arange(length - n, length, device=q.device)[:, None]
                mask = torch.arange(length, device=q.device)[None, :] <= qpos  # (n, L)
            o = sdpa(
                q[lo:hi].transpose(0, 1),  # (H, n, D)
                k.transpose(0, 1).to(q.dtype),
                v.transpose(0, 1).to(q.dtype),
                attn_mask=mask,
                is_causal=mask is None,
                scale=scale,
                enable_gqa=True,
            )
            out[lo:hi] = o.transpose(0, 1)
        return out

    def _decode(self, q, k_cache, v_cache, meta, scale) -> torch.Tensor:
        block_size = k_cache.shape[1]
        n_blocks = -(-meta.max_seqlen_k // block_size)
        tables = meta.block_tables[:, :n_blocks].long()  # (B, n_blocks)
        k = k_cache[tables].flatten(1, 2)  # (B, L, H_kv, D)
        v = v_cache[tables].flatten(1, 2)
        L = k.shape[1]
        mask = torch.arange(L, device=q.device)[None, :] < meta.seqused_k[:, None]  # (B, L)
        o = sdpa(
            q[:, :, None, :],  # (B, H, 1, D)
            k.transpose(1, 2).to(q.dtype),  # (B, H_kv, L, D)
            v.transpose(1, 2).to(q.dtype),
            attn_mask=mask[:, None, None, :],
            scale=scale,
            enable_gqa=True,
        )
        return o[:, :, 0, :]
