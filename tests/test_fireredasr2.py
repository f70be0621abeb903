"""Our FireRedASR2-AED against the official fireredasr2 code (fasr-asr-firered 0.5.8; golden
fixtures from tests/fixtures/make_fireredasr2_golden.py): cmvn.ark, features, encoder, CTC
log-probs, decoder logits, beam search with the package's defaults (n-best ids, confidences,
text), one clip at a time and batched, dense and on the paged engine (forked beams sharing KV
blocks); CTC timestamps; the dict.txt decoding; the folder loader; the model served
on the segment policy, and end to end on /v1/realtime, /v1/stream and /v1/audio/transcriptions."""

from __future__ import annotations

import asyncio
import io
import json
import math
import shutil
from functools import cache

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from audio.kaldi_cmvn import read_cmvn, read_kaldi_matrix
from engine.aed_beam_search import BeamSettings, beam_search
from engine.aed_engine_search import aed_engine, engine_beam_search
from engine.chunked import FunasrHandle
from engine.ctc_timestamps import aligned_times, token_timestamps
from engine.fireredasr2_asr import FireRedWorker, build_fireredasr2, load_fireredasr2
from engine.fireredasr2_tokens import FireRedTokens
from engine.loader import ModelLoadError, ModelSpec, find_family, load
from engine.runtime import Runtime
from engine.streaming import Final, Partial, StreamOptions
from tests.clients import FunasrClient, NativeClient, RealtimeClient
from tests.server import make_server, running
from tests.tiny_models import (
    FIXTURES,
    fireredasr2_audio,
    fireredasr2_cmvn_stats,
    fireredasr2_tensors_sha256,
)
from tests.tiny_models import build_fireredasr2 as build_checkpoint

GOLDEN = FIXTURES / "fireredasr2"
CLIPS = ["hello", "weather", "speech_4s", "silence_1s", "tone_short"]
ATOL = 2e-4
RTOL = 2e-4


@cache
def golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden.safetensors")


def case(clip: str) -> dict:
    return golden()["model"][clip]


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=RTOL)


def samples(clip: str) -> np.ndarray:
    """The clip as the server hears it: int16 / 32768, exact."""
    return fireredasr2_audio(clip).astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    build = golden()["checkpoint"]["build"]
    return build_checkpoint(tmp_path_factory.mktemp("fireredasr2") / "tiny", **build)


@pytest.fixture(scope="module")
def built(folder):
    return build_fireredasr2(folder)


