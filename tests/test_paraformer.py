"""Our Paraformer against funasr 1.4.16 (golden fixtures, tests/fixtures/make_paraformer_golden.py):
features -> encoder -> CIF -> decoder -> ids -> text, one clip at a time and batched; FunASR's
text post-processing; the folder loader; the offline model served on the segment policy."""

from __future__ import annotations

import asyncio
import json
from functools import cache

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.chunked import FunasrHandle, SegmentWorker, build_paraformer, load_paraformer
from engine.funasr_loader import funasr_model, load_state_dict, read_folder
from engine.funasr_text import CharTokens, sentence_postprocess
from engine.loader import ModelSpec, find_family, load
from engine.models.paraformer import ParaformerConfig
from engine.runtime import Runtime
from engine.streaming import Final, Partial, StreamOptions
from tests.tiny_models import FIXTURES, paraformer_audio
from tests.tiny_models import build_paraformer as build_checkpoint

GOLDEN = FIXTURES / "paraformer"
ATOL = 2e-4
RTOL = 2e-4


@cache
def golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    build = golden()["checkpoints"]["offline"]["build"]
    return build_checkpoint(tmp_path_factory.mktemp("paraformer") / "tiny", **build)


@pytest.fixture(scope="module")
def built(folder):
    return build_paraformer(folder)


def features(frontend, clips: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    audio = [torch.from_numpy(paraformer_audio(c)) for c in clips]
    lengths = torch.tensor([a.numel() for a in audio])
    return frontend(torch.nn.utils.rnn.pad_sequence(audio, batch_first=True), lengths)


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> None:
    """ours == ref within atol + RTOL * |ref| (float32 rounding differs across CPUs: on this
    machine the largest difference is 5e-5; an H200 host's Xeon gave up to 2.6e-4)."""
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=RTOL)


# ---- the model against funasr ------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["hello", "weather", "speech_4s", "silence_1s"])
def test_offline_matches_funasr(built, clip):
    model, tokens, frontend = built
    case, t = golden()["offline"][clip], tensors()
    feats, frames = features(frontend, [clip])
    assert int(frames[0]) == case["lfr_frames"]
    r = model.recognize(feats, frames)
    n = int(r.token_num[0])
    assert n == case["token_num"]
    close(r.encoder_out[0], t[case["encoder_out"]])
    close(r.alphas[0], t[case["alphas"]])
    close(r.peaks[0], t[case["cif_peak"]])
    close(r.acoustic_embeds[0, :n], t[case["acoustic_embeds"]])
    close(r.logits[0, :n], t[case["decoder_logits"]])
    assert r.logits[0, :n].argmax(-1).tolist() == case["argmax_ids"]
    assert r.ids[0] == case["token_ids"]
    assert tokens.tokens_of(r.ids[0]) == case["tokens"]
    assert tokens.text(r.ids[0]) == case["text"]


def test_batch_equals_each_clip_alone(built):
    """Padded items get what they get alone (funasr with batch size 1)."""
    model, tokens, frontend = built
    clips = ["hello", "silence_1s", "speech_4s", "weather"]
    feats, frames = features(frontend, clips)
    r = model.recognize(feats, frames)
    for b, clip in enumerate(clips):
        case = golden()["offline"][clip]
        n = int(r.token_num[b])
        assert n == case["token_num"]
        close(r.encoder_out[b, : frames[b]], tensors()[case["encoder_out"]])
        close(r.logits[b, :n], tensors()[case["decoder_logits"]])
        assert tokens.text(r.ids[b]) == case["text"]


def test_postprocess_matches_funasr():
    for case in golden()["postprocess"]:
        assert sentence_postprocess(case["tokens"]) == case["text"], case["tokens"]
    # more cases, each checked against funasr's sentence_postprocess
    cases = {
        ("i", "b", "m", "is", "good"): "IBM is good",
        ("我", "们", "a", "b", "c", "的"): "我们ABC的",
        ("a", "你", "b"): "a你b",
        ("12", "3", "中国"): "123中国",  # whole tokens compared as strings: "中国" is Chinese
        ("你", "it's", "好"): "你it's好",
        ("the", "，", "is"): "the ，is",
        ("x", "y", "z", "w"): "XYZW",
        ("don't", "你"): "don't你",
        ("<unk>",): "",
        ("你", "好", "hel@@", "lo", "wor@@", "ld", "今", "天"): "你好hello world今天",
    }
    for tokens, text in cases.items():
        assert sentence_postprocess(tokens) == text, tokens
    assert sentence_postprocess([b"\xe4\xbd\xa0", "a"]) == "你a"  # funasr decodes bytes


def test_folder_config_and_family(folder):
    f = read_folder(folder)
    assert f.model == funasr_model(folder) == "Paraformer"
    assert (f.weights.name, f.tokens.name, f.cmvn.name, f.seg_dict.name) == (
        "model.pt",
        "tokens.json",
        "am.mvn",
        "seg_dict",
    )
    tokens = CharTokens.from_file(f.tokens)
    info = golden()["tokenizer"]
    assert len(tokens) == info["vocab_size"] and tokens.tokens[info["unk_id"]] == "<unk>"
    cfg = ParaformerConfig.from_funasr(f.config, len(tokens))
    assert (cfg.d_model, cfg.encoder_blocks, cfg.decoder_att_layers, cfg.input_size) == (
        32,
        3,
        2,
        560,
    )
    assert cfg.cif_tail_threshold == 0.45 and not cfg.streaming
    assert find_family(folder).name == "paraformer"


