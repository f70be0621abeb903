"""FlashAttention-4 (`flash-attn-4`, the `rtserve[gpu]` extra) on our paged cache, when installed.

Without the package these tests are skipped, and reported as skipped."""

from __future__ import annotations

import pytest
import torch

from kernels.attention import backend, phases
from tests.test_attention import dense_attention, paged_case

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def fa4():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    from kernels.fa4 import fa4_unavailable

    reason = fa4_unavailable("cuda")
    if reason:
        pytest.skip(f"FlashAttention-4 unavailable: {reason}")


@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize(
    "seq_lens, new_lens",
    [
        ([300, 17, 4, 64, 129], [300, 1, 4, 1, 40]),  # prefill, extend and decode rows mixed
        ([900, 17, 4, 64], [1, 1, 1, 1]),  # decode only
    ],
)
def test_paged_fa4_matches_dense(block_size, seq_lens, new_lens):
    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(
        seq_lens, new_lens, block_size=block_size, h=8, h_kv=2, d=128
    )
    dev, bf = torch.device("cuda"), torch.bfloat16
    meta.cu_seqlens_q, meta.seqused_k = meta.cu_seqlens_q.to(dev), meta.seqused_k.to(dev)
    meta.block_tables, meta.slot_mapping = meta.block_tables.to(dev), meta.slot_mapping.to(dev)
    out = backend("fa4", "cuda")(
        q.to(dev, bf), k_cache.to(dev, bf), v_cache.to(dev, bf), meta, 128**-0.5
    )
    want = torch.cat(
        [dense_attention(a, b, c, 128**-0.5) for a, b, c in zip(qs, ks, vs, strict=True)]
    )
    torch.testing.assert_close(out.float().cpu(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("block_size", [16, 128])
def test_whole_prompts_on_fa4s_dense_path_match_dense(block_size):
    seq_lens = [300, 17, 4, 2100, 129]
    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(
        seq_lens, seq_lens, block_size=block_size, h=8, h_kv=2, d=128
    )
    dev, bf = torch.device("cuda"), torch.bfloat16
    meta.cu_seqlens_q, meta.seqused_k = meta.cu_seqlens_q.to(dev), meta.seqused_k.to(dev)
    meta.block_tables, meta.slot_mapping = meta.block_tables.to(dev), meta.slot_mapping.to(dev)
    meta.fresh = True
    out = backend("fa4", "cuda")(
        q.to(dev, bf), k_cache.to(dev, bf), v_cache.to(dev, bf), meta, 128**-0.5
    )
    want = torch.cat(
        [dense_attention(a, b, c, 128**-0.5) for a, b, c in zip(qs, ks, vs, strict=True)]
    )
    torch.testing.assert_close(out.float().cpu(), want, atol=3e-2, rtol=3e-2)


def test_auto_prefills_long_prompts_with_fa4():
    assert phases(backend(None, "cuda")) == {
        "decode": "triton-paged",
        "prefill": "fa4",
        "prefill under 2048": "triton-paged",
    }
