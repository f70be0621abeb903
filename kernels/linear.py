"""Linear layers, with a kernel of our own for a decode step's few rows where cuBLAS is slow.

At batch 1 a decode step is weight reads: y = x W^T with x a row or a few and W (N, K) tens of
megabytes. For projections with K >= N (a Qwen3-8B layer's o, 4,096 -> 4,096, and down, 12,288
-> 4,096) cuBLAS splits K across programs and sums the pieces in a second kernel: 131 us of a
5.48 ms step on the H200, plus the gap before each extra kernel (docs/benchmarks.md). The
Triton kernel (kernels/linear_triton.py) gives each program BLOCK_N outputs and streams their
rows of W over all of K through a multi-stage pipeline of loads feeding a tensor-core dot (the
rows padded to 16 and masked), so one kernel writes y. Measured against cuBLAS on the H200
(bench/tune_gemv.py, one row): o 12.4 against 13.9 us, down 28.5 against 31.2, the lm_head
(4,096 -> 151,936) 281 against 300; q/k/v (4,096 -> 6,144) and gate/up (4,096 -> 24,576) tie,
so those stay with cuBLAS. Other shapes, CPU tensors, float32 and anything autograd records
(the kernel has no backward) take torch's `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SKINNY_ROWS = 16  # the most rows the kernel takes: its dot's M
WIDE = 65536  # outputs from which a projection (a vocabulary's) is the kernel's again


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T (+ bias)."""
    if _skinny(x, weight, bias):
        from kernels.linear_triton import skinny_linear_triton

        return skinny_linear_triton(x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], -1)
    return F.linear(x, weight, bias)


def _skinny(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    n, k = weight.shape
    return (
        (k >= n or n >= WIDE)
        and x.is_cuda
        and bias is None
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.stride(-1) == 1
        and 0 < x.numel() <= SKINNY_ROWS * x.shape[-1]
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )
