"""Fun-ASR-Nano on a CUDA GPU: float32 parity with funasr's fixtures (encoder and adaptor,
logits, greedy ids, the rollback stream), and a bf16 stream served end to end.

Run with `make test-gpu` on a GPU host."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from engine.config import EngineConfig
from engine.engine import Engine
from engine.fun_asr_nano_asr import (
    NanoWorker,
    build_fun_asr_nano,
    build_prompt,
    load_fun_asr_nano,
)
from engine.request import InjectedEmbeds
from engine.rollback import RollbackConfig
from engine.runtime import Runtime
from engine.streaming import Final, Partial, StreamOptions
from tests.qwen3_golden import agree_until_margin, prompt_logits
from tests.test_fun_asr_nano import golden, tensors
from tests.tiny_models import build_fun_asr_nano as build_checkpoint
from tests.tiny_models import qwen3_asr_audio

pytestmark = pytest.mark.gpu
CUDA = EngineConfig(device="cuda", dtype=torch.float32, block_size=16, num_blocks=512)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    build = golden()["checkpoint"]["build"]
    return build_checkpoint(tmp_path_factory.mktemp("nano") / "tiny", **build)


def test_float32_matches_funasr_on_cuda(folder):
    model, tok, frontend, fmt = build_fun_asr_nano(folder, CUDA)
    engine = Engine(model.llm, tok, replace(CUDA, enable_prefix_caching=False))
    worker = NanoWorker(model, tok, engine, RollbackConfig(), frontend)
    clips = list(golden()["encoder"])
    rows = worker.encode([qwen3_asr_audio(c) for c in clips])
    for (r, n), clip in zip(rows, clips, strict=True):
        case = golden()["encoder"][clip]
        assert n == case["lfr_frames"] and r.shape[0] == case["fake_token_len"]
    hello = rows[clips.index("hello_3s")][0]
    want = tensors()[golden()["encoder"]["hello_3s"]["tensors"][1]][: hello.shape[0]]
    torch.testing.assert_close(hello.cpu(), want, atol=1e-3, rtol=1e-3)
    for case in golden()["prompts"].values():
        prompt = build_prompt(tok, 0, case["hotwords"], case["language"], case["itn"], fmt)
        assert prompt.ids(tok, case["audio_tokens"]) == case["input_ids"]
        got = prompt_logits(engine, case["input_ids"], [InjectedEmbeds(case["audio_start"], hello)])
        torch.testing.assert_close(
            got[case["logits_start"] :].cpu(), tensors()[case["logits"]], atol=1e-3, rtol=1e-3
        )


@pytest.mark.anyio
async def test_float32_stream_equals_the_reference_loop_on_cuda(folder):
    ref, cfg = golden()["streams"]["plain"]["steps"], golden()["streaming"]
    runtime = Runtime()
    served = load_fun_asr_nano(
        folder,
        "nano",
        runtime=runtime,
        rollback=RollbackConfig(max_new_tokens=cfg["max_new_tokens"]),
        device="cuda",
        dtype=torch.float32,
    )
    served.worker.trace = trace = []
    audio = qwen3_asr_audio(cfg["audio"])
    handle = served.open_stream(StreamOptions())
    events, fed = aiter(handle), 0
    try:
        for step in ref:
            handle.feed(audio[fed : step["audio_samples"]])
            fed = step["audio_samples"]
            if step["finish"]:
                handle.commit()
            event = await asyncio.wait_for(anext(events), 60)
            assert isinstance(event, Final if step["finish"] else Partial)
    finally:
        runtime.shutdown()
    for ours, step in zip(trace, ref, strict=True):
        assert ours.prompt_ids == step["prompt_ids"]
        assert agree_until_margin(ours.generated_ids, step["generated_ids"], step["top2_margins"])
        if ours.generated_ids != step["generated_ids"]:
            break  # a near-tie flipped: later steps legitimately differ


@pytest.mark.anyio
async def test_bf16_streams_serve(folder):
    runtime = Runtime()
    served = load_fun_asr_nano(folder, "nano", runtime=runtime, device="cuda")
    audio = qwen3_asr_audio("stream_9s")
    handles = [served.open_stream(StreamOptions(lang)) for lang in (None, "en", "zh")]
    try:
        for h in handles:
            h.feed(audio)
            h.finish()
        for h in handles:
            events = [e async for e in h]
            assert isinstance(events[-1], Final) and events[-1].text
    finally:
        runtime.shutdown()
