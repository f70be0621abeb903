"""Generates the synthetic English speech corpus: espeak-ng voices, augmented, Ogg/Opus shards.

    .venv/bin/python -m train.make_data --out .data/asr --parts 2 --hours 6.5 --workers 2

writes `OUT/heldout/`, `OUT/a/`, `OUT/b/`, ...: each holds `shards/*.ogg` (16 kHz mono Opus at
about 14 kbit/s, ~6 MB per hour, each shard ~10 minutes of utterances separated by short
silences) and a JSONL manifest (`heldout.jsonl` or `train.jsonl`) with one line per utterance:
its shard, first sample and length, the transcript, and how it was made. Each train part is sized
to travel to the GPU host in one upload (<= 55 MiB with the code).

A voice is an espeak-ng accent (`en-us`, `en-gb-scotland`, ...) with a voice variant (`+m3`,
`+Annie`, ...); rate and pitch are drawn per utterance. Held-out utterances use only the variants
of HELDOUT_VARIANTS, training ones never do, so held-out voices are unseen; and no held-out
sentence occurs in training. The sentences, voices, rates and pitches follow from --seed: each
shard is built by one task seeded from (seed, split, shard number), so the worker count does not
change them. The waveforms vary by a few milliseconds between runs: espeak-ng's library keeps
state (pitch flutter) from one utterance to the next, so the shard boundaries may move by one
utterance too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from train.augment import RATE, augment, resampler
from train.espeak import Voice
from train.texts import Sentences, frequency_words, spoken_list
from train.wer import normalize

ACCENTS = [
    "en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
]  # fmt: skip
VARIANTS = spoken_list(
    "Alex Alicia Andrea Andy Annie AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee "
    "Marco Mario Michael Mike Nguyen RicishayMax RicishayMax2 RicishayMax3 Storm Tweaky "
    "UniRobot adam anika anikaRobot announcer antonio aunty belinda benjamin boris caleb croak "
    "david ed edward edward2 f1 f2 f3 f4 f5 fast grandma grandpa gustave iven iven2 iven3 iven4 "
    "john kaukovalta klatt klatt2 klatt3 klatt4 klatt5 klatt6 linda m1 m2 m3 m4 m5 m6 m7 m8 "
    "marcelo max michel miguel norbert pablo paul pedro quincy rob robert robosoft robosoft2 "
    "robosoft3 robosoft4 robosoft5 robosoft6 robosoft7 robosoft8 sandro shelby steph steph2 "
    "steph3 travis victor whisper whisperf zac"
)
# Unseen voices of the held-out set: ordinary male and female timbres, none of the odd ones.
HELDOUT_VARIANTS = ["m4", "f4", "Andy", "belinda", "edward", "iven2", "klatt3", "steph2", "quincy"]
TRAIN_VARIANTS = [v for v in VARIANTS if v not in HELDOUT_VARIANTS]

ESPEAK_RATE = 22050
SHARD_SECONDS = 600.0  # audio per shard: ~1 MB, decoded in ~1 s
GAP = int(0.25 * RATE)  # silence between utterances in a shard
MAX_SECONDS = 20.0
LONG_SHARE = 0.1  # utterances of 18-32 words (8-16 s): they cross the encoder's 8 s windows
OPUS_BITRATE = 14000  # bit/s: ~6 MB per hour
SPLIT_SEEDS = {"heldout": 1, "train": 2}


@dataclass(frozen=True)
class ShardTask:
    split: str  # "heldout" | "train"
    name: str  # file stem, e.g. "a-007"
    seconds: float
    seed: int
    words: tuple[str, ...]
    reserved: frozenset[str]  # normalized sentences this split must not use
    min_words: int = 1


def normalize_text(text: str) -> str:
    """Lowercase words without punctuation: how sentences are compared (and WER scored)."""
    return " ".join(normalize(text))


class WordAt(NamedTuple):
    end: int  # one past the word's last character in the text
    sample: int  # where the word starts in the audio


_voice: Voice | None = None  # one per process: espeak-ng keeps global state


def speak(text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list[WordAt]]:
    """espeak-ng's waveform for text, trimmed of its silences, resampled to 16 kHz float32, and
    where in it each word starts."""
    global _voice
    if _voice is None:
        _voice = Voice()
    x, words = _voice(text, voice, rate, pitch)
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    if loud.size == 0:
        return np.zeros(0, np.float32), []
    x = x[loud[0] : loud[-1] + 1]
    skipped = loud[0] / _voice.rate
    at = [WordAt(w.end, max(0, round((w.seconds - skipped) * RATE))) for w in words]
    return resampler(_voice.rate)(torch.from_numpy(x)).numpy(), at


def partial(
    text: str, x: np.ndarray, words: list[WordAt], rng: np.random.Generator
) -> tuple[str, np.ndarray] | None:
    """The utterance cut where one of its words starts, up to 50 ms into it, and the words said
    before (no closing punctuation): what a streaming step sees mid-sentence. None for a single
    word."""
    if len(words) < 2:
        return None
    k = int(rng.integers(1, len(words)))  # words kept
    cut = words[k].sample + int(rng.integers(0, RATE // 20))
    return text[: words[k - 1].end].rstrip(" ,.;:!?"), x[:cut]


def draw_utterance(
    rng: np.random.Generator,
    sentences: Sentences,
    variants: list[str],
    reserved: frozenset[str] = frozenset(),
    min_words: int = 1,
    long_pauses: float = 0.0,
) -> tuple[str, np.ndarray, dict]:
    """One augmented utterance: (transcript, 16 kHz float32 audio, how it was made);
    long_pauses: the share of long silences before and after it (`augment.pause`)."""
    while True:
        text = sentences(long=rng.random() < LONG_SHARE)
        norm = normalize_text(text)
        if norm in reserved or len(norm.split()) < min_words:
            continue
        voice = f"{rng.choice(ACCENTS)}+{rng.choice(variants)}"
        rate, pitch = int(rng.integers(120, 231)), int(rng.integers(15, 86))
        # augment draws from its own generator: how much it draws depends on the waveform's
        # length, which espeak-ng's library varies by a few ms with what the process said before
        augment_rng = np.random.default_rng(int(rng.integers(2**63)))
        x, words = speak(text, voice, rate, pitch)
        if x.size == 0:
            continue
        x, done = augment(x, augment_rng, long_pauses)
        stretch = done.get("stretch", 1.0)
        words = [WordAt(w.end, done["lead"] + round(w.sample * stretch)) for w in words]
        if x.size <= MAX_SECONDS * RATE:
            how = {"voice": voice, "rate": rate, "pitch": pitch, "aug": done, "words": words}
            return text, x, how


def build_shard(task: ShardTask, out_dir: Path) -> list[dict]:
    """Synthesizes one shard's utterances, writes `shards/NAME.ogg`, returns its manifest rows."""
    rng = np.random.default_rng(task.seed)
    sentences = Sentences(task.words, seed=task.seed)
    variants = HELDOUT_VARIANTS if task.split == "heldout" else TRAIN_VARIANTS
    pieces: list[np.ndarray] = []
    rows: list[dict] = []
    at = 0
    while at < task.seconds * RATE:
        text, x, how = draw_utterance(rng, sentences, variants, task.reserved, task.min_words)
        rows.append(
            {
                "id": f"{task.split}-{task.name}-{len(rows):04d}",
                "audio": f"shards/{task.name}.ogg",
                "start": at,
                "samples": int(x.size),
                "text": text,
                **{k: v for k, v in how.items() if k != "words"},  # word times: for synth.py
            }
        )
        pieces += [x, np.zeros(GAP, np.float32)]
        at += x.size + GAP
    audio = np.clip(np.concatenate(pieces), -1.0, 1.0)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    write_opus(out_dir / "shards" / f"{task.name}.ogg", audio)
    return rows


