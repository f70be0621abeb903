"""The Triton paged-attention kernels under Triton's CPU interpreter, against dense attention.

Every case stores random keys and values on shuffled, non-contiguous cache blocks (`paged_case`)
and compares the backend with plain causal attention per sequence, in float32. The interpreter
is slow, so shapes are small; the tile sizes are shrunk in some cases so that small shapes still
cross tiles, pages and splits.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kernels.attention import backend  # noqa: E402
from kernels.triton_paged import INTERPRETED, TritonPagedAttention, num_kv_splits  # noqa: E402
from tests.test_attention import dense_attention, paged_case  # noqa: E402

if not INTERPRETED:  # triton was imported earlier in this process without the variable
    pytest.fail(
        "triton was imported before TRITON_INTERPRET=1 was set; run this module on its own",
        pytrace=False,
    )

TOL = dict(atol=1e-4, rtol=1e-4)


def check(attn, seq_lens, new_lens, *, group, d, block_size, h_kv=2, seed=0):
    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(
        seq_lens, new_lens, block_size=block_size, h=group * h_kv, h_kv=h_kv, d=d, seed=seed
    )
    scale = d**-0.5
    out = attn(q, k_cache, v_cache, meta, scale)
    want = torch.cat([dense_attention(a, b, c, scale) for a, b, c in zip(qs, ks, vs, strict=True)])
    assert out.shape == want.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, want, **TOL)


# Lengths: 1 token, exactly one or two blocks, odd lengths, and one long enough for several
# 64-token tiles.
DECODE_LENS = [1, 16, 37, 64, 150]


@pytest.mark.parametrize(
    "group, d, block_size, splits, block_n",
    [
        (1, 64, 16, 1, None),  # one split writes the output directly
        (2, 128, 32, 1, None),
        (4, 64, 32, 3, None),  # ranges of one 64- or 128-token tile; trailing splits idle
        (8, 128, 16, 7, None),  # more splits than tiles
        (4, 128, 16, 4, 16),  # 16-token tiles: several tiles per split, one page each
        (2, 64, 32, 5, 16),  # two tiles per 32-token page
        (1, 128, 32, None, None),  # the heuristic's choice
        (8, 64, 16, None, 32),
    ],
)
def test_decode_matches_dense(group, d, block_size, splits, block_n):
    attn = TritonPagedAttention(num_splits=splits, decode_block_n=block_n, min_split_tokens=1)
    check(attn, DECODE_LENS, [1] * len(DECODE_LENS), group=group, d=d, block_size=block_size)


@pytest.mark.parametrize(
    "seq_lens, new_lens",
    [
        ([1, 16, 37, 100], [1, 16, 37, 100]),  # whole prompts, a one-token prompt
        ([50, 80, 130], [10, 33, 2]),  # chunked prefill: a cached prefix before the new tokens
        ([40, 9, 77, 1, 64], [1, 9, 20, 1, 1]),  # mixed: decode rows beside prefill rows
    ],
    ids=["prompts", "cached-prefix", "mixed"],
)
@pytest.mark.parametrize(
    "group, d, block_size, block_m, block_n",
    [
        (1, 64, 16, None, None),
        (2, 128, 32, None, None),
        (4, 64, 16, 16, 16),  # 4-token query tiles x 4 heads, 16-key tiles: many diagonals
        (8, 128, 32, 32, 16),
        (5, 64, 16, 32, 32),  # a group that is no power of two (padded to 8 rows per token)
    ],
)
def test_prefill_matches_dense(seq_lens, new_lens, group, d, block_size, block_m, block_n):
    attn = TritonPagedAttention(prefill_block_m=block_m, prefill_block_n=block_n)
    check(attn, seq_lens, new_lens, group=group, d=d, block_size=block_size)


def test_every_diagonal_alignment():
    """Cached prefixes of every length mod the key tile, so that the tile where the unmasked
    keys end falls at every offset from the diagonal."""
    prefixes = range(17)
    attn = TritonPagedAttention(prefill_block_m=8, prefill_block_n=16)
    check(attn, [p + 6 for p in prefixes], [6] * len(prefixes), group=2, d=64, block_size=16)


def test_strided_views_of_fused_buffers():
    """q sliced out of a fused qkv projection and K/V as halves of one cache tensor."""
    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(
        [30, 70], [30, 5], block_size=16, h=4, h_kv=2, d=64
    )
    qkv = torch.cat([q, torch.zeros(q.shape[0], 4, 64)], dim=1)  # (T, H + 2 H_kv, D)
    kv = torch.stack([k_cache, v_cache])  # (2, num_blocks, block_size, H_kv, D)
    out = TritonPagedAttention()(qkv[:, :4], kv[0], kv[1], meta, 0.125)
    want = torch.cat([dense_attention(a, b, c, 0.125) for a, b, c in zip(qs, ks, vs, strict=True)])
    torch.testing.assert_close(out, want, **TOL)


@pytest.mark.parametrize(
    "group, splits, min_tokens",
    [
        (4, 8, 32),  # 150 tokens: five ranges of two tiles; 20 tokens: one, written directly
        (8, 16, 16),  # 300 tokens: ten ranges, merged in two chunks (8 partials, then 2)
    ],
)
def test_ranges_follow_each_sequence_and_the_counters_end_at_zero(group, splits, min_tokens):
    """16-token tiles; the last range of a sequence to finish merges its partials. The split
    counters are zero after every call, so the next call (a CUDA graph's next replay) counts
    from zero again."""
    attn = TritonPagedAttention(num_splits=splits, decode_block_n=16, min_split_tokens=min_tokens)
    for seed in range(2):
        check(attn, [150, 20, 1, 300], [1] * 4, group=group, d=64, block_size=16, seed=seed)
        (counts,) = attn._counts.values()
        assert counts.count_nonzero() == 0


def test_decode_rows_agree_between_paths():
    """A decode batch through the split-KV path and through the prefill kernel (forced by a
    max_seqlen_q of 2) give the same rows."""
    q, k_cache, v_cache, meta, *_ = paged_case([90, 3, 33], [1, 1, 1], block_size=16, d=64)
    attn = TritonPagedAttention(num_splits=3, min_split_tokens=1)
    decode = attn(q, k_cache, v_cache, meta, 0.125)
    meta.max_seqlen_q = 2
    prefill = attn(q, k_cache, v_cache, meta, 0.125)
    torch.testing.assert_close(decode, prefill, **TOL)


def test_registered_as_a_backend():
    assert backend("triton-paged").name == "triton-paged"


def test_rejects_unsupported_shapes():
    q, k_cache, v_cache, meta, *_ = paged_case([5], [5], block_size=4, d=64)
    with pytest.raises(ValueError, match="block_size"):
        TritonPagedAttention()(q, k_cache, v_cache, meta, 0.125)
    q, k_cache, v_cache, meta, *_ = paged_case([5], [5], block_size=16, d=32)
    with pytest.raises(ValueError, match="head_dim"):
        TritonPagedAttention()(q, k_cache, v_cache, meta, 0.125)


def test_split_heuristic():
    # a batch that covers the H200 twice over: one split, no merge
    assert num_kv_splits(64, 8, 4096) == 1
    assert num_kv_splits(256, 8, 1024) == 1
    # small batches with long contexts fill the SMs, in one wave of 4 programs per SM (528)
    assert num_kv_splits(1, 8, 32768) == 64
    assert num_kv_splits(4, 8, 4096) == 16  # 512 programs
    assert num_kv_splits(8, 8, 8192) == 8  # 512, not 576: no second wave
    assert num_kv_splits(16, 8, 4096) == 4  # 512
    assert num_kv_splits(32, 8, 2048) == 2  # 512
    assert num_kv_splits(20, 8, 4096) == 3  # 480
    # never ranges shorter than 256 tokens, never fewer than one split
    assert num_kv_splits(1, 8, 300) == 2
    assert num_kv_splits(1, 1, 1) == 1
    assert num_kv_splits(0, 8, 0) == 1
    # the rule scales with the SM count it is given
    assert num_kv_splits(8, 8, 8192, num_sms=16) == 1


@st.composite
def batches(draw):
    n = draw(st.integers(1, 4))
    decode = draw(st.booleans())
    seq_lens = draw(st.lists(st.integers(1, 90), min_size=n, max_size=n))
    new_lens = [1] * n if decode else [draw(st.integers(1, length)) for length in seq_lens]
    return seq_lens, new_lens


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    batch=batches(),
    group=st.sampled_from([1, 2, 3, 4, 8]),
    h_kv=st.integers(1, 2),
    d=st.sampled_from([64, 128]),
    block_size=st.sampled_from([16, 32]),
    splits=st.integers(1, 6),
    tile=st.sampled_from([16, 32, 64]),
    seed=st.integers(0, 2**16),
)
def test_random_batches(batch, group, h_kv, d, block_size, splits, tile, seed):
    attn = TritonPagedAttention(
        num_splits=splits, decode_block_n=tile, prefill_block_m=2 * tile, prefill_block_n=tile
    )
    seq_lens, new_lens = batch
    check(attn, seq_lens, new_lens, group=group, d=d, block_size=block_size, h_kv=h_kv, seed=seed)


def test_engine_decode_through_graph_buffers():
    """A small random Qwen3 (head_dim 64) on the Triton backend: decode through the CUDA-graph
    buffers (padding rows, the scratch block, `max_seqlen_k` at the longest context and so
    the widest split) gives the logits of plain eager decode."""
    from engine.config import EngineConfig
    from engine.cuda_graphs import DecodeGraphs
    from engine.engine import Engine
    from engine.model_runner import ModelRunner
    from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
    from engine.sampling import SamplingParams

    cfg = Qwen3Config.from_dict(
        dict(
            vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-6,
            rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=True,
        )
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg, TritonPagedAttention()).eval()
    config = EngineConfig(device="cpu", dtype=torch.float32, block_size=16, num_blocks=32)
    prompts = [[5, 9, 11], list(range(20, 57)), [3] * 18]

    def decode_logits(graphs: bool) -> list[torch.Tensor]:
        eng = Engine(model, None, config)
        runner = eng.runner
        if graphs:
            runner.graphs = DecodeGraphs(runner, max_batch=4, capture=False)
        seen = []

        def run(batch):  # the engine's own step, with each step's logits kept
            logits, sampling = ModelRunner.run(runner, batch)
            seen.append(logits.clone())
            return logits, sampling

        runner.run = run
        eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
        assert not graphs or runner.graph_steps == runner.decode_steps > 0
        return seen

    for got, want in zip(decode_logits(True), decode_logits(False), strict=True):
        torch.testing.assert_close(got, want, **TOL)
