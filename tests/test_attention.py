"""Paged attention backends against dense causal attention on the same keys and values."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from kernels import fa4
from kernels.attention import AttentionMetadata, backend, store_kv
from kernels.sdpa import sdpa


def dense_attention(q, k, v, scale):
    """q: (n, H, D) for the last n positions of k, v: (L, H_kv, D). Plain math, GQA by repeat."""
    n, h, _ = q.shape
    L, h_kv, _ = k.shape
    k = k.repeat_interleave(h // h_kv, dim=1)
    v = v.repeat_interleave(h // h_kv, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q, k) * scale
    qpos = torch.arange(L - n, L)[:, None]
    scores = scores.masked_fill(torch.arange(L)[None, :] > qpos, float("-inf"))
    return torch.einsum("hnl,lhd->nhd", scores.softmax(-1), v)


def paged_case(seq_lens, new_lens, block_size=4, h=4, h_kv=2, d=8, seed=0):
    """Random sequences whose KV sits on shuffled, non-contiguous blocks."""
    g = torch.Generator().manual_seed(seed)
    n_blocks = sum(-(-n // block_size) for n in seq_lens) + 3
    perm = torch.randperm(n_blocks, generator=g).tolist()
    k_cache = torch.zeros(n_blocks, block_size, h_kv, d)
    v_cache = torch.zeros_like(k_cache)
    tables, qs, ks, vs, slots = [], [], [], [], []
    for L, n in zip(seq_lens, new_lens, strict=True):
        table = [perm.pop() for _ in range(-(-L // block_size))]
        tables.append(table)
        k = torch.randn(L, h_kv, d, generator=g)
        v = torch.randn(L, h_kv, d, generator=g)
        ks.append(k)
        vs.append(v)
        qs.append(torch.randn(n, h, d, generator=g))
        pos = torch.arange(L)
        slots.append(torch.tensor(table)[pos // block_size] * block_size + pos % block_size)
    for k, v, s in zip(ks, vs, slots, strict=True):  # history and new tokens alike
        store_kv(k, v, k_cache, v_cache, s)
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor(
            [0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32
        ),
        seqused_k=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.cat([s[-n:] for s, n in zip(slots, new_lens, strict=True)]),
        max_seqlen_q=max(new_lens),
        max_seqlen_k=max(seq_lens),
    )
    return torch.cat(qs), k_cache, v_cache, meta, qs, ks, vs


@pytest.mark.parametrize(
    "seq_lens, new_lens",
    [
        ([7, 13, 1, 22], [7, 5, 1, 3]),  # prefill, chunked prefill, a one-token prompt
        ([9, 17, 4], [1, 1, 1]),  # decode-only batch
        ([30], [30]),
    ],
)
def test_sdpa_paged_matches_dense(seq_lens, new_lens):
    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(seq_lens, new_lens)
    scale = 8**-0.5
    out = backend("sdpa")(q, k_cache, v_cache, meta, scale)
    want = torch.cat([dense_attention(a, b, c, scale) for a, b, c in zip(qs, ks, vs, strict=True)])
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown attention backend"):
        backend("nope")


def test_kv_gather_lists_every_sequence_in_order():
    _, k_cache, _, meta, _, ks, _ = paged_case([7, 13, 1, 22], [7, 5, 1, 3])
    slots, cu_k = meta.kv_gather(k_cache.shape[1])
    assert cu_k.tolist() == [0, 7, 20, 21, 43]
    gathered = k_cache.view(-1, *k_cache.shape[2:])[slots]
    torch.testing.assert_close(gathered, torch.cat(ks))


def test_fa4_keeps_its_compiled_kernels_on_disk_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv(fa4.CACHE_ENABLED, raising=False)
    monkeypatch.delenv(fa4.CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fa4.compile_cache()
    assert os.environ[fa4.CACHE_ENABLED] == "1"
    assert os.environ[fa4.CACHE_DIR] == str(tmp_path / "rtserve" / "fa4")
    monkeypatch.setenv(fa4.CACHE_ENABLED, "0")
    monkeypatch.setenv(fa4.CACHE_DIR, "/elsewhere")
    fa4.compile_cache()
    assert (os.environ[fa4.CACHE_ENABLED], os.environ[fa4.CACHE_DIR]) == ("0", "/elsewhere")


def test_sdpa_leaves_out_cudnn_and_gives_torchs_numbers(monkeypatch):
    seen = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return original(*args, **kwargs)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 16, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 1, 9, generator=g) > 0.3
    mask[..., 0] = True  # every row sees a key
    want = original(q, k, v, attn_mask=mask)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.testing.assert_close(sdpa(q, k, v, attn_mask=mask), want)
    assert seen == [False]
    assert torch.backends.cuda.cudnn_sdp_enabled() == before  # restored after the call
