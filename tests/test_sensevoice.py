"""Our SenseVoiceSmall against funasr 1.4.16 (golden fixtures,
tests/fixtures/make_sensevoice_golden.py): features -> queries + encoder -> CTC log-probs -> ids
-> text -> rich tags, for language auto and forced, itn on and off, one clip at a time and
batched (settings mixed in a batch); the SentencePiece decoding; the folder loader; the model
served on the segment policy."""

from __future__ import annotations

import asyncio
import json
import shutil
from functools import cache

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.chunked import FunasrHandle
from engine.funasr_loader import read_folder
from engine.loader import ModelSpec, find_family, load
from engine.models.sensevoice import RichText, SenseVoiceConfig, parse_rich, query_ids
from engine.runtime import Runtime
from engine.sensevoice_asr import QueryOptions, SenseVoiceWorker, build_sensevoice, language_query
from engine.sentencepiece_tokenizer import SentencePieceTokens
from engine.streaming import Final, Partial, StreamOptions
from tests.tiny_models import FIXTURES, SENSEVOICE_BPE_FILE, paraformer_audio
from tests.tiny_models import build_sensevoice as build_checkpoint

GOLDEN = FIXTURES / "sensevoice"
ATOL = 2e-4
RTOL = 2e-4
CLIPS = ["hello", "weather", "speech_4s", "silence_1s", "tone_short"]


@cache
def golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden.safetensors")


def case(setting: str, clip: str) -> dict:
    return golden()["model"][setting][clip]


