"""The Triton kernels behind kernels/fused.py (see there for what each computes and why)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# ---- RMSNorm (+ residual) ----


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,  # the residual, when HAS_RES
    sum_ptr,  # x + residual is written here, when HAS_RES
    w_ptr,
    out_ptr,
    stride_x,
    stride_r,
    stride_s,
    stride_o,
    n,
    eps,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # rounded as torch's add rounds
        tl.store(sum_ptr + row * stride_s + cols, x, mask=mask)
    h = x.to(tl.float32)
    var = tl.sum(h * h, 0) / n
    h = (h * tl.rsqrt(var + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = (w.to(tl.float32) * h.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_o + cols, out, mask=mask)


def rms_norm_triton(x, weight, eps, residual=None):
    """The kernel path of `rms_norm`."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    out = torch.empty(x2.shape, dtype=torch.result_type(x, weight), device=x.device)
    res = total = None
    if residual is not None:
        res = residual.reshape(-1, n)
        total = torch.empty_like(x2)
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2,
            res if res is not None else x2,
            total if total is not None else x2,
            weight,
            out,
            x2.stride(0),
            res.stride(0) if res is not None else 0,
            total.stride(0) if total is not None else 0,
            out.stride(0),
            n,
            eps,
            HAS_RES=res is not None,
            BLOCK=triton.next_power_of_2(n),
            num_warps=4 if n <= 4096 else 8,
        )
    out = out.view(x.shape)
    return out if total is None else (out, total.view(x.shape))


# ---- per-head RMSNorm + RoPE on q and k ----


@triton.jit
def _qk_norm_rope_kernel(
    x_ptr,  # (T, heads, D): q then k, in place
    w_ptr,
    cos_ptr,  # (max_len, D/2) float32
    sin_ptr,
    pos_ptr,
    stride_t,
    stride_h,
    eps,
    D: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    half = tl.arange(0, D // 2)
    base = x_ptr + t * stride_t + h * stride_h
    x1 = tl.load(base + half)
    x2 = tl.load(base + D // 2 + half)
    dtype = x1.dtype
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    if HAS_NORM:
        inv = tl.rsqrt((tl.sum(a * a, 0) + tl.sum(b * b, 0)) / D + eps)
        w1 = tl.load(w_ptr + half).to(tl.float32)
        w2 = tl.load(w_ptr + D // 2 + half).to(tl.float32)
        # the normed head, rounded as the reference rounds (to dtype, then times the weight)
        a = (w1 * (a * inv).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        b = (w2 * (b * inv).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    pos = tl.load(pos_ptr + t)
    c = tl.load(cos_ptr + pos * (D // 2) + half)
    s = tl.load(sin_ptr + pos * (D // 2) + half)
    tl.store(base + half, (a * c - b * s).to(dtype))
    tl.store(base + D // 2 + half, (b * c + a * s).to(dtype))


def qk_norm_rope_triton(q, k, q_weight, k_weight, eps, cos, sin, positions):
    """The kernel path of `qk_norm_rope`: q and k are normed and rotated in place."""
    norm = q_weight is not None
    if norm and (q.dtype != q_weight.dtype or k.dtype != k_weight.dtype):
        raise ValueError("q/k and their norm weights must share a dtype")
    d = q.shape[-1]
    if q.shape[0]:
        for x, w in ((q, q_weight), (k, k_weight)):
            _qk_norm_rope_kernel[(x.shape[0], x.shape[1])](
                x,
                w if norm else x,
                cos,
                sin,
                positions,
                x.stride(0),
                x.stride(1),
                eps,
                D=d,
                HAS_NORM=norm,
                num_warps=1,
            )
    return q, k
