"""The demo recognizer's training pipeline (train/): data generator, tokenizer, dense training
forward, loss going down, resumable runs, export loaded by the production loader, and WER."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from audio.features import whisper_features
from engine.asr import build_qwen3_asr
from engine.asr_prompt import build_prompt
from engine.config import EngineConfig
from engine.engine import Engine
from engine.request import InjectedEmbeds
from engine.runtime import Runtime
from engine.tokenizer import Tokenizer
from tests.qwen3_golden import prompt_logits
from tests.tiny_models import FIXTURES, qwen3_asr_audio
from tests.tiny_models import build_qwen3_asr as build_checkpoint
from train import augment, make_data, texts
from train.data import batches, load_manifests
from train.evaluate import by_kind, load_model, transcribe
from train.export import MAX_BYTES, export
from train.feed import Feed, FeedConfig, Outbox
from train.model import Batcher, build_model, config_json, pad, prepare
from train.synth import SynthStream
from train.tokenizer import ANSWER_PREFIX, write_tokenizer
from train.train_asr import clipped_step, lr_at
from train.train_asr import main as train_main
from train.wer import edit_distance, normalize, wer

CPU = EngineConfig(device="cpu", dtype=torch.float32, block_size=4, num_blocks=1024)
CLIPS = {  # tests/fixtures/make_speech.sh
    "hello": "Hello, this is a speech server test.",
    "weather": "The weather today is sunny with a light breeze.",
}
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "for",
    "on",
    "was",
    "with",
    "he",
    "as",
    "have",
    "be",
    "at",
    "one",
    "this",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """The two committed speech clips as a train and a held-out manifest (one shard each)."""
    root = tmp_path_factory.mktemp("clips")
    (root / "shards").mkdir()
    rows = []
    for name, text in CLIPS.items():
        shutil.copyfile(FIXTURES / f"{name}.ogg", root / "shards" / f"{name}.ogg")
        n = sf.info(str(root / "shards" / f"{name}.ogg")).frames
        rows.append({"id": name, "audio": f"shards/{name}.ogg", "start": 0, "samples": n})
        rows[-1]["text"] = text
    for manifest in ("train.jsonl", "heldout.jsonl"):
        (root / manifest).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder, list(CLIPS.values()) * 20, 320)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tok_dir) -> Tokenizer:
    return Tokenizer.from_folder(tok_dir)


def test_make_data_writes_disjoint_opus_manifests(tmp_path):
    made = make_data.generate(tmp_path, 1, 20 / 3600, 0.25, seed=3, workers=1, words=WORDS)
    train, held = made["a"], made["heldout"]
    assert len(train) >= 3 and len(held) >= 2
    held_variants = {r["voice"].split("+")[1] for r in held}
    train_variants = {r["voice"].split("+")[1] for r in train}
    assert held_variants <= set(make_data.HELDOUT_VARIANTS)
    assert not held_variants & train_variants
    sentences = {make_data.normalize_text(r["text"]) for r in held}
    assert not sentences & {make_data.normalize_text(r["text"]) for r in train}
    assert all(len(s.split()) >= 5 for s in sentences)
    for split, manifest in (("a", "train.jsonl"), ("heldout", "heldout.jsonl")):
        lines = (tmp_path / split / manifest).read_text().splitlines()
        assert [json.loads(line) for line in lines] == made[split]
        info = sf.info(str(tmp_path / split / made[split][0]["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "OPUS")
    utts = load_manifests([tmp_path / "a" / "train.jsonl"])
    for u, r in zip(utts, train, strict=True):
        assert u.audio.size == r["samples"] and u.text == r["text"]
        rms = float(np.sqrt(np.mean(u.audio**2)))
        assert 1e-4 < rms < 0.5  # speech survived the encoding, within the gain range
    # the same seed makes the same sentences and voices (the waveforms differ by a few ms)
    again = make_data.generate(tmp_path / "again", 1, 20 / 3600, 0.25, 3, 1, WORDS)
    for split, rows in made.items():
        said = [(r["text"], r["voice"], r["rate"], r["pitch"]) for r in rows]
        said_again = [(r["text"], r["voice"], r["rate"], r["pitch"]) for r in again[split]]
        n = min(len(said), len(said_again))
        assert said[:n] == said_again[:n] and abs(len(said) - len(said_again)) <= 1


def test_batches_cover_every_utterance_once_within_the_budget(clips):
    utts = load_manifests([clips / "train.jsonl"]) * 7
    seen = []
    for batch in batches(utts, 12.0, random.Random(0), pool=3):
        longest = max(u.audio.size for u in batch)
        assert len(batch) == 1 or len(batch) * longest <= 12.0 * 16000
        seen += batch
    assert len(seen) == len(utts)


def test_tokenizer_round_trip_and_qwen3_asr_tokens(tokenizer):
    text = ANSWER_PREFIX + "Hello, this is the weather? Yes."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # <asr_text> is not special
    v = tokenizer.vocab_size
    assert 300 < v <= 320  # two sentences run out of merges before 320
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>"]
    names += ["<|audio_pad|>", "<asr_text>"]
    assert [tokenizer.token_to_id(n) for n in names] == list(range(v - 7, v))  # after the BPE
    assert tokenizer.token_to_id("<|im_end|>") in tokenizer.eos_token_ids
    prompt = build_prompt(tokenizer)
    assert tokenizer.decode(prompt.ids(tokenizer, 2)) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|>"
        "<|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n"
    )


def test_dense_forward_and_batched_encoder_match_the_engine(tmp_path):
    model, tok = build_qwen3_asr(build_checkpoint(tmp_path / "tiny"), CPU)
    batcher = Batcher(model, tok)
    audio = qwen3_asr_audio("synthetic_12s")  # two 8 s attention windows
    # with shorter batch mates: one and a part chunk, and less than a chunk
    waves = [audio, audio[: 16000 * 33 // 10 + 77], audio[16000:27000]]
    with torch.no_grad():
        flat, counts = batcher.audio(pad(waves), torch.device("cpu"))
        items = flat.split(counts.tolist())
        for x, got in zip(waves, items, strict=True):
            want = model.encoder(whisper_features(torch.from_numpy(x))[0][0])  # window by window
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        embeds = items[0]
        prompt = build_prompt(tok)
        ids = prompt.ids(tok, embeds.shape[0], prefix="language English<asr_text>Hi")
        engine = Engine(model.decoder, tok, CPU)
        want = prompt_logits(engine, ids, [InjectedEmbeds(prompt.audio_start(), embeds)])
        both = torch.cat([embeds, embeds])
        hidden = model.decoder.forward_dense(batcher.embed([ids, ids[:40]], both))
        got = model.decoder.logits(hidden[0])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        # a shorter row in the same batch: its logits do not see the padding after it
        torch.testing.assert_close(
            model.decoder.logits(hidden[1, :40]), want[:40], atol=1e-4, rtol=1e-4
        )


def test_the_feed_process_hands_over_every_utterance_each_epoch(clips, tmp_path):
    want = {u.text: u.audio for u in load_manifests([clips / "train.jsonl"])}
    config = FeedConfig(tmp_path / "tok", batch_seconds=30, seed=0, data=(clips,), depth=2)
    with Feed(config) as feed:
        assert feed.corpus.utterances == 2 and feed.corpus.synthesized_hours == 0
        tokenizer = Tokenizer.from_folder(tmp_path / "tok")  # written from the transcripts
        seen: dict[int, list[str]] = {}
        for batch in feed:
            if batch.epoch == 3:
                break
            ready = batch.ready
            for i, answer in enumerate(ready.answers):
                text = tokenizer.decode(ready.ctc_targets[i])
                n = int(ready.waves.lengths[i])
                if text:  # silent items carry no transcript
                    np.testing.assert_array_equal(ready.waves.x[i, :n].numpy(), want[text])
                    seen.setdefault(batch.epoch, []).append(text)
                assert answer[-1] == tokenizer.token_to_id("<|im_end|>")
                assert not ready.waves.x[i, n:].any()
    assert {e: sorted(t) for e, t in seen.items()} == {e: sorted(want) for e in range(3)}
    assert not feed._process.is_alive()


def trainer_process(clips: Path, tmp_path: Path, before: str, after: str, cores: str = "()"):
    """A stand-in trainer: a Python process that runs `before`, opens a Feed on the clips (with
    `cores`), runs `after` and sleeps until killed."""
    script = (
        "import json, os, time\n"
        "from pathlib import Path\n"
        "from train.feed import Feed, FeedConfig\n"
        f"{before}\n"
        f"feed = Feed(FeedConfig(Path({str(tmp_path / 'tok')!r}), 30, 0, "
        f"data=(Path({str(clips)!r}),), depth=1, cores={cores}))\n"
        f"{after}\n"
        "time.sleep(120)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


def test_the_feed_process_ends_when_its_trainer_is_killed(clips, tmp_path):
    trainer = trainer_process(clips, tmp_path, "", "print(feed._process.pid, flush=True)")
    child = int(trainer.stdout.readline())
    assert running(child)  # waiting on its full queue
    trainer.kill()
    trainer.wait()
    deadline = time.time() + 30
    while running(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not running(child)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to split")
def test_the_trainer_keeps_its_cores_and_the_feed_takes_the_rest(clips, tmp_path):
    trainer = trainer_process(
        clips,
        tmp_path,
        "from train.train_asr import split_cores\nrest = split_cores(1)",
        "print(json.dumps([sorted(os.sched_getaffinity(0)), feed._process.pid]), flush=True)",
        cores="rest",
    )
    try:
        mine, child = json.loads(trainer.stdout.readline())
        allowed = sorted(os.sched_getaffinity(0))
        assert mine == allowed[:1]
        assert sorted(os.sched_getaffinity(child)) == allowed[1:]
    finally:
        trainer.kill()
        trainer.wait()


def fill_and_leave(channel, stop, trainer: int) -> None:
    """A feed's exit with its queue unread: more than a pipe holds is put, then it stops."""
    out = Outbox(channel, stop, trainer)
    for _ in range(8):
        channel.put(b"x" * 200_000)
    stop.set()
    out.leave()


