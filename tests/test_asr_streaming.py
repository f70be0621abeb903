"""The cached rollback path against a naive re-feed loop, long segments, and bounded state."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from audio.features import HOP, log_mel, whisper_features
from engine.asr import AsrModel, AsrWorker, build_qwen3_asr, load_qwen3_asr
from engine.asr_prompt import build_prompt, rollback
from engine.config import EngineConfig
from engine.engine import Engine
from engine.request import InjectedEmbeds
from engine.rollback import CONTEXT_FRAMES, RollbackConfig, RollbackSegment, raw_mels
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from engine.streaming import Final, Partial, SegmentFailed, StreamOptions
from tests.tiny_models import build_qwen3_asr as build_checkpoint
from tests.tiny_models import qwen3_asr_audio

pytestmark = pytest.mark.anyio
CPU = dict(device="cpu", dtype=torch.float32, block_size=4, num_blocks=4096)
ROLLBACK = RollbackConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("asr") / "tiny", seed=0)


def long_audio(seconds: float, burst_at: float | None = None) -> np.ndarray:
    """Speech over and over, and a loud burst that moves the log-mel clamp floor."""
    speech = np.concatenate([qwen3_asr_audio("hello_3s"), qwen3_asr_audio("stream_9s")[8000:40000]])
    x = np.tile(speech, int(seconds * 16000 / speech.size) + 1)[: int(seconds * 16000)].copy()
    x *= 0.3
    if burst_at is not None:
        b = int(burst_at * 16000)
        x[b : b + 4800] = np.random.RandomState(3).uniform(-1, 1, 4800)
    return x.astype(np.float32)


def naive_refeed(
    model_dir, audio: np.ndarray, uptos: list[int], device: str = "cpu"
) -> list[list[int]]:
    """The official algorithm with no reuse: whole features, whole encoder, no prefix cache."""
    config = EngineConfig(**{**CPU, "device": device}, enable_prefix_caching=False)
    model, tok = build_qwen3_asr(model_dir, config)
    engine = Engine(model.decoder, tok, config)
    prompt = build_prompt(tok)
    raw, outputs = "", []
    for k, upto in enumerate(uptos):
        final = k == len(uptos) - 1
        prefix = "" if k < 2 else rollback(tok, raw, 5, final=final)
        feats, _ = whisper_features(torch.from_numpy(audio[:upto]).to(device))
        with torch.inference_mode():
            enc = model.encoder(feats[0])
        ids = prompt.ids(tok, enc.shape[0], prefix)
        req = engine.add(
            ids,
            SamplingParams(temperature=0, max_tokens=12),
            embeds=[InjectedEmbeds(prompt.audio_start(), enc)],
        )
        while engine.has_work():
            engine.step()
        outputs.append(list(req.output_ids))
        raw = prefix + tok.decode(req.output_ids, skip_special_tokens=True)
    return outputs


async def run_stream(model, audio: np.ndarray, step: int, final_at: int) -> list:
    handle = model.open_stream(StreamOptions())
    events = aiter(handle)
    out = []
    for upto in range(step, final_at + 1, step):
        handle.feed(audio[upto - step : upto])
        out.append(await asyncio.wait_for(anext(events), 60))
    handle.feed(audio[out and final_at // step * step or 0 : final_at])
    handle.commit()
    out.append(await asyncio.wait_for(anext(events), 60))
    return out


async def traced_stream(
    path, audio: np.ndarray, final_at: int, setup=None, **engine
) -> tuple[list, AsrWorker]:
    """One stream fed 2 s at a time through a model freshly loaded from `path` with these
    engine settings (`setup(worker)` may change its worker first): its steps and its worker."""
    runtime = Runtime()
    model = load_qwen3_asr(path, "tiny", runtime=runtime, rollback=ROLLBACK, **engine)
    if setup is not None:
        setup(model.worker)
    model.worker.trace = trace = []
    await run_stream(model, audio, 32000, final_at)
    runtime.shutdown()
    return trace, model.worker


async def test_cached_path_equals_the_naive_loop_through_a_clamp_jump(model_dir):
    audio = long_audio(24.0, burst_at=19.0)
    runtime = Runtime()
    model = load_qwen3_asr(model_dir, "tiny", runtime=runtime, rollback=ROLLBACK, **CPU)
    model.worker.trace = trace = []
    events = await run_stream(model, audio, 32000, 23 * 16000)
    runtime.shutdown()
    assert [type(e) for e in events] == [Partial] * 11 + [Final]
    uptos = [t.upto for t in trace]
    assert uptos == [32000 * k for k in range(1, 12)] + [23 * 16000]
    # windows 0 and 1 were cached (at 10 and 18 s); the burst at 19 s moved the clamp floor, so
    # at 20 s both are encoded again, with the open window (4 s = 52 tokens)
    assert [t.encoder_tokens for t in trace if t.upto in (18 * 16000, 20 * 16000, 22 * 16000)] == [
        104 + 26,
        2 * 104 + 52,
        78,
    ]
    naive = naive_refeed(model_dir, audio, uptos)
    for ours, ref in zip(trace, naive, strict=True):
        if ours.generated_ids != ref:
            break  # allowed only through a near tie; check it is one
        assert ours.generated_ids == ref
    else:
        return
    pytest.fail(f"step at {ours.upto} differs: {ours.generated_ids} vs {ref}")


async def test_work_per_step_stays_flat(model_dir):
    audio = long_audio(64.0)
    runtime = Runtime()
    model = load_qwen3_asr(model_dir, "tiny", runtime=runtime, rollback=ROLLBACK, **CPU)
    model.worker.trace = trace = []
    await run_stream(model, audio, 32000, 63 * 16000)
    runtime.shutdown()
    late = [t for t in trace if t.upto >= 20 * 16000 and not t.final]
    assert late
    # at most the open window and one just-completed window are encoded: 2 x 104 tokens
    assert max(t.encoder_tokens for t in late) <= 208
    # the prompt grows with the audio, the work does not: cached windows come from the prefix cache
    for t in late:
        text_tokens = len(t.prompt_ids) - t.prompt_ids.count(
            model.worker.tokenizer.token_to_id("<|audio_pad|>")
        )
        assert t.prefill_tokens <= 208 + text_tokens + 8, (
            t.upto,
            t.prefill_tokens,
            len(t.prompt_ids),
        )
    assert late[-1].prefill_tokens < len(late[-1].prompt_ids) / 2


async def test_segments_return_state_to_baseline(model_dir):
    runtime = Runtime()
    model = load_qwen3_asr(model_dir, "tiny", runtime=runtime, rollback=ROLLBACK, **CPU)
    worker, blocks = model.worker, model.worker.engine.blocks
    handle = model.open_stream(StreamOptions())
    events = aiter(handle)
    audio = qwen3_asr_audio("stream_9s")
    for i in range(20):
        handle.feed(audio[: 16000 + 800 * i])
        handle.commit()
        event = await asyncio.wait_for(anext(events), 30)
        assert isinstance(event, Final) and event.segment == i
        assert blocks.num_free == blocks.num_blocks  # KV pool back to baseline
        stream = next(iter(worker.streams))
        assert stream.queue == [] and stream.in_flight is None  # no encoder cache left
    handle.finish()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(events), 10)
    assert not worker.streams
    runtime.shutdown()


async def test_clear_and_cancel_free_the_engine(model_dir):
    runtime = Runtime()
    model = load_qwen3_asr(model_dir, "tiny", runtime=runtime, rollback=ROLLBACK, **CPU)
    worker = model.worker
    handle = model.open_stream(StreamOptions())
    handle.feed(qwen3_asr_audio("stream_9s"))
    handle.clear()
    handle.feed(qwen3_asr_audio("hello_3s"))
    handle.commit()
    final = await asyncio.wait_for(anext(aiter(handle)), 30)
    assert (
        isinstance(final, Final) and final.segment == 1
    )  # the cleared segment's number is used up
    other = model.open_stream(StreamOptions())
    other.feed(qwen3_asr_audio("stream_9s"))
    other.cancel()
    for _ in range(200):
        if len(worker.streams) < 2 and not worker.engine.has_work():
            break
        await asyncio.sleep(0.02)
    assert (
        len(worker.streams) == 1
        and worker.engine.blocks.num_free == worker.engine.blocks.num_blocks
    )
    runtime.shutdown()


async def test_a_model_error_fails_and_closes_every_finishing_stream(model_dir):
    runtime = Runtime()
    model = load_qwen3_asr(model_dir, "tiny", runtime=runtime, rollback=ROLLBACK, **CPU)
    runtime.shutdown()  # the test steps the worker itself
    worker = model.worker
    handles = [model.open_stream(StreamOptions()) for _ in range(3)]
    for h in handles:
        h.feed(qwen3_asr_audio("hello_3s"))
        h.finish()
    worker.take_inbox()
    worker.fail(RuntimeError("boom"))
    for h in handles:
        events = [e async for e in h]
        assert [type(e) for e in events] == [SegmentFailed] and "boom" in events[0].message
    assert not worker.streams


async def test_audio_after_a_commit_opens_the_next_segment(model_dir):
    """The next turn's first audio can arrive before the committed turn's final step runs: it
    belongs to the next segment, never to the committed one."""
    runtime = Runtime()
    model = load_qwen3_asr(model_dir, "tiny", runtime=runtime, rollback=ROLLBACK, **CPU)
    model.worker.trace = trace = []
    handle = model.open_stream(StreamOptions())
    audio = qwen3_asr_audio("stream_9s")
    handle.feed(audio[:16000])
    handle.commit()
    handle.feed(audio[16000:40000])  # before the worker has run the final of segment 0
    handle.commit()
    events = [await asyncio.wait_for(anext(aiter(handle)), 30) for _ in range(2)]
    runtime.shutdown()
    assert [(type(e), e.segment) for e in events] == [(Final, 0), (Final, 1)]
    assert [t.upto for t in trace] == [16000, 24000]


def test_log_mel_slices_are_computed_together_as_each_alone():
    audio = long_audio(20.0, burst_at=9.0)
    jobs = [(audio, 0, 800, 160_000), (audio, 800, 1600, 320_000), (audio, 1600, 1999, 320_000)]
    jobs += [(audio[:96_000], 0, 600, 96_000)]  # another stream: a shorter, open window
    got = raw_mels(jobs, torch.device("cpu"), batch=3)  # a batch of three, and one alone
    for (x, f0, f1, upto), m in zip(jobs, got, strict=True):
        start = max(0, f0 - CONTEXT_FRAMES)  # one slice alone, with its context
        end = min(upto, (f1 + CONTEXT_FRAMES) * HOP)
        alone = log_mel(torch.from_numpy(x[start * HOP : end]))[0, :, f0 - start : f1 - start]
        torch.testing.assert_close(m.x, alone, atol=1e-4, rtol=1e-5)
        assert (m.min, m.max) == (float(m.x.min()), float(m.x.max()))


def test_segment_audio_grows_by_chunks():
    class Plain(RollbackSegment):  # the audio side alone: no output format
        def parse(self, raw: str) -> tuple[str, str]:
            return "", raw

        def stable_text(self, prefix: str) -> str:
            return prefix

    seg = Plain(None, RollbackConfig())
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (1, 1600, 0, 17, 40_000, 1600)]
    seen = []
    for c in chunks:
        seg.feed(c)
        seen.append(seg.audio.copy())
    for i, got in enumerate(seen):
        np.testing.assert_array_equal(got, np.concatenate(chunks[: i + 1]))
    assert seg.audio.size == sum(c.size for c in chunks)


async def test_launches_wait_for_a_step_that_takes_prompts(model_dir):
    """With a prefill interval (CUDA graphs on), a stream that becomes due while others decode
    is launched just before the next step that takes prompts, and transcripts do not change.
    The worker is driven by hand here (no runtime thread), one turn at a time."""
    audio = long_audio(4.0)

    async def run(interval: int) -> tuple[list, list[bool]]:
        config = EngineConfig(**CPU)
        model, tokenizer = build_qwen3_asr(model_dir, config)
        engine = Engine(model.decoder, tokenizer, config)
        engine.scheduler.prefill_interval = interval
        worker = AsrWorker(model, tokenizer, engine, ROLLBACK)
        asr = AsrModel("tiny", worker)
        a, b = asr.open_stream(StreamOptions()), asr.open_stream(StreamOptions())
        b_waiting = []

        def turn() -> None:
            worker.take_inbox()
            worker.step()

        a.feed(audio[:32000])
        turn()  # a is launched at once: nothing decodes
        turn()
        b.feed(audio[32000:64000])
        while worker.has_work():
            turn()
            b_waiting.append(b._stream.in_flight is None and b._stream.queue[0].stepped == 0)
        await asyncio.sleep(0)  # let the deliveries through
        events = [a._queue.get_nowait(), b._queue.get_nowait()]
        return events, b_waiting

    want, _ = await run(1)
    got, b_waiting = await run(3)
    assert got == want
    assert b_waiting[0]  # b was due but waited for a step that takes prompts
