"""Decode through the CUDA-graph buffers (engine/cuda_graphs.py) and the attention selection.

On CPU nothing is captured: `DecodeGraphs(capture=False)` runs the model eagerly on the same
padded static buffers a replay reads, so these tests check the bucketing, the padding and the
bookkeeping; tests/gpu/test_cuda_graphs.py checks real replays on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.cuda_graphs import DecodeGraphs, buckets
from kernels.attention import AttentionMetadata, PhaseAttention, backend, decode_backend, phases
from kernels.sdpa import SdpaAttention
from tests.qwen3_golden import checkpoint, engine, golden, greedy

PROMPTS = golden()["checkpoints"]["untied"]["prompts"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return checkpoint("untied", tmp_path_factory.mktemp("qwen3"))


def test_buckets():
    assert buckets(1) == [1]
    assert buckets(10) == [1, 2, 4, 8, 10]
    sizes = buckets(512)
    assert sizes[:11] == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert sizes[11:14] == [80, 96, 112] and sizes[-1] == 512
    assert all(b - a == 16 for a, b in zip(sizes[10:], sizes[11:], strict=False))


def test_graphed_decode_matches_eager(model_dir):
    """Ragged finishes shrink the batch step by step, so it moves down the buckets and rows
    that held requests become padding."""
    prompts = [p["input_ids"] for p in PROMPTS]
    lengths = [3 + 4 * i for i in range(len(prompts))]
    eager = engine(model_dir)
    want = [eager.generate([p], greedy(n))[0] for p, n in zip(prompts, lengths, strict=True)]

    eng = engine(model_dir)
    runner = eng.runner
    runner.graphs = DecodeGraphs(runner, max_batch=4, capture=False)
    reqs = [eng.add(p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    while eng.has_work():
        eng.step()
    assert [r.output_ids for r in reqs] == want
    assert runner.decode_steps > 0
    # every decode step of at most 4 rows went through the buffers
    assert runner.graph_steps == runner.decode_steps
    assert runner.describe()["cuda_graph_sizes"] == [1, 2, 4]


def test_padding_rows_are_reset(model_dir):
    eng = engine(model_dir)
    runner = eng.runner
    graphs = DecodeGraphs(runner, max_batch=8, capture=False)
    pad_slot = runner.scratch_block * eng.config.block_size
    reqs = [eng.add(p["input_ids"], greedy(4)) for p in PROMPTS[:3]]
    while not all(r.output_ids for r in reqs):
        eng.step()
    x = runner.prepare(eng.scheduler.schedule())
    assert x.is_decode and len(x.input_ids) == 3
    graphs.slots[:8] = 7  # what a larger batch before would have left
    graphs.seqused[:8] = 99
    graphs.run(x)
    assert graphs.slots[:3].tolist() == x.slots.tolist()
    assert graphs.slots[3:4].tolist() == [pad_slot]  # bucket 4: row 3 is padding
    assert graphs.seqused[3].item() == 1 and graphs.tables[3, 0].item() == runner.scratch_block
    assert graphs.slots[4:8].tolist() == [7] * 4  # past the bucket: never read
    assert graphs.width == -(-eng.max_model_len // eng.config.block_size)


def test_graphs_skip_batches_with_prefill_or_embeds(model_dir):
    eng = engine(model_dir)
    graphs = DecodeGraphs(eng.runner, max_batch=4, capture=False)
    eng.add(PROMPTS[0]["input_ids"], greedy(2))
    prefill = eng.runner.prepare(eng.scheduler.schedule())
    assert not prefill.is_decode and not graphs.takes(prefill)


class Recording(SdpaAttention):
    def __init__(self, name: str) -> None:
        self.name, self.calls = name, 0

    def __call__(self, *args):
        self.calls += 1
        return super().__call__(*args)


def _meta(q_lens: list[int], kv_lens: list[int], block: int) -> AttentionMetadata:
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    width = -(-max(kv_lens) // block)
    tables = torch.arange(len(kv_lens) * width, dtype=torch.int32).view(len(kv_lens), width)
    return AttentionMetadata(
        cu_seqlens_q=torch.from_numpy(cu),
        seqused_k=torch.tensor(kv_lens, dtype=torch.int32),
        block_tables=tables,
        slot_mapping=torch.zeros(int(cu[-1]), dtype=torch.int64),
        max_seqlen_q=max(q_lens),
        max_seqlen_k=max(kv_lens),
    )


def test_phase_attention_routes_by_phase():
    decode, prefill = Recording("d"), Recording("p")
    attn = PhaseAttention(decode, prefill)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(8, 4, 1, 16, generator=g)
    v = torch.randn(8, 4, 1, 16, generator=g)
    q = torch.randn(2, 2, 16, generator=g)
    out = attn(q, k, v, _meta([1, 1], [5, 3], 4), 0.25)
    assert (decode.calls, prefill.calls) == (1, 0)
    torch.testing.assert_close(out, SdpaAttention()(q, k, v, _meta([1, 1], [5, 3], 4), 0.25))
    attn(q, k, v, _meta([2], [6], 4), 0.25)
    assert (decode.calls, prefill.calls) == (1, 1)
    assert phases(attn) == {"decode": "d", "prefill": "p"}
    assert attn.name == "d+p"


def test_phase_attention_sends_short_prefills_to_the_short_backend():
    decode, prefill, short = Recording("d"), Recording("p"), Recording("s")
    attn = PhaseAttention(decode, prefill, short=short, long_from=4)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(8, 4, 1, 16, generator=g)
    v = torch.randn(8, 4, 1, 16, generator=g)
    calls = lambda: (decode.calls, short.calls, prefill.calls)  # noqa: E731
    attn(torch.randn(5, 2, 16, generator=g), k, v, _meta([3, 2], [5, 3], 4), 0.25)
    assert calls() == (0, 1, 0)  # the longest row, 3 tokens, is under 4
    attn(torch.randn(5, 2, 16, generator=g), k, v, _meta([4, 1], [6, 3], 4), 0.25)
    assert calls() == (0, 1, 1)
    attn(torch.randn(2, 2, 16, generator=g), k, v, _meta([1, 1], [5, 3], 4), 0.25)
    assert calls() == (1, 1, 1)
    assert phases(attn) == {"decode": "d", "prefill": "p", "prefill under 4": "s"}


class Picky(Recording):
    @staticmethod
    def supports(q, k_cache) -> bool:
        return q.shape[-1] == 128


def test_phase_attention_sends_unsupported_decode_to_prefill():
    decode, prefill = Picky("d"), Recording("p")
    attn = PhaseAttention(decode, prefill)
    q, k = torch.randn(1, 2, 16), torch.randn(4, 4, 1, 16)
    attn(q, k, k, _meta([1], [5], 4), 0.25)
    assert (decode.calls, prefill.calls) == (0, 1)
    assert decode_backend(attn, q, k) is prefill
    assert decode_backend(attn, torch.randn(1, 2, 128), torch.randn(4, 4, 1, 128)) is decode


def test_phase_attention_sends_unsupported_short_prefills_to_prefill():
    """Our Triton prefill takes head_dim 64 and 128; the tiny test models' 16 go to the other."""
    short, prefill = Picky("s"), Recording("p")
    attn = PhaseAttention(Recording("d"), prefill, short=short, long_from=4)
    k = torch.randn(8, 4, 1, 16)
    attn(torch.randn(5, 2, 16), k, k, _meta([3, 2], [5, 3], 4), 0.25)
    assert (short.calls, prefill.calls) == (0, 1)
    k = torch.randn(8, 4, 1, 128)
    attn(torch.randn(5, 2, 128), k, k, _meta([3, 2], [5, 3], 4), 0.25)
    assert (short.calls, prefill.calls) == (1, 1)


def test_backend_by_name():
    assert backend(None, "cpu").name == "sdpa"
    assert backend("auto", "cpu").name == "sdpa"
    assert phases(backend("sdpa", "cpu")) == {"decode": "sdpa", "prefill": "sdpa"}
    assert backend("triton-paged", "cpu").graph_safe
    assert not backend("torch-varlen", "cpu").graph_safe
    with pytest.raises(ValueError, match="one of auto, sdpa"):
        backend("flash", "cpu")
    with pytest.raises(ValueError, match="fa4: it runs on CUDA devices only"):
        backend("fa4", "cpu")


def test_no_graphs_on_cpu(model_dir):
    eng = engine(model_dir, cuda_graphs=True)
    assert eng.runner.graphs is None  # CUDA only; CPU decode is eager
    assert eng.runner.describe()["attention"] == {"decode": "sdpa", "prefill": "sdpa"}
    assert eng.runner.kv.shape[2] == eng.config.num_blocks + 1  # the scratch block