def test_a_stopped_feed_exits_though_nobody_reads_its_queue():
    ctx = torch.multiprocessing.get_context("spawn")
    channel, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=fill_and_leave, args=(channel, stop, os.getpid()))
    child.start()
    child.join(20)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has: its parent is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_failure_in_the_feed_process_is_raised_in_the_trainer(tmp_path):
    config = FeedConfig(tmp_path / "tok", batch_seconds=30, seed=0, data=(tmp_path / "none",))
    with pytest.raises(RuntimeError, match="feed process failed(.|\n)*train.jsonl"):
        Feed(config)


@pytest.fixture(scope="module")
def overfit(tokenizer, clips) -> tuple[Batcher, list[list[float]]]:
    """The tiny preset trained for 40 steps on the two clips, and its (ce, ctc) losses."""
    torch.manual_seed(0)
    model = build_model(config_json("tiny", tokenizer))
    batcher = Batcher(model, tokenizer)
    utts = load_manifests([clips / "train.jsonl"])
    waves = [u.audio for u in utts]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        parts = batcher.losses(prepare(tokenizer, waves, [u.text for u in utts]))
        opt.zero_grad()
        (parts["ce"] + 0.3 * parts["ctc"]).backward()
        opt.step()
        losses.append([parts["ce"].item(), parts["ctc"].item()])
    model.eval()
    return batcher, losses


