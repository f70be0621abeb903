"""Paraformer-streaming against funasr 1.4.16's chunked `generate(cache=..., is_final=...)`,
chunk by chunk (golden fixtures), and the chunked policy's serving properties: constant work per
chunk, one batched encoder call per step for all streams, state back to baseline after each
segment, and the transcript through the served stream handle."""

from __future__ import annotations

import asyncio
import json
from functools import cache

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.chunked import ChunkedWorker, FunasrHandle, build_paraformer
from engine.loader import ModelSpec, load
from engine.runtime import Runtime
from engine.streaming import Final, Partial, StreamOptions
from tests.tiny_models import FIXTURES, paraformer_audio
from tests.tiny_models import build_paraformer as build_checkpoint

GOLDEN = FIXTURES / "paraformer"
ATOL = 2e-4
RTOL = 2e-4
CHUNK = 9600


@cache
def golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    build = golden()["checkpoints"]["streaming"]["build"]
    return build_checkpoint(tmp_path_factory.mktemp("paraformer") / "streaming", **build)


@pytest.fixture(scope="module")
def built(folder):
    return build_paraformer(folder)


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> None:
    """ours == ref within atol + RTOL * |ref| (float32 rounding differs across CPUs: on this
    machine the largest difference is 5e-5; an H200 host's Xeon gave up to 2.6e-4)."""
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=RTOL)


def golden_audio(name: str) -> np.ndarray:
    case = golden()["streaming"][name]
    return paraformer_audio(case["audio"])[: case["samples"]]


def drive(worker) -> None:
    """The runtime's turn, on the test's thread: take the inbox, step while there is work."""
    worker.take_inbox()
    while worker.has_work():
        worker.step()


async def events_of(handle, n: int) -> list:
    it = aiter(handle)
    return [await asyncio.wait_for(anext(it), 30) for _ in range(n)]


@pytest.mark.parametrize("name", ["stream_4s", "stream_tail"])
def test_chunks_match_funasr(built, name):
    """Each of funasr's encoder steps, with our online front end: encoder output, alphas, the
    CIF state carried across chunks, the fired embeddings, decoder log-probs, ids and text."""
    model, tokens, frontend = built
    case, t = golden()["streaming"][name], tensors()
    assert case["samples"] == golden_audio(name).size
    audio = golden_audio(name)
    state, online, fed = model.new_stream("cpu"), frontend.stream(), 0
    for c, call in enumerate(case["calls"]):
        piece = audio[fed : fed + call["samples"]]
        fed += call["samples"]
        (step,) = call["steps"]  # pieces of at most one chunk: one encoder step each
        key = f"streaming/{name}/call{c}/step0/"
        if step["tail_chunk"]:
            feats = None
        else:
            feats = online.accept(torch.from_numpy(piece), is_final=step["is_final"])
            assert feats.shape[0] == step["frontend_frames"]
        close(state.cif_hidden, t[key + "cif_hidden_before"])
        assert state.cif_alpha.item() == pytest.approx(step["cif_alphas_before"], abs=1e-5)
        (out,) = model.stream_step([state], [feats], [step["is_final"]], trace=True)
        assert out.encoder_frames == step["encoder_rows"] and state.start == step["start_idx_after"]
        close(out.encoder_out, t[key + "encoder_out"])
        close(out.alphas, t[key + "alphas_raw"])
        close(state.cif_hidden, t[key + "cif_hidden_after"])
        assert state.cif_alpha.item() == pytest.approx(step["cif_alphas_after"], abs=1e-5)
        assert out.acoustic_embeds.shape[0] == step["tokens_fired"]
        if step["tokens_fired"]:
            close(out.acoustic_embeds, t[key + "acoustic_embeds"])
            close(out.logprobs, t[key + "decoder_logprobs"])
            assert out.logprobs.argmax(-1).tolist() == step["argmax_ids"]
        assert out.ids == step["token_ids"]
        assert tokens.text(out.ids) == call["text"]


@pytest.mark.anyio
async def test_served_stream_matches_funasr(folder):
    """Through the served model (runtime thread, stream handle): the partial after each chunk
    holds all text so far (append-only, nothing unstable), the final is the whole."""
    runtime = Runtime()
    model = load(ModelSpec(str(folder), "tiny-streaming"), runtime=runtime, device="cpu")
    for name in ("stream_4s", "stream_tail"):
        calls = golden()["streaming"][name]["calls"]
        handle = model.open_stream(StreamOptions("zh"))
        handle.feed(golden_audio(name))
        handle.commit()
        events = await events_of(handle, len(calls))
        text = ""
        for k, (event, call) in enumerate(zip(events, calls, strict=True)):
            text += call["text"]
            if k < len(calls) - 1:
                assert isinstance(event, Partial)
                assert (event.stable, event.unstable, event.revision) == (text, "", k + 1)
                assert event.end_sample == CHUNK * (k + 1)
            else:
                assert isinstance(event, Final) and event.text == text
        handle.finish()
        assert handle.consumed_samples == golden_audio(name).size
    runtime.shutdown()


