"""The fused Triton kernels (kernels/fused_triton.py) under Triton's CPU interpreter, against
their torch references (kernels/fused.py), on fresh random inputs."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.fused import rms_norm_ref, rope_store_ref, silu_mul_ref  # noqa: E402
from kernels.fused_triton import (  # noqa: E402
    rms_norm_triton,
    rope_store_triton,
    silu_mul_triton,
)
from kernels.triton_paged import INTERPRETED  # noqa: E402

if not INTERPRETED:
    pytest.fail(
        "triton was imported before TRITON_INTERPRET=1 was set; run this module on its own",
        pytrace=False,
    )


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(dtype)


# float32 differs from the reference by summation order only. In bfloat16 the kernels round where
# the reference rounds, but the interpreter's float32 -> bfloat16 conversion is not
# round-to-nearest-even as the GPU's is: each rounding (the sum, the normed value, its product
# with the weight) may land one unit (2^-8 relative) off. tests/gpu checks the GPU's bits.
TOL = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.bfloat16: dict(atol=1e-6, rtol=2**-5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [64, 96, 1024])  # 96: the block is masked past n
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, n, with_residual):
    x = randn(5, n, dtype=dtype, seed=1, scale=3.0)
    w = randn(n, dtype=dtype, seed=2) + 1
    r = randn(5, n, dtype=dtype, seed=3) if with_residual else None
    got = rms_norm_triton(x, w, 1e-6, r)
    want = rms_norm_ref(x, w, 1e-6, r)
    if with_residual:
        torch.testing.assert_close(got[1], want[1], **TOL[dtype])  # the sum
        got, want = got[0], want[0]
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


def test_rms_norm_leaves_inputs_alone():
    x, r, w = randn(3, 64, seed=4), randn(3, 64, seed=5), randn(64, seed=6)
    x0, r0 = x.clone(), r.clone()
    rms_norm_triton(x, w, 1e-6, r)
    assert torch.equal(x, x0) and torch.equal(r, r0)


def rope_tables(d: int, max_len: int = 64):
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    f = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    return f.cos(), f.sin()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 128])
@pytest.mark.parametrize("norm", [True, False])
def test_rope_store(dtype, d, norm):
    T, h, h_kv, blocks, block = 6, 4, 2, 5, 4
    # q, k and v as views into one projection output, as the model makes them
    qkv = randn(T, (h + 2 * h_kv) * d, dtype=dtype, seed=7, scale=2.0)
    q = qkv[:, : h * d].view(T, h, d)
    k = qkv[:, h * d : (h + h_kv) * d].view(T, h_kv, d)
    v = qkv[:, (h + h_kv) * d :].view(T, h_kv, d)
    wq = randn(d, dtype=dtype, seed=8) + 1 if norm else None
    wk = randn(d, dtype=dtype, seed=9) + 1 if norm else None
    cos, sin = rope_tables(d)
    positions = torch.tensor([0, 1, 5, 17, 40, 63])
    slots = torch.tensor([3, 9, 0, 17, 12, 6])  # scattered over the blocks
    caches = [randn(blocks, block, h_kv, d, dtype=dtype, seed=s) for s in (10, 11, 10, 11)]
    want_kc, want_vc, kc, vc = caches
    want_q = rope_store_ref(
        q.clone(), k.clone(), v, wq, wk, 1e-6, cos, sin, positions, want_kc, want_vc, slots
    )
    got_q = rope_store_triton(q, k, v, wq, wk, 1e-6, cos, sin, positions, kc, vc, slots)
    assert got_q.data_ptr() == q.data_ptr()  # in place
    # the rotation adds two products of rounded values: absolute error up to a few units
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2**-6)
    torch.testing.assert_close(got_q.float(), want_q.float(), **tol)
    # whole caches: the six slots written, every other one left as it was
    torch.testing.assert_close(kc.float(), want_kc.float(), **tol)
    torch.testing.assert_close(vc, want_vc, atol=0, rtol=0)  # a copy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul(dtype):
    g, u = randn(7, 300, dtype=dtype, seed=12, scale=3.0), randn(7, 300, dtype=dtype, seed=13)
    torch.testing.assert_close(
        silu_mul_triton(g, u).float(), silu_mul_ref(g, u).float(), **TOL[dtype]
    )
    # the halves of one fused gate/up output (rows 2 x 1300 apart), in a (B, L, 2I) batch
    gu = randn(2, 3, 2 * 1300, dtype=dtype, seed=14, scale=3.0)
    gate, up = gu.chunk(2, dim=-1)
    got = silu_mul_triton(gate, up)
    assert got.is_contiguous() and got.shape == (2, 3, 1300)
    torch.testing.assert_close(got.float(), silu_mul_ref(gate, up).float(), **TOL[dtype])
    with pytest.raises(ValueError):
        silu_mul_triton(gate, up.contiguous())  # layouts differ