def test_training_steps_reduce_the_losses(overfit):
    _, losses = overfit
    ce, ctc = np.array(losses).T
    assert np.mean(ce[-3:]) < 0.1 * np.mean(ce[:3]), ce
    assert np.mean(ctc[-3:]) < 0.5 * np.mean(ctc[:3]), ctc


@pytest.mark.anyio
async def test_export_loads_in_the_production_loader_and_transcribes(
    overfit, tokenizer, tok_dir, clips, tmp_path
):
    batcher, _ = overfit
    folder = tmp_path / "model"
    size = export(batcher.model, config_json("tiny", tokenizer), tok_dir, folder)
    assert 0 < size < MAX_BYTES
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.get_tensor(keys[0]).dtype == torch.bfloat16
    assert all(k.startswith(("thinker.audio_tower.", "thinker.model.")) for k in keys)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen3_asr"
    utts = load_manifests([clips / "train.jsonl"])
    dense = batcher.transcribe([u.audio for u in utts])
    runtime = Runtime()
    try:
        served = load_model(folder, "cpu", runtime)  # engine.loader.load, as `rtserve serve`
        texts = [await transcribe(served, u.audio, streaming=False) for u in utts]
    finally:
        runtime.shutdown()
    # The engine decodes the bf16 export as the training code decodes the float32 model, and
    # what comes out is text the model learnt (40 steps do not yet tell the two clips apart).
    assert texts == dense
    assert all(t in CLIPS.values() for t in texts), texts


