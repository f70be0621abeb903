"""Building blocks the model files share: RMSNorm, rotary embeddings, the gated MLP.

The per-token arithmetic runs through kernels/fused.py: fused Triton kernels on CUDA, the torch
references on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.fused import rms_norm, silu_mul


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


class GatedMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))
