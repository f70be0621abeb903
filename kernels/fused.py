"""Fused Triton kernels for the decoder's small per-token operations, with their torch references.

In a decode step each of these operations moves a few kilobytes per token, so its cost is the
kernel launch (or, inside a CUDA graph, the gap between kernels), not the bytes. Written as
torch, one Qwen3 layer is ~60 kernels (an RMSNorm alone is seven: upcast, square, mean, add,
rsqrt, scale, weight); fused, it is ~15. On the H200 a graphed batch-1 decode step of a
Qwen3-0.6B-shaped model spent most of its 4.4 ms in such elementwise kernels.

- `rms_norm(x, weight, eps, residual)`: with a residual, returns (norm(x + residual), x + residual),
  the pre-norm decoder's "add, then normalise" in one pass.
- `qk_norm_rope(q, k, ...)`: Qwen3's per-head RMSNorm of q and k followed by rotary embedding
  (halves layout), in place; without norm weights (Qwen2), the rotary embedding alone.

Each rounds exactly where the torch reference does (the sum of the residual add, the normalised
value before the weight, the normed head before the rotation), so the fused and the reference
paths agree to the last bit or nearly (the float32 reductions differ in order only). CUDA
tensors take the Triton kernels (kernels/fused_triton.py, imported on first use, so that CPU
serving never imports triton); CPU tensors the references. Tests run the kernels on CPU under
TRITON_INTERPRET=1 and compare.
"""

from __future__ import annotations

import torch


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


def qk_norm_rope(
    q: torch.Tensor,  # (T, H, D), last dim contiguous
    k: torch.Tensor,  # (T, H_kv, D)
    q_weight: torch.Tensor | None,  # (D,); None: rotary embedding alone (no q/k norm)
    k_weight: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor,  # (max_len, D/2) float32
    sin: torch.Tensor,
    positions: torch.Tensor,  # (T,)
) -> tuple[torch.Tensor, torch.Tensor]:
    d = q.shape[-1]
    if q.is_cuda and d & (d - 1) == 0:
        from kernels.fused_triton import qk_norm_rope_triton

        return qk_norm_rope_triton(q, k, q_weight, k_weight, eps, cos, sin, positions)
    return qk_norm_rope_ref(q, k, q_weight, k_weight, eps, cos, sin, positions)


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor):
    """Rotary embedding, halves layout (rotate_half), in float32; x: (T, H, D)."""
    c = cos[positions][:, None, :]  # (T, 1, D/2)
    s = sin[positions][:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def qk_norm_rope_ref(q, k, q_weight, k_weight, eps, cos, sin, positions):
    if q_weight is not None:
        q, k = rms_norm_ref(q, q_weight, eps), rms_norm_ref(k, k_weight, eps)
    return rope_ref(q, cos, sin, positions), rope_ref(k, cos, sin, positions)