def settings() -> dict[str, dict]:
    return golden()["settings"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    build = golden()["checkpoint"]["build"]
    return build_checkpoint(tmp_path_factory.mktemp("sensevoice") / "tiny", **build)


@pytest.fixture(scope="module")
def built(folder):
    return build_sensevoice(folder)


def features(frontend, clips: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    audio = [torch.from_numpy(paraformer_audio(c)) for c in clips]
    lengths = torch.tensor([a.numel() for a in audio])
    return frontend(torch.nn.utils.rnn.pad_sequence(audio, batch_first=True), lengths)


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> None:
    """ours == ref within atol + RTOL * |ref| (float32 rounding differs across CPUs)."""
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=RTOL)


def check_item(r, b: int, setting: str, clip: str, tokens: SentencePieceTokens) -> None:
    """Item b of a Recognition against the golden case, at every stage."""
    c = case(setting, clip)
    n = int(r.lengths[b])
    assert n == c["frames"] == c["lfr_frames"] + 4
    enc, logprobs = r.encoder_out[b, :n], r.logprobs[b, :n]
    for name in c["tensors"]:
        close(enc if name.endswith("encoder_out") else logprobs, tensors()[name])
    for ours, ref in ((enc, c["encoder_out"]), (logprobs, c["logprobs"])):
        assert list(ours.shape) == ref["shape"]
        assert float(ours.double().sum()) == pytest.approx(ref["sum"], rel=1e-5, abs=1e-2)
        assert float(ours.double().square().sum()) == pytest.approx(ref["sum_sq"], rel=1e-5)
    assert logprobs.argmax(-1).tolist() == c["argmax"]
    assert r.ids[b] == c["token_ids"]
    text = tokens.text(r.ids[b])
    assert text == c["text"]
    assert parse_rich(text).text == c["text_without_tags"]


# ---- the model against funasr ------------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIPS)
def test_features_match_funasr(built, clip):
    _, _, frontend = built
    ref = golden()["features"][clip]
    feats, frames = features(frontend, [clip])
    x = feats[0, : frames[0]]
    assert int(frames[0]) == ref["lfr_frames"]
    rows, frame_mean, dim_mean = (tensors()[k] for k in ref["tensors"])
    close(x[ref["rows"]], rows, 1e-5)
    close(x.double().mean(1), frame_mean, 1e-5)
    close(x.double().mean(0), dim_mean, 1e-5)


@pytest.mark.parametrize("setting", ["auto", "auto_itn", "zh", "en_itn", "ko"])
def test_each_clip_matches_funasr(built, setting):
    model, tokens, frontend = built
    args = settings()[setting]
    for clip in CLIPS:
        feats, frames = features(frontend, [clip])
        r = model.recognize(feats, frames, args["language"], args["use_itn"])
        check_item(r, 0, setting, clip, tokens)


def test_batch_with_mixed_settings_equals_each_alone(built):
    """One batch, every clip with every setting: each item gets funasr's batch-of-one result."""
    model, tokens, frontend = built
    items = [(s, c) for s in settings() for c in CLIPS]
    feats, frames = features(frontend, [c for _, c in items])
    languages = [settings()[s]["language"] for s, _ in items]
    itns = [settings()[s]["use_itn"] for s, _ in items]
    calls = model.encoder_calls
    r = model.recognize(feats, frames, languages, itns)
    assert model.encoder_calls == calls + 1
    for b, (setting, clip) in enumerate(items):
        check_item(r, b, setting, clip, tokens)


def test_queries_steer_the_tags(built):
    """The tiny model answers its query frames as the trained one does: a language tag that
    follows the language query and a text-norm tag that follows use_itn, then the text."""
    for setting, args in settings().items():
        for clip in CLIPS:
            rich = parse_rich(case(setting, clip)["text"])
            language = "zh" if args["language"] == "auto" else args["language"]
            assert rich.language == language and rich.emotion and rich.event
            assert rich.textnorm == ("withitn" if args["use_itn"] else "woitn")
    assert query_ids("auto", False) == (0, 15) and query_ids("yue", True) == (7, 14)
    with pytest.raises(ValueError):
        query_ids("fr")
    texts = {s: case(s, "speech_4s")["text_without_tags"] for s in settings()}
    assert len(set(texts.values())) > 2  # the queries change the transcript too
    blanks = sum(case("auto", c)["blank_frames"] for c in CLIPS)
    frames = sum(case("auto", c)["frames"] for c in CLIPS)
    assert 0.2 < blanks / frames < 0.9  # non-trivial CTC output: neither all blank nor none


# ---- text: SentencePiece and the rich tags ------------------------------------------------------


def test_sentencepiece_decoding_matches_funasr(folder):
    tokens = SentencePieceTokens.from_file(folder / SENSEVOICE_BPE_FILE)
    info = golden()["tokenizer"]
    assert len(tokens) == info["vocab_size"]
    assert [tokens.piece(i) for i in range(len(tokens))] == info["pieces"]
    for item in info["decode"]:
        assert tokens.text(item["ids"]) == item["text"], item["ids"]
    for item in info["encode"]:
        assert tokens.encode(item["text"]) == item["ids"], item["text"]
    assert tokens.id_of("<|woitn|>") == info["pieces"].index("<|woitn|>")
    assert tokens.id_of("<|nope|>") is None


def test_parse_rich():
    raw = "<|en|><|EMO_UNKNOWN|><|Speech_Noise|><|withitn|>Hello, world."
    expected = RichText("Hello, world.", "en", "EMO_UNKNOWN", "Speech_Noise", "withitn")
    assert parse_rich(raw) == expected
    assert parse_rich(raw).tags() == {
        "language": "en",
        "emotion": "EMO_UNKNOWN",
        "event": "Speech_Noise",
        "textnorm": "withitn",
    }
    # the first tag of a kind counts; every tag leaves the text; unknown tags too
    mid = parse_rich("<|zh|><|SAD|> 你好 <|yue|><|HAPPY|>吗<|odd_one|>")
    assert (mid.text, mid.language, mid.emotion, mid.event) == ("你好 吗", "zh", "SAD", None)
    assert parse_rich("") == RichText("") and parse_rich("").tags() == {}
    assert parse_rich("<|nospeech|><|Event_UNK|>").tags() == {
        "language": "nospeech",
        "event": "Event_UNK",
    }
    assert parse_rich("a < | b |> c").text == "a < | b |> c"


# ---- the folder --------------------------------------------------------------------------------


def test_folder_config_and_family(folder):
    f = read_folder(folder)
    assert f.model == "SenseVoiceSmall" and f.tokens is None
    assert (f.weights.name, f.cmvn.name, f.bpe_model.name) == (
        "model.pt",
        "am.mvn",
        SENSEVOICE_BPE_FILE,
    )
    cfg = SenseVoiceConfig.from_funasr(f.config, golden()["tokenizer"]["vocab_size"])
    assert (cfg.d_model, cfg.heads, cfg.blocks, cfg.tp_blocks, cfg.input_size) == (
        32,
        2,
        3,
        2,
        560,
    )
    assert find_family(folder).name == "sensevoice"


def test_folder_without_configuration_json(folder, tmp_path):
    """Without configuration.json: `bpe.model` as funasr looks it up, else the only
    `*.bpe.model`."""
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "configuration.json").unlink()
    assert read_folder(bare).bpe_model.name == SENSEVOICE_BPE_FILE
    shutil.copyfile(bare / SENSEVOICE_BPE_FILE, bare / "bpe.model")
    assert read_folder(bare).bpe_model.name == "bpe.model"
    (bare / "bpe.model").unlink()
    shutil.copyfile(bare / SENSEVOICE_BPE_FILE, bare / "other.bpe.model")
    assert read_folder(bare).bpe_model is None
    with pytest.raises(FileNotFoundError, match="SentencePiece"):
        build_sensevoice(bare)


