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


# ---- per-head RMSNorm + RoPE on q and k, k and v to the cache ----


@triton.jit
def _rope_kernel(
    q_ptr,  # (T, H, D), rotated in place
    k_ptr,  # (T, H_kv, D), rotated into the k cache
    qw_ptr,  # (D,) the q norm's weight (HAS_NORM)
    kw_ptr,
    cos_ptr,  # (max_len, D/2) float32
    sin_ptr,
    pos_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    eps,
    v_ptr,  # (T, H_kv, D), copied to the v cache
    stride_vt,
    stride_vh,
    kc_ptr,  # the caches, slot-major: slot s of head h at s * stride_cs + h * stride_ch
    vc_ptr,
    slot_ptr,
    stride_cs,
    stride_ch,
    num_q_heads,
    D: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    """One program per (token, head) of q's heads then k's: one launch for both."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    half = tl.arange(0, D // 2)
    pos = tl.load(pos_ptr + t)
    c = tl.load(cos_ptr + pos * (D // 2) + half)
    s = tl.load(sin_ptr + pos * (D // 2) + half)
    if h < num_q_heads:
        base = q_ptr + t * stride_qt + h * stride_qh
        y1, y2 = _norm_rotate(base, qw_ptr, c, s, eps, D, HAS_NORM)
        tl.store(base + half, y1)
        tl.store(base + D // 2 + half, y2)
    else:
        hk = h - num_q_heads
        y1, y2 = _norm_rotate(
            k_ptr + t * stride_kt + hk * stride_kh, kw_ptr, c, s, eps, D, HAS_NORM
        )
        slot = tl.load(slot_ptr + t).to(tl.int64)
        dst = kc_ptr + slot * stride_cs + hk * stride_ch
        tl.store(dst + half, y1.to(kc_ptr.dtype.element_ty))
        tl.store(dst + D // 2 + half, y2.to(kc_ptr.dtype.element_ty))
        full = tl.arange(0, D)
        v = tl.load(v_ptr + t * stride_vt + hk * stride_vh + full)
        tl.store(vc_ptr + slot * stride_cs + hk * stride_ch + full, v.to(vc_ptr.dtype.element_ty))


@triton.jit
def _norm_rotate(base, w_ptr, c, s, eps, D: tl.constexpr, HAS_NORM: tl.constexpr):
    """A head's two halves at `base`, RMS-normed (HAS_NORM) and rotated, in its dtype."""
    half = tl.arange(0, D // 2)
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
    return (a * c - b * s).to(dtype), (b * c + a * s).to(dtype)


def rope_store_triton(
    q, k, v, q_weight, k_weight, eps, cos, sin, positions, k_cache, v_cache, slot_mapping
):
    """The kernel path of `rope_store`: one launch, q in place, k and v to the caches."""
    norm = q_weight is not None
    if norm and (q.dtype != q_weight.dtype or k.dtype != k_weight.dtype):
        raise ValueError("q/k and their norm weights must share a dtype")
    for cache in (k_cache, v_cache):
        if cache.stride(0) != cache.shape[1] * cache.stride(1) or cache.stride(3) != 1:
            raise ValueError("the KV cache must be contiguous within and across blocks")
    if k_cache.stride() != v_cache.stride() or v.stride(-1) != 1:
        raise ValueError("the K and V caches must share a layout; v's rows must be contiguous")
    if not q.shape[0]:
        return q
    _rope_kernel[(q.shape[0], q.shape[1] + k.shape[1])](
        q,
        k,
        q_weight if norm else q,
        k_weight if norm else k,
        cos,
        sin,
        positions,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        eps,
        v,
        v.stride(0),
        v.stride(1),
        k_cache,
        v_cache,
        slot_mapping,
        k_cache.stride(1),
        k_cache.stride(2),
        q.shape[1],
        D=q.shape[-1],
        HAS_NORM=norm,
        num_warps=1,
    )
    return q


# ---- SwiGLU's silu(gate) * up ----


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, cols, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < cols
    g = tl.load(g_ptr + row * stride + offs, mask=mask, other=0.0)
    u = tl.load(u_ptr + row * stride + offs, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # silu, rounded as F.silu rounds
    out = (act.to(tl.float32) * u.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * cols + offs, out, mask=mask)


def silu_mul_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The kernel path of `silu_mul`: gate and up of one shape and one layout, rows contiguous
    (the two halves of a fused gate/up GEMM's output are); the result is contiguous."""
    if gate.shape != up.shape or gate.stride() != up.stride() or gate.stride(-1) != 1:
        raise ValueError("gate and up must share a shape and a layout with contiguous rows")
    cols = gate.shape[-1]
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if out.numel():
        g, u = gate.view(-1, cols), up.view(-1, cols)  # raises if the rows are not one stride
        block = min(1024, triton.next_power_of_2(cols))
        grid = (g.shape[0], triton.cdiv(cols, block))
        _silu_mul_kernel[grid](g, u, out, cols, g.stride(0), BLOCK=block, num_warps=4)
    return out
