"""The attention interface: paged KV cache, flat variable-length batches, one call per layer.

A batch is B sequences flattened into T query tokens. Sequence b owns query rows
`cu_seqlens_q[b]:cu_seqlens_q[b+1]` and a KV history of `seqused_k[b]` tokens (the new ones
included) stored in blocks `block_tables[b]` of a cache shaped (num_blocks, block_size, H_kv, D).
Causal masking is aligned at the end: query row i of a sequence with n new tokens sits at position
seqused_k - n + i. Backends differ in speed only; `sdpa` is the reference every other one is
tested against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import torch

log = logging.getLogger(__name__)


@dataclass
class AttentionMetadata:
    cu_seqlens_q: torch.Tensor  # (B+1,) int32
    seqused_k: torch.Tensor  # (B,) int32: KV length of each sequence, new tokens included
    block_tables: torch.Tensor  # (B, max_blocks) int32
    slot_mapping: torch.Tensor  # (T,) int64: flat cache slot of each new token
    max_seqlen_q: int
    max_seqlen_k: int
    # tensors a backend derives once per step and reuses in every layer
    derived: dict[str, torch.Tensor] = field(default_factory=dict)

    def kv_gather(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache slots of every KV token of every sequence, concatenated, and their cu_seqlens."""
        if "kv_slots" not in self.derived:
            lens = self.seqused_k.long()
            cu_k = torch.zeros(lens.numel() + 1, dtype=torch.int32, device=lens.device)
            cu_k[1:] = lens.cumsum(0)
            total = int(cu_k[-1])
            seq = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)
            pos = torch.arange(total, device=lens.device) - cu_k[seq]
            blocks = self.block_tables[seq, pos // block_size].long()
            self.derived["kv_slots"] = blocks * block_size + pos % block_size
            self.derived["cu_seqlens_k"] = cu_k
        return self.derived["kv_slots"], self.derived["cu_seqlens_k"]

    @property
    def is_decode(self) -> bool:
        """Every sequence adds exactly one token (a decode-only batch)."""
        return self.max_seqlen_q == 1


class AttentionBackend(Protocol):
    name: str

    def __call__(
        self,
        q: torch.Tensor,  # (T, H, D)
        k_cache: torch.Tensor,  # (num_blocks, block_size, H_kv, D)
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...  # (T, H, D)


def store_kv(
    k: torch.Tensor,  # (T, H_kv, D)
    v: torch.Tensor,
    k_cache: torch.Tensor,  # (num_blocks, block_size, H_kv, D)
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # (T,)
) -> None:
    """Write the new tokens' keys and values into their cache slots."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def backend(name: str | None = None, device: str = "cpu") -> AttentionBackend:
    """The backend called `name`, or the best one available on `device`."""
    from kernels.sdpa import SdpaAttention
    from kernels.varlen import VarlenAttention

    def triton_paged() -> AttentionBackend:  # imports triton only when asked for
        from kernels.triton_paged import TritonPagedAttention

        return TritonPagedAttention()

    backends = {
        "sdpa": SdpaAttention,
        "torch-varlen": VarlenAttention,
        "triton-paged": triton_paged,
    }
    name = name or ("torch-varlen" if str(device).startswith("cuda") else "sdpa")
    if name not in backends:
        raise ValueError(f"unknown attention backend {name!r}; available: {sorted(backends)}")
    chosen = backends[name]()
    log.info("attention backend: %s", chosen.name)
    return chosen
