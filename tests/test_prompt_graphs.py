"""Steps with prompt tokens through the prompt-graph buffers (engine/prompt_graphs.py).

On CPU nothing is captured: `PromptGraphs(capture=False)` runs the model eagerly on the same
padded static buffers a replay reads, so these tests check the bucketing, the padding sequence,
the empty slots and the injected rows; tests/gpu/test_cuda_graphs.py checks real replays.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.prompt_graphs import PromptGraphs, buckets
from engine.request import InjectedEmbeds
from kernels.attention import PhaseAttention
from kernels.sdpa import SdpaAttention
from tests.qwen3_golden import checkpoint, engine, golden, greedy
from tests.test_asr_streaming import CPU as ASR_CPU
from tests.test_asr_streaming import long_audio, traced_stream
from tests.tiny_models import build_qwen3_asr as build_asr_checkpoint

PROMPTS = [p["input_ids"] for p in golden()["checkpoints"]["untied"]["prompts"]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return checkpoint("untied", tmp_path_factory.mktemp("qwen3"))


def graphs_for(eng, max_tokens: int = 512, max_row: int | None = None) -> PromptGraphs:
    runner = eng.runner
    slots = eng.config.max_num_seqs + 1
    hidden = runner.model.config.hidden_size
    return PromptGraphs(runner, max_tokens, max_row or max_tokens, slots, hidden, capture=False)


def test_buckets():
    assert buckets(64) == [128]
    assert buckets(100) == [64, 128]
    assert buckets(2048) == [64, 128, 256, 512, 1024, 2112]


def test_prompt_steps_through_the_buffers_match_eager(model_dir):
    """Requests arrive while others decode, so prompt chunks share steps with decode rows."""
    lengths = [5 + 3 * i for i in range(len(PROMPTS))]

    def generate(eng) -> list[list[int]]:
        reqs = []
        for p, n in zip(PROMPTS, lengths, strict=True):
            reqs.append(eng.add(p, greedy(n)))
            eng.step()
            eng.step()
        while eng.has_work():
            eng.step()
        return [r.output_ids for r in reqs]

    want = generate(engine(model_dir))
    eng = engine(model_dir)
    eng.runner.prompt_graphs = graphs_for(eng)
    assert generate(eng) == want
    runner = eng.runner
    assert runner.prompt_steps >= len(PROMPTS)
    assert runner.prompt_graph_steps == runner.prompt_steps  # every one was under 512 tokens


def test_padding_touches_only_the_scratch_block_and_injected_rows_arrive(model_dir):
    eng = engine(model_dir)
    runner, graphs = eng.runner, graphs_for(eng)
    hidden = runner.model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    prompt = PROMPTS[0] + PROMPTS[1]
    embeds = [InjectedEmbeds(2, torch.randn(5, hidden, generator=g))]
    eng.add(prompt, greedy(1), embeds=embeds)
    eng.add(PROMPTS[1], greedy(1))
    x = runner.prepare(eng.scheduler.schedule())
    assert x.embeds is not None and not x.is_decode

    before = runner.kv.clone()
    want = runner.forward(x)
    kv_eager = runner.kv.clone()
    runner.kv.copy_(before)
    got = graphs.run(x)
    n = len(x.seqused_k)  # a padding sequence follows the batch's, with tokens of its own
    assert graphs.seqused[n] == graphs.cu_seqlens[n + 1] - graphs.cu_seqlens[n] > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    scratch = runner.scratch_block
    torch.testing.assert_close(runner.kv[:, :, :scratch], kv_eager[:, :, :scratch], rtol=0, atol=0)
    assert torch.equal(runner.kv[:, :, scratch + 1 :], before[:, :, scratch + 1 :])

    # without the injected rows the same tokens give other states: they did arrive
    plain = graphs.run(replace(x, embeds=None))
    assert not torch.allclose(plain, want, atol=1e-3)


def test_long_rows_run_eagerly_and_the_padding_may_be_longer(model_dir):
    eng = engine(model_dir)
    graphs = graphs_for(eng, max_tokens=256, max_row=64)
    eng.add(list(range(1, 70)), greedy(1))  # a row of 69 tokens: the long-prompt backend's
    assert not graphs.takes(eng.runner.prepare(eng.scheduler.schedule()))
    eng = engine(model_dir)
    for i in range(3):
        eng.add(list(range(1 + i, 46 + i)), greedy(1))  # 135 tokens in rows of 45: bucket 320
    x = eng.runner.prepare(eng.scheduler.schedule())
    assert graphs.takes(x)
    want = eng.runner.forward(x)
    got = graphs.run(x)
    assert graphs.seqused[3] == 320 - 135 > 64  # the padding row is past max_row
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_batch_without_a_spare_row_or_slot_runs_eagerly(model_dir):
    eng = engine(model_dir, max_num_seqs=2)
    graphs = graphs_for(eng, max_tokens=64, max_row=128)  # buckets 64, 128: a full step fits
    eng.add(list(range(1, 128)), greedy(1))  # 127 tokens: bucket 128 keeps a padding row
    assert graphs.takes(eng.runner.prepare(eng.scheduler.schedule()))
    eng = engine(model_dir, max_num_seqs=2)
    eng.add(list(range(1, 129)), greedy(1))  # 128: no row to spare
    assert not graphs.takes(eng.runner.prepare(eng.scheduler.schedule()))
    graphs.slots = 2  # one real sequence and the padding sequence
    eng = engine(model_dir, max_num_seqs=2)
    eng.add([1, 2, 3], greedy(1))
    eng.add([4, 5, 6], greedy(1))
    assert not graphs.takes(eng.runner.prepare(eng.scheduler.schedule()))


def test_a_step_at_the_token_budget_replays(model_dir):
    """At hundreds of streams most prompt steps fill the budget; they used to run eagerly."""
    eng = engine(model_dir, max_num_batched_tokens=64, max_prefill_chunk=64)
    graphs = graphs_for(eng, max_tokens=64, max_row=128)
    eng.add(list(range(1, 100)), greedy(1))
    x = eng.runner.prepare(eng.scheduler.schedule())
    assert len(x.input_ids) == 64 and graphs.takes(x)
    torch.testing.assert_close(graphs.run(x), eng.runner.forward(x), rtol=1e-5, atol=1e-5)


class SyncFree(SdpaAttention):
    name = "sync-free"
    prompt_graph_safe = True


def test_prompt_graphs_need_a_sync_free_prompt_backend(model_dir):
    eng = engine(model_dir, max_num_batched_tokens=256)
    runner = eng.runner
    assert runner.prompt_graph_limits() == (0, 0)  # SDPA reads the lengths back to the host
    layers = runner.model.model.layers
    original = layers[0].self_attn.attn
    try:
        layers[0].self_attn.attn = PhaseAttention(
            SdpaAttention(), SdpaAttention(), short=SyncFree(), long_from=128
        )
        assert runner.prompt_graph_limits() == (256, 128)  # longer rows: the long backend
        layers[0].self_attn.attn = PhaseAttention(SdpaAttention(), SyncFree())
        assert runner.prompt_graph_limits() == (256, 256)  # every row on the sync-free one
    finally:
        layers[0].self_attn.attn = original


def test_bigger_models_get_smaller_prompt_graphs(model_dir, monkeypatch):
    """The graphs hold a fixed amount of work (tokens x weights): as many tokens as the budget
    allows for a small decoder, proportionally fewer for a big one."""
    from engine import model_runner

    eng = engine(model_dir, max_num_batched_tokens=256)
    runner = eng.runner
    runner.model.model.layers[0].self_attn.attn = PhaseAttention(SdpaAttention(), SyncFree())
    weights = sum(
        p.numel()
        for name, p in runner.model.named_parameters()
        if "embed_tokens" not in name and "lm_head" not in name
    )
    monkeypatch.setattr(model_runner, "PROMPT_GRAPH_WORK", 1000 * weights)
    assert runner.prompt_graph_limits() == (256, 256)  # the step's token budget
    monkeypatch.setattr(model_runner, "PROMPT_GRAPH_WORK", 100 * weights)  # a model 10x the size
    assert runner.prompt_graph_limits() == (100, 100)


@pytest.mark.parametrize("shape, tokens", [("qwen3-0.6b", 8192), ("qwen3-8b", 589)])
def test_prompt_graph_tokens_of_the_released_shapes(shape, tokens):
    """The 0.6B decoder (Qwen3-ASR's too) keeps graphs up to the whole 8,192-token budget, so
    that a full step at hundreds of streams replays; an 8B runs prompts past 589 tokens eagerly."""
    from engine.bench.chat import ChatBench
    from engine.model_runner import prompt_graph_tokens
    from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config.from_dict(ChatBench(shape=shape).config_dict())
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg, SdpaAttention())
    assert prompt_graph_tokens(model) == tokens


@pytest.mark.anyio
async def test_a_stream_through_the_prompt_buffers_transcribes_as_eager_steps(tmp_path):
    """Qwen3-ASR's prompts carry the audio as injected rows, beside the prefix cache's blocks."""
    path = build_asr_checkpoint(tmp_path / "s", seed=0)
    audio = long_audio(12.0, burst_at=9.0)

    def buffers(worker) -> None:  # the static buffers, run eagerly: CPU has no CUDA graphs
        runner = worker.engine.runner
        slots, hidden = runner.config.max_num_seqs + 1, runner.model.config.hidden_size
        runner.prompt_graphs = PromptGraphs(runner, 1024, 1024, slots, hidden, capture=False)

    eager, _ = await traced_stream(path, audio, 11 * 16000, **ASR_CPU)
    graphed, worker = await traced_stream(path, audio, 11 * 16000, buffers, **ASR_CPU)
    runner = worker.engine.runner
    assert runner.prompt_graph_steps == runner.prompt_steps >= len(graphed)
    assert [t.generated_ids for t in graphed] == [t.generated_ids for t in eager]
