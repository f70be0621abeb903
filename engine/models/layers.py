"""Building blocks the model files share: RMSNorm, rotary embeddings, the gated MLP, and
fusing linears that read one input.

The per-token arithmetic runs through kernels/fused.py: fused Triton kernels on CUDA, the torch
references on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.fused import rms_norm, silu_mul
from kernels.linear import linear


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x); with a residual, (norm(x + residual), x + residual)."""
        return rms_norm(x, self.weight, self.eps, residual)


class Rotary(nn.Module):
    """The cos/sin tables of rotary position embedding up to max_len (applied by
    kernels/fused.py's `rope_store`).

    The tables stay float32 whatever the model's dtype (plain attributes, not buffers, so
    `module.to(dtype)` leaves them alone); build the module on its device.
    """

    def __init__(self, head_dim: int, theta: float, max_len: int) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.cos, self.sin = freqs.cos(), freqs.sin()  # (max_len, D/2)


def fuse_linears(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (out_1 + out_2 + ..., in) and bias for linears that read the same input: one
    GEMM instead of several (a decode step is mostly small GEMMs, each a kernel launch). The
    linears' parameters become views into it, so the checkpoint names, loading and in-place
    edits still work and nothing is stored twice. Call it once the model is on its device and
    dtype: `module.to()` would replace the views with copies."""
    with torch.no_grad():
        weight = torch.cat([m.weight for m in linears])
        bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
    at = 0
    for m in linears:
        rows = slice(at, at + m.out_features)
        m.weight = nn.Parameter(weight[rows], requires_grad=m.weight.requires_grad)
        if bias is not None:
            m.bias = nn.Parameter(bias[rows], requires_grad=m.bias.requires_grad)
        at += m.out_features
    return weight, bias


class GatedMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate and up in one GEMM once `fuse()` ran."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.gate_up: torch.Tensor | None = None  # (2 * hidden, dim), set by fuse()

    def fuse(self) -> None:
        self.gate_up, _ = fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = linear(x, self.gate_up).chunk(2, dim=-1)  # views of one GEMM's output
        return linear(silu_mul(gate, up), self.down_proj.weight)