def features(frontend, clips: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    audio = [torch.from_numpy(samples(c)) for c in clips]
    lengths = torch.tensor([a.numel() for a in audio])
    return frontend(torch.nn.utils.rnn.pad_sequence(audio, batch_first=True), lengths)


def test_checkpoint_is_the_fixtures(folder):
    assert fireredasr2_tensors_sha256(folder) == golden()["checkpoint"]["tensors_sha256"]


# ---- front end ---------------------------------------------------------------------------------


def test_cmvn_ark_binary_and_text(folder, tmp_path):
    means, istd = read_cmvn(folder / "cmvn.ark")
    close(torch.from_numpy(means), tensors()["cmvn/means"], 0)
    close(torch.from_numpy(istd), tensors()["cmvn/inverse_std"], 0)
    stats = fireredasr2_cmvn_stats()
    rows = "\n".join("  " + " ".join(repr(float(v)) for v in row) for row in stats)
    text = tmp_path / "cmvn_text.ark"
    text.write_text(f"global [\n{rows} ]\n")
    assert np.array_equal(read_kaldi_matrix(text.read_bytes()), stats)
    keyed = b"global " + (folder / "cmvn.ark").read_bytes()
    assert np.array_equal(read_kaldi_matrix(keyed), stats)
    single = b"\0BFM " + b"\x04" + (2).to_bytes(4, "little") + b"\x04" + (81).to_bytes(4, "little")
    single += stats.astype("<f4").tobytes()
    assert np.allclose(read_kaldi_matrix(single), stats, rtol=1e-6)
    with pytest.raises(ValueError):
        read_kaldi_matrix(b"\0BDM " + b"\x04" + (2).to_bytes(4, "little"))
    with pytest.raises(ValueError):
        read_kaldi_matrix(b"no matrix here")


def test_features_match(built):
    _, _, frontend = built
    feats, frames = features(frontend, CLIPS)  # batched: each item as it is alone
    for b, clip in enumerate(CLIPS):
        g = golden()["features"][clip]
        n = int(frames[b])
        assert n == g["frames"]
        x = feats[b, :n]
        assert not feats[b, n:].any()
        if f"features/{clip}" in tensors():
            close(x, tensors()[f"features/{clip}"])
        else:
            close(x[g["rows"]], tensors()[f"features/{clip}/rows"])
            close(x.double().mean(1), tensors()[f"features/{clip}/frame_mean"])
            close(x.double().mean(0), tensors()[f"features/{clip}/dim_mean"])
        assert float(x.double().sum()) == pytest.approx(g["sum"], rel=1e-5, abs=1e-2)


# ---- model -------------------------------------------------------------------------------------


@torch.inference_mode()
def test_encoder_ctc_and_decoder_logits(built):
    model, _, frontend = built
    feats, frames = features(frontend, CLIPS)
    enc, lengths = model.encoder(feats, frames)
    logprobs = model.ctc_log_probs(enc)
    for b, clip in enumerate(CLIPS):
        c = case(clip)
        n = int(lengths[b])
        assert n == c["encoder_frames"]
        close(enc[b, :n], tensors()[f"model/{clip}/encoder_out"])
        lp = logprobs[b, :n]
        if f"model/{clip}/logprobs" in tensors():
            close(lp, tensors()[f"model/{clip}/logprobs"])
        assert float(lp.double().sum()) == pytest.approx(c["logprobs"]["sum"], rel=1e-5)
        assert lp.argmax(-1).tolist() == c["ctc_argmax"]
        # teacher-forced: one pass over [sos] + the best hypothesis
        state = model.decoder.start(enc[b : b + 1, :n], lengths[b : b + 1], beams=1)
        logits, _ = model.decoder(torch.tensor([c["decoder_input"]]), state)
        close(logits[0], tensors()[f"model/{clip}/decoder_logits"])
        assert logits[0].argmax(-1).tolist() == c["decoder_argmax"]


@torch.inference_mode()
def test_incremental_decoder_equals_one_pass(built):
    """Position by position with the cache gives the one-pass logits, for two beams at once."""
    model, _, frontend = built
    clip = "weather"
    feats, frames = features(frontend, [clip])
    enc, lengths = model.encoder(feats, frames)
    ys = torch.tensor(case(clip)["decoder_input"])
    rows = torch.stack([ys, ys.flip(0)])  # a second hypothesis in the same segment
    state = model.decoder.start(enc, lengths, beams=2)
    whole, _ = model.decoder(rows, state)
    steps = []
    for t in range(rows.shape[1]):
        logits, state = model.decoder(rows[:, t : t + 1], state)
        steps.append(logits)
    close(torch.cat(steps, dim=1), whole, 1e-4)
    close(whole[0], tensors()[f"model/{clip}/decoder_logits"])


def test_beam_search_defaults_match_the_package(built):
    """FireRedAsr2Config's defaults (beam 3, smoothing 1.25, length penalty 0.6): the 3-best
    token ids and confidences, one clip at a time and all clips in one batch."""
    model, tokens, frontend = built
    defaults = golden()["config"]
    settings = BeamSettings()
    assert (settings.beam_size, settings.softmax_smoothing) == (
        defaults["beam_size"],
        defaults["softmax_smoothing"],
    )
    assert (settings.length_penalty, settings.eos_penalty) == (
        defaults["aed_length_penalty"],
        defaults["eos_penalty"],
    )
    with torch.inference_mode():
        feats, frames = features(frontend, CLIPS)
        enc, lengths = model.encoder(feats, frames)
        batched = beam_search(model.decoder, enc, lengths, settings, nbest=3)
        for b, clip in enumerate(CLIPS):
            alone = beam_search(
                model.decoder, enc[b : b + 1], lengths[b : b + 1], settings, nbest=3
            )[0]
            ref = case(clip)["nbest"]
            for hyps in (alone, batched[b]):
                assert [h.ids for h in hyps] == [r["ids"] for r in ref]
                for h, r in zip(hyps, ref, strict=True):
                    assert h.confidence == pytest.approx(r["confidence"], abs=1e-5)
            assert tokens.text(alone[0].ids) == case(clip)["text"]
            assert round(alone[0].confidence, 3) == case(clip)["confidence"]


def test_beam_search_on_the_engine(built):
    """Beams as engine requests (forks sharing KV blocks) on the paged decoder: the package's
    3-best ids and confidences for all clips in one engine; the cross-attention keys are
    computed once (one call for all segments); four beams hold fewer blocks than four separate
    requests of their lengths would (once they share a full block); every block comes back."""
    model, _, frontend = built
    engine = aed_engine(model, attention_backend="sdpa")
    free = engine.blocks.num_free
    cross_calls = []
    model.decoder.layer_stack[0].cross_attn.w_ks.register_forward_hook(
        lambda *_: cross_calls.append(1)
    )
    with torch.inference_mode():
        feats, frames = features(frontend, CLIPS)
        enc, lengths = model.encoder(feats, frames)
    got = engine_beam_search(engine, enc, lengths, BeamSettings(), nbest=3)
    assert len(cross_calls) == 1
    for hyps, clip in zip(got, CLIPS, strict=True):
        ref = case(clip)["nbest"]
        assert [h.ids for h in hyps] == [r["ids"] for r in ref]
        for h, r in zip(hyps, ref, strict=True):
            assert h.confidence == pytest.approx(r["confidence"], abs=1e-5)
    usage = []
    after_step = engine.scheduler.after_step

    def record(batch) -> None:
        after_step(batch)
        tables = [r.block_table for r in engine.scheduler.running]
        usage.append((len(tables), sum(map(len, tables)), len({b for t in tables for b in t})))

    engine.scheduler.after_step = record
    four = engine_beam_search(engine, enc[:1], lengths[:1], BeamSettings(beam_size=4))
    assert len(four[0][0].ids) > 0
    # once the beams' common prefix fills a block (16 tokens), they hold it once; the block
    # being written is each beam's own (copied on write)
    at_four = [(total, distinct) for n, total, distinct in usage if n == 4]
    assert all(distinct <= total for total, distinct in at_four)
    assert any(distinct < total for total, distinct in at_four)
    assert not engine.requests and engine.blocks.num_free == free


def test_hypotheses_end_at_eos_or_at_the_length_limit(built):
    """Some reference hypotheses end with <eos>, some run to the encoder length (the tiny
    model's random weights): both ends are covered by the fixtures."""
    ends = [(len(case(c)["nbest"][0]["ids"]), case(c)["encoder_frames"]) for c in CLIPS]
    assert any(n < limit for n, limit in ends)
    assert any(n == limit for n, limit in ends)


def test_beam_settings_are_checked():
    for bad in ({"beam_size": 0}, {"eos_penalty": 0.0}, {"softmax_smoothing": 0.0}):
        with pytest.raises(ValueError):
            BeamSettings(**bad)


def test_max_len_and_greedy(built):
    model, _, frontend = built
    with torch.inference_mode():
        feats, frames = features(frontend, ["hello"])
        enc, lengths = model.encoder(feats, frames)
        short = beam_search(model.decoder, enc, lengths, BeamSettings(max_len=3))[0][0]
        greedy = beam_search(model.decoder, enc, lengths, BeamSettings(beam_size=1))[0][0]
    assert len(short.ids) == 3
    assert greedy.ids[:1] == case("hello")["decoder_argmax"][:1]  # the first step's argmax


def test_ctc_timestamps(built):
    """return_timestamp=True: forced alignment where it is possible (hello, weather,
    speech_4s), the even split where it is not (silence_1s, tone_short: more tokens with their
    repeats than frames), word pieces merged."""
    model, tokens, frontend = built
    with torch.inference_mode():
        feats, frames = features(frontend, CLIPS)
        enc, lengths = model.encoder(feats, frames)
        logprobs = model.ctc_log_probs(enc)
    aligned = []
    for b, clip in enumerate(CLIPS):
        c = case(clip)
        ids = c["nbest"][0]["ids"]
        lp = logprobs[b, : int(lengths[b])]
        aligned.append(aligned_times(lp, ids) is not None)
        stamps = token_timestamps(lp, ids, len(samples(clip)) / 16000, tokens)
        assert [s[0] for s in stamps] == [s[0] for s in c["timestamp"]]
        got = np.array([s[1:] for s in stamps])
        assert np.allclose(got, [s[1:] for s in c["timestamp"]], atol=1e-6), clip
    assert aligned == [True, True, True, False, False]


# ---- tokens, loader ----------------------------------------------------------------------------


def test_dict_txt_decoding(folder, tmp_path):
    tokens = FireRedTokens.from_file(folder / "dict.txt")
    assert len(tokens) == golden()["tokenizer"]["dict_size"]
    for item in golden()["tokenizer"]["detokenize"]:
        assert tokens.joined(item["ids"]) == item["text"]
    assert tokens.text([40, 41, 0, 42]) == "in a is"  # <blank> removed, lower-cased
    odd = tmp_path / "dict.txt"
    odd.write_text("<blank> 0\n<space> 1\nA\n\n")
    assert FireRedTokens.from_file(odd).tokens == ["<blank>", " ", "A", " "]
    odd.write_text("<blank> 0\nA 2\n")
    with pytest.raises(ValueError, match="id 2"):
        FireRedTokens.from_file(odd)


def test_loader(folder, tmp_path):
    assert find_family(folder).name == "fireredasr2"
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "dict.txt").write_text("<blank> 0\n")
    with pytest.raises(ValueError, match="dict.txt has 1 tokens"):
        build_fireredasr2(bad)
    llm = tmp_path / "llm"
    shutil.copytree(folder, llm)
    shutil.copy(folder / "model.pth.tar", llm / "asr_encoder.pth.tar")
    with pytest.raises(ModelLoadError, match="Qwen2-7B-Instruct/config.json"):
        load(ModelSpec(str(llm)), device="cpu")
    model, _, _ = build_fireredasr2(folder)
    state = {k: v for k, v in torch.load(folder / "model.pth.tar", weights_only=False)[
        "model_state_dict"
    ].items() if not k.startswith("ctc.")}  # fmt: skip
    with pytest.raises(ValueError, match="lacks"):
        model.load_weights(state)