def test_training_runs_resume_from_their_checkpoint(clips, tmp_path):
    args = ["--data", str(clips), "--heldout", str(clips), "--run", str(tmp_path / "run")]
    args += ["--preset", "tiny", "--batch-seconds", "30", "--device", "cpu"]
    first = train_main([*args, "--max-steps", "3"])
    assert first["step"] == 3 and (tmp_path / "run" / "model" / "model.safetensors").exists()
    second = train_main([*args, "--max-steps", "5"])
    assert second["step"] == 5
    assert second["train_seconds"] > first["train_seconds"]
    assert [e["step"] for e in second["log"] if "heldout_wer" in e] == [3, 5]


def test_a_new_run_starts_from_an_exported_model(clips, tmp_path):
    args = ["--data", str(clips), "--heldout", str(clips), "--preset", "tiny"]
    args += ["--batch-seconds", "30", "--device", "cpu"]
    train_main([*args, "--run", str(tmp_path / "a"), "--max-steps", "3"])
    exported = tmp_path / "a" / "model"
    state = train_main(
        [*args, "--run", str(tmp_path / "b"), "--init", str(exported)] + ["--max-steps", "0"]
    )
    assert state["init"] == str(exported) and state["step"] == 0
    again = tmp_path / "b" / "model"
    assert (again / "vocab.json").read_bytes() == (exported / "vocab.json").read_bytes()
    want, got = load_file(exported / "model.safetensors"), load_file(again / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)  # bf16 -> float32 -> bf16 is exact


def test_training_on_synthesized_speech(clips, tmp_path):
    args = ["--synth-workers", "1", "--synth-start", "0.005", "--heldout", str(clips)]
    args += ["--run", str(tmp_path / "run"), "--preset", "tiny", "--batch-seconds", "20"]
    args += ["--device", "cpu", "--trainer-cores", "0"]  # this process keeps its CPUs
    first = train_main([*args, "--max-steps", "3"])
    assert first["step"] == 3 and first["runs"] == 1 and first["synth_utterances"] >= 64
    second = train_main([*args, "--max-steps", "5"])
    assert second["step"] == 5 and second["runs"] == 2
    assert second["synth_utterances"] > first["synth_utterances"]


def test_synthesized_speech_is_fresh_bounded_and_avoids_held_out_sentences(clips):
    reserved = frozenset(make_data.normalize_text(t) for t in CLIPS.values())
    stream = SynthStream(1, seed=4, reserved=reserved, max_hours=20 / 3600)
    try:
        stream.wait(15 / 3600)
        deadline = time.time() + 120
        while stream.made == len(stream.corpus) and time.time() < deadline:
            time.sleep(0.2)
            stream.refresh()
    finally:
        stream.close()
    utts = list(stream.corpus)
    assert stream.made > len(utts) >= 2  # the oldest were dropped
    assert stream.samples == sum(u.audio.size for u in utts) <= 20 * 16000 + utts[-1].audio.size
    assert all(u.text for u in utts)
    whole = [u.text for u in utts if u.text[-1] in ".?!"]  # the cut copies end without
    assert len(set(whole)) == len(whole)
    assert all(u.audio.dtype == np.float16 and np.isfinite(u.audio).all() for u in utts)
    assert not {make_data.normalize_text(u.text) for u in utts} & reserved


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_coloured_noise_has_unit_rms_and_its_spectral_slope(exponent):
    n = 50_021  # a prime: the noise is made at a power of two and cut
    y = augment.coloured_noise(np.random.default_rng(1), n, exponent)
    assert y.shape == (n,) and y.dtype == np.float32
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
    power = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(n, 1 / 16000)
    bands = np.geomspace(100, 4000, 12)  # mean power per band, against the band's centre
    p = [power[(f >= lo) & (f < hi)].mean() for lo, hi in itertools.pairwise(bands)]
    centres = np.sqrt(bands[1:] * bands[:-1])
    slope = np.polyfit(np.log(centres), np.log(p), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.25)