def test_mismatched_checkpoint_is_refused(folder, tmp_path):
    model, _, _ = build_sensevoice(folder)
    state = model.state_dict()
    del state["encoder.tp_norm.weight"]
    with pytest.raises(ValueError, match="missing"):
        model.load_weights(state)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    full = torch.load(bad / "model.pt", weights_only=True)
    full["ctc.ctc_lo.weight"] = full["ctc.ctc_lo.weight"][:-1]
    torch.save(full, bad / "model.pt")
    with pytest.raises(ValueError, match="CTC head"):
        build_sensevoice(bad)


# ---- served: the segment policy ----------------------------------------------------------------


def drive(worker) -> None:
    """The runtime's turn, on the test's thread: take the inbox, step while there is work."""
    worker.take_inbox()
    while worker.has_work():
        worker.step()


async def next_event(events, timeout: float = 30):
    return await asyncio.wait_for(anext(events), timeout)


def expected_final(setting: str, clip: str) -> tuple[str, str, dict[str, str]]:
    rich = parse_rich(case(setting, clip)["text"])
    return rich.text, rich.language, rich.tags()


@pytest.mark.anyio
async def test_served_stream_partials_then_final(folder):
    runtime = Runtime()
    model = load(ModelSpec(str(folder), "tiny"), runtime=runtime, device="cpu")
    assert model.kind == "asr" and model.name == "tiny"
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
    text, language, tags = expected_final("auto", "speech_4s")
    assert isinstance(first, Partial) and (first.segment, first.revision) == (0, 1)
    assert first.stable == "" and first.end_sample == 32000 and "<|" not in first.unstable
    assert isinstance(second, Partial) and (second.revision, second.end_sample) == (2, 64000)
    assert second.unstable == text  # all 4 s, decoded whole
    assert isinstance(final, Final) and final.segment == 0
    assert (final.text, final.language, final.tags) == (text, language, tags)
    assert tags == {"language": "zh", "emotion": "HAPPY", "event": "BGM", "textnorm": "woitn"}
    assert handle.consumed_samples == 64000


