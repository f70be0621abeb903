"""The Triton kernel behind kernels/linear.py: y = x W^T for a few rows, without split-K."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.linear import WIDE


@triton.jit
def _skinny_kernel(
    x_ptr,  # (M, K)
    w_ptr,  # (N, K), rows contiguous
    y_ptr,  # (M, N)
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    BLOCK_M: tl.constexpr,  # M padded to the dot's 16 rows; the pad is masked, never read
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    n0 = tl.program_id(0) * BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PREC)
    y = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def skinny_linear_triton(
    x: torch.Tensor,  # (M, K), M <= 16
    weight: torch.Tensor,  # (N, K)
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The kernel path of `linear` (kernels/linear.py). The tiles default to the best of 54
    tried on the H200 for a Qwen3-8B layer's o and down projections (32 outputs x 512 of K, 4
    stages) and its lm_head (64 x 256, 3 stages): bench/tune_gemv.py, docs/benchmarks.md."""
    m, k = x.shape
    n = weight.shape[0]
    wide = n >= WIDE
    block_n = block_n or (64 if wide else 32)
    block_k = block_k or (256 if wide else 512)
    num_stages = num_stages or (3 if wide else 4)
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _skinny_kernel[(triton.cdiv(n, block_n),)](
        x,
        weight,
        y,
        m,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        y.stride(0),
        BLOCK_M=16,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return y