def test_reverb_is_the_linear_convolution_with_the_room():
    x = np.random.default_rng(2).standard_normal(30_011).astype(np.float32)
    y = augment.reverb(x, np.random.default_rng(3))
    rng = np.random.default_rng(3)  # the same draws: the impulse response reverb used
    h = augment.room_impulse(rng, rng.uniform(0.15, 0.7))
    want = np.convolve(x.astype(np.float64), h)[: x.size + h.size // 4]
    want *= np.abs(x).max() / np.abs(want).max()
    np.testing.assert_allclose(y, want, atol=1e-4)


def test_pauses_around_speech_include_long_ones():
    rng = np.random.default_rng(4)
    seconds = np.array([augment.pause(rng, 0.25) for _ in range(4000)]) / augment.RATE
    assert seconds.min() >= 0.05 and seconds.max() <= 2.5
    long = seconds > 0.6
    assert 0.2 < long.mean() < 0.3  # one in four: up to 2.5 s after the speech, as a VAD leaves it
    assert seconds[long].max() > 2.0


def test_the_committed_corpus_keeps_its_short_pauses_and_draws():
    """long_share 0 draws exactly what the corpus recipe always drew (one uniform per end)."""
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    got = [augment.pause(a) for _ in range(100)]
    assert got == [int(b.uniform(0.05, 0.6) * augment.RATE) for _ in range(100)]


def test_demo_phrases_are_told_from_word_sequences():
    said = texts.Sentences(tuple(texts.frequency_words()), seed=1)
    assert all(texts.is_demo(said.demo()) for _ in range(300))
    assert not any(texts.is_demo(said.word_sequence(6)) for _ in range(300))
    kinds = by_kind([("Stop.", "Stop."), ("Apple tree.", "Apple three.")])
    assert kinds == {
        "demo phrases": {"wer": 0.0, "utterances": 1},
        "word sequences": {"wer": 0.5, "utterances": 1},
    }


def test_draw_utterance_skips_reserved_sentences():
    said = iter(["Hello, this is a speech server test.", "Two words."])
    text, x, how = make_data.draw_utterance(
        np.random.default_rng(0),
        lambda long: next(said),
        ["m3"],
        reserved=frozenset({"hello this is a speech server test"}),
    )
    assert text == "Two words." and x.dtype == np.float32 and x.size > 0
    assert how["voice"].endswith("+m3")


def test_an_utterance_cut_where_a_word_starts():
    text = "Good morning, David. How are you today?"
    _, x, how = make_data.draw_utterance(np.random.default_rng(3), lambda long: text, ["m3"])
    words = how["words"]
    assert [text[: w.end].split()[-1].strip(",.?") for w in words] == [
        "Good", "morning", "David", "How", "are", "you", "today"
    ]  # fmt: skip
    starts = [w.sample for w in words]
    assert starts == sorted(starts) and starts[0] >= how["aug"]["lead"] and starts[-1] < x.size
    rng = np.random.default_rng(0)
    for _ in range(20):
        said, y = make_data.partial(text, x, words, rng)
        k = len(said.split())
        assert said == " ".join(text.split()[:k]).rstrip(",.?") and 1 <= k < len(words)
        assert starts[k] <= y.size <= starts[k] + 800 and np.array_equal(y, x[: y.size])
    assert make_data.partial("Hello.", x, words[:1], rng) is None


def test_ctc_loss_leaves_out_utterances_without_words(overfit):
    batcher, _ = overfit
    waves = [np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32) for _ in range(2)]
    ready = prepare(batcher.tokenizer, waves, ["", "hello there"])
    assert ready.ctc_targets[0] == [] and ready.ctc_targets[1]
    audio, counts = batcher.audio(ready.waves, torch.device("cpu"))
    both = batcher.ctc_loss(audio, counts, ready.ctc_targets)
    alone = batcher.ctc_loss(audio[int(counts[0]) :], counts[1:], ready.ctc_targets[1:])
    assert both.item() == pytest.approx(alone.item()) and alone.item() > 0
    assert batcher.ctc_loss(audio, counts, [[], []]).item() == 0.0


def test_a_non_finite_gradient_skips_the_step():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 3)).sum().backward()
    model.weight.grad[0, 0] = float("nan")
    assert not clipped_step(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    opt.zero_grad()
    model(torch.randn(4, 3)).sum().backward()
    assert clipped_step(model, opt)
    assert not torch.equal(before[0], model.weight)


def test_learning_rate_warms_up_then_follows_the_time_cosine():
    assert lr_at(0, 0.0, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 0.5, 1.0, 10) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_at(100, 1.5, 1.0, 10) == pytest.approx(0.05)


def test_wer():
    assert normalize("Hello, World! It's 5 o'clock.") == ["hello", "world", "it's", "5", "o'clock"]
    assert edit_distance(["a", "b", "c", "d"], ["a", "x", "c"]) == 2
    assert wer([("The cat sat.", "the cat sat"), ("on the mat", "on mat the")]) == pytest.approx(
        2 / 6
    )
    assert wer([("one two", "")]) == 1.0
    assert wer([("", "extra words")]) == 2.0  # insertions against an empty reference count