@pytest.mark.anyio
async def test_streams_with_their_own_settings_share_one_decode(built):
    """Streams due in the same step, each with its language and use_itn, in one batch."""
    model, tokens, frontend = built
    worker = SenseVoiceWorker(model, tokens, frontend, step_seconds=None)
    plan = [("auto", "hello"), ("en_itn", "weather"), ("ko", "speech_4s"), ("zh", "tone_short")]
    handles = []
    for setting, clip in plan:
        args = settings()[setting]
        h = FunasrHandle(worker, QueryOptions(args["language"], args["use_itn"]))
        h.feed(paraformer_audio(clip))
        h.commit()
        handles.append(h)
    calls = model.encoder_calls
    drive(worker)
    assert model.encoder_calls == calls + 1
    finals = [await next_event(aiter(h)) for h in handles]
    for f, (setting, clip) in zip(finals, plan, strict=True):
        assert (f.text, f.language, f.tags) == expected_final(setting, clip)


@pytest.mark.anyio
async def test_language_and_itn_options(folder):
    runtime = Runtime()
    model = load(ModelSpec(str(folder), "tiny"), runtime=runtime, device="cpu", use_itn=True)
    for language in (None, "auto", "zh", "Chinese", "cantonese", "ko", "nospeech"):
        model.validate(StreamOptions(language, prompt="ignored"))
    for language in ("fr", "German", "xx"):
        with pytest.raises(ValueError):
            model.validate(StreamOptions(language))
    assert model.query_options(StreamOptions()) == QueryOptions("auto", True)
    assert model.query_options(StreamOptions("Korean"), use_itn=False) == QueryOptions("ko")
    assert language_query(" EN ") == "en" and language_query("") == "auto"
    with pytest.raises(ValueError):
        QueryOptions("fr")
    clip = "weather"
    handle = model.open_stream(StreamOptions("en"))  # the model's use_itn: on
    handle.feed(paraformer_audio(clip))
    handle.commit()
    final = await next_event(aiter(handle))
    assert (final.text, final.language, final.tags) == expected_final("en_itn", clip)
    assert final.tags["textnorm"] == "withitn"
    handle = model.open_stream(StreamOptions("zh"), use_itn=False)
    handle.feed(paraformer_audio(clip))
    handle.finish()
    final = await next_event(aiter(handle))
    assert (final.text, final.language, final.tags) == expected_final("zh", clip)
    runtime.shutdown()


@pytest.mark.anyio
async def test_empty_segments(built):
    """A segment with no audio gets an empty Final, no decode, the stream's forced language (or
    the worker's default) and no tags."""
    model, tokens, frontend = built
    worker = SenseVoiceWorker(model, tokens, frontend, None, QueryOptions("ja", False))
    forced = FunasrHandle(worker, QueryOptions("yue", False))
    default = FunasrHandle(worker)
    auto = FunasrHandle(worker, QueryOptions())
    forced.commit()
    forced.feed(np.zeros(0, np.float32))  # an empty feed opens a segment with no audio
    forced.finish()
    default.commit()
    auto.commit()
    calls = model.encoder_calls
    drive(worker)
    assert model.encoder_calls == calls
    got = [await next_event(aiter(forced)) for _ in range(2)]
    got += [await next_event(aiter(h)) for h in (default, auto)]
    assert [(e.segment, e.text, e.language, e.tags) for e in got] == [
        (0, "", "yue", None),
        (1, "", "yue", None),
        (0, "", "ja", None),
        (0, "", None, None),
    ]


@pytest.mark.gpu
def test_batch_on_cuda(folder):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    model, tokens, frontend = build_sensevoice(folder, device="cuda")
    items = [(s, c) for s in settings() for c in CLIPS]
    feats, frames = features(frontend, [c for _, c in items])
    languages = [settings()[s]["language"] for s, _ in items]
    itns = [settings()[s]["use_itn"] for s, _ in items]
    r = model.recognize(feats.cuda(), frames.cuda(), languages, itns)
    for b, (setting, clip) in enumerate(items):
        c = case(setting, clip)
        n = c["frames"]
        for name in c["tensors"]:
            ours = r.encoder_out[b, :n] if name.endswith("encoder_out") else r.logprobs[b, :n]
            close(ours.cpu(), tensors()[name], 2e-3)
        assert r.ids[b] == c["token_ids"]
        assert tokens.text(r.ids[b]) == c["text"]