# ---- served: the segment policy ----------------------------------------------------------------


def drive(worker) -> None:
    worker.take_inbox()
    while worker.has_work():
        worker.step()


async def next_event(events, timeout: float = 30):
    return await asyncio.wait_for(anext(events), timeout)


@pytest.mark.anyio
async def test_served_stream_partials_then_final(folder):
    runtime = Runtime()
    model = load(ModelSpec(str(folder), "tiny"), runtime=runtime, device="cpu",
                 attention_backend="sdpa", cuda_graphs=False)  # fmt: skip
    assert model.kind == "asr" and model.max_segment_seconds == 60.0
    model.validate(StreamOptions("zh", prompt="ignored"))
    audio = samples("speech_4s")
    handle = model.open_stream(StreamOptions())
    events = aiter(handle)
    handle.feed(audio[:32000])
    first = await next_event(events)
    handle.feed(audio[32000:])
    second = await next_event(events)
    handle.commit()
    final = await next_event(events)
    runtime.shutdown()
    assert isinstance(first, Partial) and (first.stable, first.end_sample) == ("", 32000)
    assert isinstance(second, Partial) and second.unstable == case("speech_4s")["text"]
    assert isinstance(final, Final) and final.text == case("speech_4s")["text"]


@pytest.mark.anyio
async def test_due_streams_share_one_decode(built):
    model, tokens, frontend = built
    worker = FireRedWorker(model, tokens, frontend, step_seconds=None)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    handles = []
    for clip in CLIPS:
        h = FunasrHandle(worker)
        h.feed(samples(clip))
        h.commit()
        handles.append(h)
    drive(worker)
    assert len(calls) == 1
    finals = [await next_event(aiter(h)) for h in handles]
    assert [f.text for f in finals] == [case(c)["text"] for c in CLIPS]