def write_opus(path: Path, x: np.ndarray) -> None:
    """16 kHz mono Ogg/Opus at OPUS_BITRATE. libav's libopus encodes ~4x faster than libsndfile's
    at the same size; soundfile reads the result sample-exact in length."""
    import av  # here: the training host synthesizes in memory (train/synth.py) and has no av

    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=RATE, layout="mono")
        stream.bit_rate = OPUS_BITRATE
        frame = av.AudioFrame.from_ndarray(x[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def _run(args: tuple[ShardTask, Path]) -> list[dict]:
    return build_shard(*args)


def build_split(tasks: list[ShardTask], out_dir: Path, manifest: str, workers: int) -> list[dict]:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    jobs = [(t, out_dir) for t in tasks]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            shards = pool.map(_run, jobs, chunksize=1)
    else:
        shards = [_run(j) for j in jobs]
    rows = [r for shard in shards for r in shard]
    with (out_dir / manifest).open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return rows


def shard_tasks(
    split: str,
    prefix: str,
    seconds: float,
    seed: int,
    words: list[str],
    reserved: frozenset[str],
    min_words: int = 1,
    first: int = 0,
) -> list[ShardTask]:
    n = max(1, round(seconds / SHARD_SECONDS))
    return [
        ShardTask(
            split,
            f"{prefix}-{first + i:03d}",
            seconds / n,
            seed * 1_000_003 + SPLIT_SEEDS[split] * 10_007 + first + i,
            tuple(words),
            reserved,
            min_words,
        )
        for i in range(n)
    ]


def generate(
    out: Path,
    parts: int,
    hours: float,
    heldout_minutes: float,
    seed: int,
    workers: int,
    words: list[str],
) -> dict[str, list[dict]]:
    """The held-out split first (its sentences are then reserved), then each train part."""
    made: dict[str, list[dict]] = {}
    held = shard_tasks("heldout", "heldout", heldout_minutes * 60, seed, words, frozenset(), 5)
    made["heldout"] = build_split(held, out / "heldout", "heldout.jsonl", workers)
    reserved = frozenset(normalize_text(r["text"]) for r in made["heldout"])
    per_part = max(1, round(hours * 3600 / SHARD_SECONDS))
    for p in range(parts):
        name = chr(ord("a") + p)
        tasks = shard_tasks("train", name, hours * 3600, seed, words, reserved, first=p * per_part)
        made[name] = build_split(tasks, out / name, "train.jsonl", workers)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(".data/asr"))
    ap.add_argument("--parts", type=int, default=2, help="train parts (one upload each)")
    ap.add_argument("--hours", type=float, default=6.5, help="hours of audio per train part")
    ap.add_argument("--heldout-minutes", type=float, default=20.0)
    ap.add_argument("--words", type=int, default=8000, help="size of the word-frequency list")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    a = ap.parse_args()
    t0 = time.time()
    made = generate(
        a.out, a.parts, a.hours, a.heldout_minutes, a.seed, a.workers, frequency_words(a.words)
    )
    for name, rows in made.items():
        hours = sum(r["samples"] for r in rows) / RATE / 3600
        size = sum(f.stat().st_size for f in (a.out / name).rglob("*") if f.is_file())
        print(f"{name}: {len(rows)} utterances, {hours:.2f} h, {size / 2**20:.1f} MiB")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
