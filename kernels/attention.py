"""The attention interface: paged KV cache, flat variable-length batches, one call per layer.

A batch is B sequences flattened into T query tokens. Sequence b owns query rows
`cu_seqlens_q[b]:cu_seqlens_q[b+1]` and a KV history of `seqused_k[b]` tokens (the new ones
included) stored in blocks `block_tables[b]` of a cache shaped (num_blocks, block_size, H_kv, D).
Causal masking is aligned at the end: query row i of a sequence with n new tokens sits at position
seqused_k - n + i. Backends differ in speed only; `sdpa` is the reference every other one is
tested against.

A backend is `graph_safe` when its decode path makes no device-to-host sync and launches the
same kernels for the same batch size, so a decode step can be captured in a CUDA graph (see
engine/cuda_graphs.py); there `max_seqlen_k` is an upper bound that holds for every replay.
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
    # Every sequence's KV is its new tokens alone (whole prompts, nothing cached before them):
    # a backend may attend over the new keys and values in slot order, without the page table.
    fresh: bool = False
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
    graph_safe: bool

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


LONG_PREFILL = 2048  # query rows from which the prefill backend beats the short one


class PhaseAttention:
    """Decode-only batches to one backend, batches with prefill rows to another.

    Decode is bound by reading the KV cache and prefill by tensor-core throughput, and the best
    kernel for one is not the best for the other: on the H200 our split-KV Triton decode reads
    the cache at 4.2 TB/s where FlashAttention-4 (no split-KV on sm_90) reaches 4.0, while the
    FlashAttention kernels lead at long prefills. A decode batch whose shape the decode backend
    does not take (its `supports`) goes to the prefill backend.

    Prefill batches whose longest row is under `long_from` tokens go to `short` when one is
    given: there a call's fixed cost counts, not its throughput. On the H200 our Triton kernel
    took 123 us for one 192-token prompt, 143 us for one of 1,280 and 220 us for 32 of 256, where
    FA4 took 212, 170 and 285 us; at one 2,048-token prompt they tie (224 and 226 us) and at four
    FA4 leads (431 against 508 us; docs/benchmarks.md).
    """

    def __init__(
        self,
        decode: AttentionBackend,
        prefill: AttentionBackend,
        short: AttentionBackend | None = None,
        long_from: int = LONG_PREFILL,
    ) -> None:
        self.decode, self.prefill, self.short, self.long_from = decode, prefill, short, long_from
        self.name = f"{decode.name}+{prefill.name}"

    def __call__(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.is_decode:
            return decode_backend(self, q, k_cache)(q, k_cache, v_cache, meta, scale)
        short = self.short is not None and meta.max_seqlen_q < self.long_from
        if short and takes(self.short, q, k_cache):
            return self.short(q, k_cache, v_cache, meta, scale)
        return self.prefill(q, k_cache, v_cache, meta, scale)


def takes(attn: AttentionBackend, q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether `attn` runs these shapes: a backend with limits (our Triton kernels: head_dim 64
    or 128) says so in a `supports` method; the others run anything."""
    supports = getattr(attn, "supports", None)
    return supports is None or supports(q, k_cache)


def decode_backend(attn: AttentionBackend, q: torch.Tensor, k_cache: torch.Tensor):
    """The backend that runs a decode batch of these shapes (what a CUDA graph would hold)."""
    if not isinstance(attn, PhaseAttention):
        return attn
    return attn.decode if takes(attn.decode, q, k_cache) else attn.prefill


def phases(attn: AttentionBackend) -> dict[str, str]:
    """The backend each phase runs on, for logs and benchmark records."""
    if isinstance(attn, PhaseAttention):
        named = {"decode": attn.decode.name, "prefill": attn.prefill.name}
        if attn.short is not None:
            named[f"prefill under {attn.long_from}"] = attn.short.name
        return named
    return {"decode": attn.name, "prefill": attn.name}


BACKENDS = ("auto", "sdpa", "torch-varlen", "triton-paged", "fa4")


def backend(name: str | None = None, device: str = "cpu") -> AttentionBackend:
    """The backend called `name`, or ("auto", None) the best one available on `device`.

    On CUDA the best is our Triton split-KV kernel for decode and for short prefills, and for
    long prefills FlashAttention-4 where it is installed and works on this GPU (sm_90 or newer),
    else torch's FlashAttention-2 varlen kernel. On CPU it is SDPA.
    """
    from kernels.sdpa import SdpaAttention

    name = name or "auto"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; one of {', '.join(BACKENDS)}")
    cuda = str(device).startswith("cuda")
    if name == "auto":
        chosen = _best_cuda(device) if cuda else SdpaAttention()
    elif name == "sdpa":
        chosen = SdpaAttention()
    elif name == "torch-varlen":
        from kernels.varlen import VarlenAttention

        chosen = VarlenAttention()
    elif name == "triton-paged":
        from kernels.triton_paged import TritonPagedAttention

        chosen = TritonPagedAttention()
    else:
        from kernels.fa4 import FlashAttention4, fa4_unavailable

        reason = fa4_unavailable(device)
        if reason:
            raise ValueError(f"attention backend fa4: {reason}")
        chosen = FlashAttention4()
    log.info("attention backend: %s", phases(chosen))
    return chosen


def _best_cuda(device: str) -> AttentionBackend:
    from kernels.fa4 import FlashAttention4, fa4_unavailable
    from kernels.triton_paged import TritonPagedAttention
    from kernels.varlen import VarlenAttention

    reason = fa4_unavailable(device)
    if reason:
        log.info("FlashAttention-4 not used: %s", reason)
    prefill = VarlenAttention() if reason else FlashAttention4()
    ours = TritonPagedAttention()
    return PhaseAttention(decode=ours, prefill=prefill, short=ours)