# ---- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(folder):
    runtime = Runtime()
    model = load_fireredasr2(folder, "firered", runtime=runtime, device="cpu")
    with running(make_server([model])) as url:
        yield url
    runtime.shutdown()


def pcm16_exact(clip: str) -> bytes:
    return fireredasr2_audio(clip).astype("<i2").tobytes()


@pytest.mark.anyio
async def test_realtime_stream_and_transcriptions(served):
    text = case("speech_4s")["text"]
    c = await RealtimeClient.connect(served, query="model=firered")
    await c.recv()
    await c.send("session.update", session={"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}})  # fmt: skip
    await c.append(pcm16_exact("speech_4s"), chunk=19200)
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == text
    await c.close()
    n = await NativeClient.connect(served)
    await n.send("start", model="firered", format="pcm16", rate=16000, vad=None)
    await n.recv()
    await n.audio(pcm16_exact("hello"), chunk=32000)
    await n.send("end")
    final = await n.wait_for("final")
    assert final["text"] == case("hello")["text"]
    assert_words([[w["word"], w["start"], w["end"]] for w in final["words"]], "hello")
    await n.close()
    f = await FunasrClient.connect(served, "/?model=firered")
    results = await f.transcribe(pcm16_exact("hello"), mode="offline")
    offline = [r for r in results if r["mode"] == "offline" and r["text"]]
    want = case("hello")["timestamp"]
    assert len(offline) == 1  # the whole clip, one segment: its timed words in milliseconds
    assert json.loads(offline[0]["timestamp"]) == offline[0]["stamp_sents"][0]["ts_list"]
    assert np.allclose(
        json.loads(offline[0]["timestamp"]), [[1000 * s, 1000 * e] for _, s, e in want], atol=11
    )
    await f.close()
    buf = io.BytesIO()
    sf.write(buf, fireredasr2_audio("speech_4s"), 16000, format="WAV", subtype="PCM_16")
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(
            f"http://{served}/v1/audio/transcriptions",
            files={"file": ("a.wav", buf.getvalue())},
            data={
                "model": "firered",
                "response_format": "verbose_json",
                "timestamp_granularities[]": ["word", "segment"],
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["segments"] and body["text"] == " ".join(s["text"] for s in body["segments"])
    assert body["text"].strip() and not math.isnan(body["duration"])
    # the file is cut into segments by the server's VAD: each segment's words lie inside it
    words = body["words"]
    assert words and all(w["start"] <= w["end"] for w in words)
    for seg in body["segments"]:
        inside = [w for w in words if seg["start"] <= w["start"] <= seg["end"]]
        assert inside and all(w["end"] <= seg["end"] + 0.011 for w in inside)
    assert sum(
        seg["start"] <= w["start"] <= seg["end"] for w in words for seg in body["segments"]
    ) == len(words)


def assert_words(words: list, clip: str) -> None:
    """A served final's timed words are the package's `return_timestamp` words; the times agree
    within 11 ms (the served path knows the segment's length to its last 10 ms fbank frame)."""
    want = case(clip)["timestamp"]
    assert [w[0] for w in words] == [w[0] for w in want]
    assert np.allclose([w[1:] for w in words], [w[1:] for w in want], atol=0.011)


def test_transcribe_cli_words(folder, tmp_path):
    """`rtserve transcribe --format verbose_json --words`: the file's timed words; --words
    without verbose_json is refused."""
    import subprocess
    import sys

    path = tmp_path / "hello.wav"
    sf.write(path, fireredasr2_audio("hello"), 16000, subtype="PCM_16")
    cli = [sys.executable, "-m", "rtserve", "transcribe", str(path), "--model", str(folder)]
    r = subprocess.run([*cli, "--format", "verbose_json", "--words"], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["words"] and all(w["start"] <= w["end"] for w in body["words"])
    assert "".join(w["word"] for w in body["words"]) == body["text"].replace(" ", "")
    r = subprocess.run([*cli, "--words"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--words needs --format verbose_json" in r.stderr
