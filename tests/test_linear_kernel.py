"""The skinny linear kernel (kernels/linear_triton.py) under Triton's CPU interpreter, against
torch's F.linear, on fresh random inputs."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.linear import linear  # noqa: E402
from kernels.linear_triton import skinny_linear_triton  # noqa: E402
from kernels.triton_paged import INTERPRETED  # noqa: E402

if not INTERPRETED:
    pytest.fail(
        "triton was imported before TRITON_INTERPRET=1 was set; run this module on its own",
        pytrace=False,
    )


@pytest.mark.parametrize(
    "m, k, n, block_n, block_k",
    [
        (1, 64, 48, 16, 32),  # one row, K in two tiles
        (3, 100, 70, 16, 32),  # K and N past whole tiles: both masked
        (16, 96, 32, 32, 64),  # the most rows the kernel takes
        (1, 512, 16, 16, 512),  # one program, one K tile
    ],
)
def test_matches_f_linear(m, k, n, block_n, block_k):
    g = torch.Generator().manual_seed(m * k + n)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    got = skinny_linear_triton(x, w, block_n=block_n, block_k=block_k)
    torch.testing.assert_close(got, F.linear(x, w), atol=1e-4, rtol=1e-4)


def test_strided_rows_and_a_weight_slice():
    """x a view with a row stride past K; W rows of a larger fused weight."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 80, generator=g)[:, :64]
    fused = torch.randn(48, 64, generator=g)
    w = fused[16:40]
    got = skinny_linear_triton(x, w, block_n=16, block_k=32)
    torch.testing.assert_close(got, F.linear(x, w), atol=1e-4, rtol=1e-4)


def test_cpu_tensors_take_f_linear():
    """The dispatch sends CPU tensors (and biases) to torch: the kernel is for CUDA decode."""
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(1, 3, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(5)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    assert linear(x, w).shape == (1, 3, 5)
