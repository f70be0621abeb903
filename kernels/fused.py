"""Fused Triton kernels for the decoder's small per-token operations, with their torch references.

In a decode step each of these operations moves a few kilobytes per token, so its cost is the
kernel launch (or, inside a CUDA graph, the gap between kernels), not the bytes. Written as
torch, one Qwen3 layer is ~60 kernels (an RMSNorm alone is seven: upcast, square, mean, add,
rsqrt, scale, weight); fused, it is ~15. On the H200 a graphed batch-1 decode step of a
Qwen3-0.6B-shaped model spent most of its 4.4 ms in such elementwise kernels.

- `rms_norm(x, weight, eps, residual)`: with a residual, returns (norm(x + residual), x + residual),
  the pre-norm decoder's "add, then normalise" in one pass.
- `rope_store(q, k, v, ...)`: Qwen3's per-head RMSNorm of q and k followed by rotary embedding
  (halves layout), q in place, k and v written straight to their KV-cache slots; without norm
  weights (Qwen2), the rotary embedding alone.
- `silu_mul(gate, up)`: SwiGLU's silu(gate) * up.

Each rounds exactly where the torch reference does (the sum of the residual add, the normalised
value before the weight, the normed head before the rotation), so the fused and the reference
paths agree to the last bit or nearly (the float32 reductions differ in order only). CUDA
tensors take the Triton kernels (kernels/fused_triton.py, imported on first use, so that CPU
serving never imports triton); CPU tensors the references. Tests run the kernels on CPU under
TRITON_INTERPRET=1 and compare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attention import store_kv


def rms_norm(
    x: torch.Tensor,  # (T, N)
    weight: torch.Tensor,  # (N,)
    eps: float,
    residual: torch.Tensor | None = None,  # (T, N)
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from kernels.fused_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    return rms_norm_ref(x, weight, eps, residual)


def rms_norm_ref(x, weight, eps, residual=None):
    if residual is not None:
        x = x + residual
        residual = x
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(dtype)
    return out if residual is None else (out, residual)


def rope_store(
    q: torch.Tensor,  # (T, H, D), last dim contiguous
    k: torch.Tensor,  # (T, H_kv, D)
    v: torch.Tensor,  # (T, H_kv, D)
    q_weight: torch.Tensor | None,  # (D,); None: rotary embedding alone (no q/k norm)
    k_weight: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor,  # (max_len, D/2) float32
    sin: torch.Tensor,
    positions: torch.Tensor,  # (T,)
    k_cache: torch.Tensor,  # (num_blocks, block_size, H_kv, D)
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # (T,)
) -> torch.Tensor:
    """q normed and rotated (in place, returned); k normed, rotated and stored with v."""
    d = q.shape[-1]
    if q.is_cuda and d & (d - 1) == 0:
        from kernels.fused_triton import rope_store_triton

        return rope_store_triton(
            q, k, v, q_weight, k_weight, eps, cos, sin, positions, k_cache, v_cache, slot_mapping
        )
    return rope_store_ref(
        q, k, v, q_weight, k_weight, eps, cos, sin, positions, k_cache, v_cache, slot_mapping
    )


def rope_store_ref(
    q, k, v, q_weight, k_weight, eps, cos, sin, positions, k_cache, v_cache, slot_mapping
):
    q, k = qk_norm_rope_ref(q, k, q_weight, k_weight, eps, cos, sin, positions)
    store_kv(k, v, k_cache, v_cache, slot_mapping)
    return q


def qk_norm_rope_ref(q, k, q_weight, k_weight, eps, cos, sin, positions):
    """Per-head RMSNorm of q and k (when weights are given), then the rotary embedding; in torch,
    so that training (engine/models/qwen3.py's dense path) can differentiate it."""
    if q_weight is not None:
        q, k = rms_norm_ref(q, q_weight, eps), rms_norm_ref(k, k_weight, eps)
    return rope_ref(q, cos, sin, positions), rope_ref(k, cos, sin, positions)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.is_cuda:
        from kernels.fused_triton import silu_mul_triton

        return silu_mul_triton(gate, up)
    return silu_mul_ref(gate, up)


def silu_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor):
    """Rotary embedding, halves layout (rotate_half), in float32; x: (T, H, D)."""
    c = cos[positions][:, None, :]  # (T, 1, D/2)
    s = sin[positions][:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
