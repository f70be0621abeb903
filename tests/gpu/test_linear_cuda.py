"""The skinny linear kernel (kernels/linear_triton.py) on the GPU against cuBLAS, at the shapes
of a Qwen3-8B layer and a vocabulary, eagerly and replayed from a CUDA graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.linear import linear

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("k, n", [(4096, 6144), (4096, 4096), (12288, 4096), (1000, 70001)])
def test_matches_float32(rows, k, n):
    from kernels.linear_triton import skinny_linear_triton

    g = torch.Generator(device="cuda").manual_seed(rows + k + n)
    x = torch.randn(rows, k, generator=g, device="cuda").bfloat16()
    w = (torch.randn(n, k, generator=g, device="cuda") / k**0.5).bfloat16()
    got = skinny_linear_triton(x, w)
    want = F.linear(x.float(), w.float())
    assert got.dtype == torch.bfloat16
    # one bf16 rounding of the output; the float32 sums differ in order only
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=2**-7)


def test_replays_from_a_graph():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 4096, generator=g, device="cuda").bfloat16()
    w = torch.randn(4096, 4096, generator=g, device="cuda").bfloat16()
    eager = linear(x, w)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = linear(x, w)
    x.copy_(torch.randn(1, 4096, generator=g, device="cuda").bfloat16())
    graph.replay()
    assert torch.equal(y, linear(x, w)) and not torch.equal(y, eager)