@pytest.mark.anyio
async def test_streams_share_one_encoder_call_per_step(built):
    """N streams with a chunk ready in the same step: one batched encoder call, and each gets
    what it gets alone (funasr's chunk texts)."""
    model, tokens, frontend = built
    worker = ChunkedWorker(model, tokens, frontend)
    worker.trace = trace = []
    names = ["stream_4s", "stream_tail", "stream_4s"]
    handles = [FunasrHandle(worker) for _ in names]
    for h, name in zip(handles, names, strict=True):
        h.feed(golden_audio(name))
        h.commit()
    worker.take_inbox()
    steps = 0
    while worker.has_work():
        calls = model.encoder_calls
        ready = sum(1 for s in worker.streams if s.queue and worker._due(s.queue[0]))
        worker.step()
        assert model.encoder_calls == calls + 1 and trace[-1]["batch"] == ready
        steps += 1
    assert steps == 7 and [t["batch"] for t in trace[:3]] == [3, 3, 3]
    for h, name in zip(handles, names, strict=True):
        calls = golden()["streaming"][name]["calls"]
        *_, final = await events_of(h, len(calls))
        assert final.text == "".join(c["text"] for c in calls)


def test_encoder_work_per_chunk_is_constant(built):
    """30 chunks (18 s): from the 5th chunk on, every chunk runs 15 queries over 55 keys per
    layer, and the caches stop growing (4 chunks of look-back)."""
    model, _, frontend = built
    audio = np.tile(paraformer_audio("speech_4s"), 5)[: 30 * CHUNK]
    state, online = model.new_stream("cpu"), frontend.stream()
    sizes, work = [], []
    for k in range(30):
        feats = online.accept(torch.from_numpy(audio[k * CHUNK : (k + 1) * CHUNK]))
        (out,) = model.stream_step([state], [feats], [False])
        work.append((out.encoder_frames, out.attended_keys))
        sizes.append(sum(t.numel() for t in state.tensors()))
    assert work[:5] == [(15, 15), (15, 25), (15, 35), (15, 45), (15, 55)]
    assert set(work[4:]) == {(15, 55)}
    assert len(set(sizes[4:])) == 1 and max(sizes) == sizes[-1]
    layers, heads, d_k = 3, 2, 16
    assert state.encoder_kv.shape == (layers, 2, heads, 40, d_k)
    assert state.decoder_kv.shape[3] == 10  # one chunk of the previous encoder output


@pytest.mark.anyio
async def test_twenty_segments_leave_no_state(built):
    model, tokens, frontend = built
    worker = ChunkedWorker(model, tokens, frontend)
    handle = FunasrHandle(worker)
    events = aiter(handle)
    audio = paraformer_audio("speech_4s")
    for i in range(20):
        handle.feed(audio[: 4800 * (1 + i % 5)])  # 0.3 .. 1.5 s: short, full and tail chunks
        handle.commit()
        drive(worker)
        while True:
            event = await asyncio.wait_for(anext(events), 10)
            if isinstance(event, Final):
                break
        assert event.segment == i
        (stream,) = worker.streams
        assert stream.queue == []  # the segment's caches and front end went with it
    handle.finish()
    drive(worker)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(events), 10)
    assert not worker.streams


@pytest.mark.anyio
async def test_audio_after_commit_opens_the_next_segment(built):
    model, tokens, frontend = built
    worker = ChunkedWorker(model, tokens, frontend)
    handle = FunasrHandle(worker)
    audio = golden_audio("stream_4s")
    handle.feed(audio[:CHUNK])
    handle.commit()
    handle.feed(audio)  # before the worker ran segment 0's final chunk
    handle.commit()
    other = FunasrHandle(worker)
    other.feed(audio)
    other.cancel()  # its state goes at once
    drive(worker)
    calls = golden()["streaming"]["stream_4s"]["calls"]
    got = await events_of(handle, 2 + len(calls))  # a partial and the (tail) final, then 1
    assert [(type(e), e.segment) for e in got if isinstance(e, Final)] == [(Final, 0), (Final, 1)]
    assert got[0].stable == calls[0]["text"] and got[1].text.startswith(got[0].stable)
    assert got[-1].text == "".join(c["text"] for c in calls)
    assert len(worker.streams) == 1


@pytest.mark.gpu
def test_batched_streams_match_funasr_on_cuda(folder):
    """On the GPU, three streams batched, one of them starting two chunks late (so caches of
    different lengths share a batch): every chunk still matches funasr's."""
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    model, tokens, frontend = build_paraformer(folder, device="cuda")
    t = tensors()
    plan = [("stream_4s", 0), ("stream_tail", 0), ("stream_4s", 2)]  # (name, first step)
    runs = [
        (name, start, golden_audio(name), model.new_stream("cuda"), frontend.stream(), [0])
        for name, start in plan
    ]
    for step_no in range(9):
        batch = []
        for name, start, audio, state, online, fed in runs:
            c = step_no - start
            calls = golden()["streaming"][name]["calls"]
            if 0 <= c < len(calls):
                batch.append((name, c, calls[c], audio, state, online, fed))
        if not batch:
            break
        feats, states, final = [], [], []
        for _, _, call, audio, state, online, fed in batch:
            (step,) = call["steps"]
            piece = torch.from_numpy(audio[fed[0] : fed[0] + call["samples"]])
            fed[0] += call["samples"]
            tail = step["tail_chunk"]
            feats.append(None if tail else online.accept(piece, is_final=step["is_final"]))
            states.append(state)
            final.append(step["is_final"])
        calls_before = model.encoder_calls
        outs = model.stream_step(states, feats, final, trace=True)
        assert model.encoder_calls == calls_before + 1
        for (name, c, call, *_), out in zip(batch, outs, strict=True):
            key = f"streaming/{name}/call{c}/step0/"
            close(out.encoder_out.cpu(), t[key + "encoder_out"], 2e-3)
            close(out.alphas.cpu(), t[key + "alphas_raw"], 2e-3)
            assert out.ids == call["steps"][0]["token_ids"]
            assert tokens.text(out.ids) == call["text"]