def test_wrapped_checkpoints_load(folder, tmp_path):
    """model.pt in a training wrapper, with DataParallel's `module.` prefix, loads the same."""
    state = load_state_dict(folder / "model.pt")
    wrapped = tmp_path / "model.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    again = load_state_dict(wrapped)
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], v) for k, v in state.items())


def test_mismatched_checkpoint_is_refused(folder, tmp_path):
    model, _, _ = build_paraformer(folder)
    state = load_state_dict(folder / "model.pt")
    del state["encoder.after_norm.weight"]
    with pytest.raises(ValueError, match="missing"):
        model.load_weights(state)


# ---- served: the segment policy ----------------------------------------------------------------


def drive(worker) -> None:
    """The runtime's turn, on the test's thread: take the inbox, step while there is work."""
    worker.take_inbox()
    while worker.has_work():
        worker.step()


async def next_event(events, timeout: float = 30):
    return await asyncio.wait_for(anext(events), timeout)


@pytest.mark.anyio
async def test_segment_policy_partials_then_final(folder):
    runtime = Runtime()
    model = load(ModelSpec(str(folder), "tiny"), runtime=runtime, device="cpu")
    assert model.kind == "asr" and model.name == "tiny" and model.language == "zh"
    audio = paraformer_audio("speech_4s")
    handle = model.open_stream(StreamOptions())
    events = aiter(handle)
    handle.feed(audio[:32000])
    first = await next_event(events)
    handle.feed(audio[32000:])
    second = await next_event(events)
    handle.commit()
    final = await next_event(events)
    runtime.shutdown()
    assert isinstance(first, Partial) and (first.segment, first.revision) == (0, 1)
    assert first.stable == "" and first.end_sample == 32000
    assert isinstance(second, Partial) and (second.revision, second.end_sample) == (2, 64000)
    assert second.unstable == golden()["offline"]["speech_4s"]["text"]  # all 4 s, decoded whole
    assert isinstance(final, Final) and final.segment == 0 and final.language == "zh"
    assert final.text == golden()["offline"]["speech_4s"]["text"]
    assert handle.consumed_samples == 64000


@pytest.mark.anyio
async def test_streams_committing_together_share_one_decode(built):
    model, tokens, frontend = built
    worker = SegmentWorker(model, tokens, frontend, step_seconds=None)
    clips = ["hello", "weather", "silence_1s"]
    handles = [FunasrHandle(worker) for _ in clips]
    for h, clip in zip(handles, clips, strict=True):
        h.feed(paraformer_audio(clip))
        h.commit()
    calls = model.encoder_calls
    drive(worker)
    assert model.encoder_calls == calls + 1
    finals = [await next_event(aiter(h)) for h in handles]
    assert [f.text for f in finals] == [golden()["offline"][c]["text"] for c in clips]
    assert worker.streams and all(not s.queue for s in worker.streams)


@pytest.mark.anyio
async def test_segments_numbering_clear_and_empty_commits(built):
    model, tokens, frontend = built
    worker = SegmentWorker(model, tokens, frontend, step_seconds=None)
    handle = FunasrHandle(worker)
    events = aiter(handle)
    handle.commit()  # nothing fed: an empty final
    handle.feed(paraformer_audio("hello"))
    handle.clear()  # segment 1 dropped; its number is used up
    handle.feed(paraformer_audio("weather"))
    handle.commit()
    handle.feed(np.zeros(0, np.float32))  # an empty feed opens a segment with no audio
    handle.finish()
    drive(worker)
    got = [await next_event(events) for _ in range(3)]
    assert [(type(e), e.segment, e.text) for e in got] == [
        (Final, 0, ""),
        (Final, 2, golden()["offline"]["weather"]["text"]),
        (Final, 3, ""),
    ]
    with pytest.raises(StopAsyncIteration):
        await next_event(events)
    assert not worker.streams


def test_language_option(folder):
    runtime = Runtime()
    model = load_paraformer(folder, "tiny", runtime=runtime, device="cpu")
    model.validate(StreamOptions("zh"))
    model.validate(StreamOptions("Chinese", prompt="热词 hotwords are ignored"))
    with pytest.raises(ValueError):
        model.validate(StreamOptions("en"))
    runtime.shutdown()


@pytest.mark.gpu
def test_offline_batch_on_cuda(folder):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    model, tokens, frontend = build_paraformer(folder, device="cuda")
    clips = ["hello", "silence_1s", "speech_4s", "weather"]
    feats, frames = features(frontend, clips)
    r = model.recognize(feats.cuda(), frames.cuda())
    for b, clip in enumerate(clips):
        case = golden()["offline"][clip]
        n = int(r.token_num[b])
        assert n == case["token_num"]
        close(r.logits[b, :n].cpu(), tensors()[case["decoder_logits"]], 2e-3)
        assert tokens.text(r.ids[b]) == case["text"]
