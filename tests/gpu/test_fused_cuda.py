"""The fused kernels (kernels/fused_triton.py) on the GPU: bfloat16 rounded where the torch
references round, so the results agree bit for bit but for the rare rounding that the float32
reductions' order flips."""

from __future__ import annotations

import pytest
import torch

from kernels.fused import (
    rms_norm,
    rms_norm_ref,
    rope_store,
    rope_store_ref,
    silu_mul,
    silu_mul_ref,
)

pytestmark = pytest.mark.gpu
BF16_UNIT = 2**-8  # relative size of one bfloat16 rounding step


def randn(*shape, seed=0, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, device="cuda")).bfloat16()


def assert_nearly_bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    exact = (got == want).float().mean().item()
    rel = ((got.float() - want.float()).abs() / want.float().abs().clamp_min(1e-3)).max().item()
    assert exact > 0.99 and rel <= 2 * BF16_UNIT, (exact, rel)


@pytest.mark.parametrize("n", [1024, 4096, 5120])
def test_rms_norm_with_residual(n):
    x, r, w = randn(64, n, seed=1, scale=4.0), randn(64, n, seed=2), randn(n, seed=3) + 1
    out, total = rms_norm(x, w, 1e-6, r)
    want_out, want_total = rms_norm_ref(x, w, 1e-6, r)
    assert torch.equal(total, want_total)  # the sum rounds once, as torch's add does
    assert_nearly_bitwise(out, want_out)
    assert_nearly_bitwise(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))


@pytest.mark.parametrize("norm", [True, False])
def test_rope_store(norm):
    T, h, h_kv, d, blocks, block = 300, 16, 8, 128, 40, 16
    qkv = randn(T, (h + 2 * h_kv) * d, seed=4, scale=2.0)
    q = qkv[:, : h * d].view(T, h, d)
    k = qkv[:, h * d : (h + h_kv) * d].view(T, h_kv, d)
    v = qkv[:, (h + h_kv) * d :].view(T, h_kv, d)
    wq, wk = (randn(d, seed=5) + 1, randn(d, seed=6) + 1) if norm else (None, None)
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2, dtype=torch.float32, device="cuda") / d))
    f = torch.outer(torch.arange(4096, dtype=torch.float32, device="cuda"), inv)
    cos, sin = f.cos(), f.sin()
    positions = torch.randint(0, 4096, (T,), device="cuda")
    slots = torch.randperm(blocks * block, device="cuda")[:T]
    want_kc, want_vc = randn(blocks, block, h_kv, d, seed=7), randn(blocks, block, h_kv, d, seed=8)
    kc, vc = want_kc.clone(), want_vc.clone()
    want_q = rope_store_ref(
        q.clone(), k.clone(), v, wq, wk, 1e-6, cos, sin, positions, want_kc, want_vc, slots
    )
    got_q = rope_store(q, k, v, wq, wk, 1e-6, cos, sin, positions, kc, vc, slots)
    torch.testing.assert_close(got_q.float(), want_q.float(), atol=2e-2, rtol=2 * BF16_UNIT)
    torch.testing.assert_close(kc.float(), want_kc.float(), atol=2e-2, rtol=2 * BF16_UNIT)
    assert torch.equal(vc, want_vc)
    assert (got_q == want_q).float().mean() > 0.95


def test_silu_mul():
    g, u = randn(64, 12288, seed=9, scale=3.0), randn(64, 12288, seed=10)
    assert_nearly_bitwise(silu_mul(g, u), silu_mul_ref(g, u))
