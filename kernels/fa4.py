"""Paged attention through FlashAttention-4 (`flash-attn-4`, import `flash_attn.cute`).

FA4 reads our cache as it is: pages of (block_size, H_kv, D), one page table row per sequence,
lengths in `seqused_k`, causal masking aligned at the end, GQA native. It is a CuTe-DSL kernel
for sm_90 and newer, compiled on first use of each kernel variant (2-4 s on the H200). The
compiled kernels are kept on disk (`compile_cache`), so that a machine compiles each variant
once, not every server start. Whole prompts (`meta.fresh`: nothing cached before them) take
FA4's dense varlen path over their new K/V instead of the page table. There is no CPU path and
no float32 kernel; float32 goes to SDPA. The package is the optional extra `rtserve[gpu]`;
`fa4_unavailable` says why it cannot be used here, if it cannot.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from kernels.attention import AttentionMetadata
from kernels.sdpa import SdpaAttention

MIN_CAPABILITY = (9, 0)
CACHE_ENABLED = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"
CACHE_DIR = "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"


def compile_cache() -> None:
    """Turns on FA4's on-disk cache of compiled kernels, in `$XDG_CACHE_HOME/rtserve/fa4`
    (~/.cache by default), unless the environment already says otherwise. FA4 reads these
    variables when it is first imported: call this before."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ.setdefault(CACHE_ENABLED, "1")
    os.environ.setdefault(CACHE_DIR, str(root / "rtserve" / "fa4"))


@functools.cache
def _probe(device_index: int) -> str | None:
    """One small paged call checked against SDPA: catches a broken install (a missing CUDA
    library, a JIT failure) at start-up instead of on a user's request."""
    dev = torch.device("cuda", device_index)
    g = torch.Generator(dev).manual_seed(0)
    block, pages, heads, kv_heads, d = 16, 4, 4, 2, 128
    q = torch.randn(2, heads, d, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(pages, block, kv_heads, d, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(pages, block, kv_heads, d, device=dev, dtype=torch.bfloat16, generator=g)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, 1, 2], dtype=torch.int32, device=dev),
        seqused_k=torch.tensor([20, 33], dtype=torch.int32, device=dev),
        block_tables=torch.tensor([[0, 1, 0], [2, 3, 1]], dtype=torch.int32, device=dev),
        slot_mapping=torch.zeros(2, dtype=torch.int64, device=dev),
        max_seqlen_q=1,
        max_seqlen_k=33,
    )
    try:
        got = FlashAttention4()(q, k, v, meta, d**-0.5)
    except Exception as e:  # noqa: BLE001 - any failure means "do not use it"
        return f"a test call failed: {type(e).__name__}: {e}"
    want = SdpaAttention()(q, k, v, meta, d**-0.5)
    err = (got.float() - want.float()).abs().max().item()
    return None if err < 2e-2 else f"a test call disagreed with SDPA (max error {err:.3g})"


def fa4_unavailable(device: str | torch.device) -> str | None:
    """None when FA4 can run on `device`, else the reason it cannot."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return "it runs on CUDA devices only"
    compile_cache()
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a native library that fails to load
        return f"flash_attn.cute does not import ({type(e).__name__}: {e}); see rtserve[gpu]"
    index = torch.cuda.current_device() if dev.index is None else dev.index
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < MIN_CAPABILITY:
        return f"it needs sm_90 or newer; this GPU is sm_{major}{minor}"
    return _probe(index)


class FlashAttention4:
    name = "fa4"
    graph_safe = True  # sync-free with host bounds on the lengths

    def __init__(self) -> None:
        compile_cache()
        from flash_attn.cute import flash_attn_varlen_func

        self._varlen = flash_attn_varlen_func
        self.float32 = SdpaAttention()

    def __call__(
        self,
        q: torch.Tensor,  # (T, H, D)
        k_cache: torch.Tensor,  # (num_blocks, block_size, H_kv, D)
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        if q.dtype not in (torch.float16, torch.bfloat16):
            return self.float32(q, k_cache, v_cache, meta, scale)
        if meta.fresh and not meta.is_decode:
            # Whole prompts: their new keys and values gathered from their slots into contiguous
            # (T, H_kv, D) tensors, for FA4's dense varlen path, which loads them with TMA; with
            # 16-token pages its paged path gathers them row by row instead (docs/benchmarks.md).
            k = k_cache.flatten(0, 1)[meta.slot_mapping]
            v = v_cache.flatten(0, 1)[meta.slot_mapping]
            keys = dict(cu_seqlens_k=meta.cu_seqlens_q, max_seqlen_k=meta.max_seqlen_q)
        else:
            k, v = k_cache, v_cache
            keys = dict(
                seqused_k=meta.seqused_k,
                max_seqlen_k=meta.max_seqlen_k,
                page_table=meta.block_tables,
            )
        out, _ = self._varlen(
            q,
            k,
            v,
            cu_seqlens_q=meta.cu_seqlens_q,
            max_seqlen_q=meta.max_seqlen_q,
            softmax_scale=scale,
            causal=True,
            **keys,
        )
        return out
