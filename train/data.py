"""Training data in memory: manifests read, Opus shards decoded, length-bucketed batches.

A manifest line names its shard (relative to the manifest's folder), the utterance's first
sample and length, and its transcript (train/make_data.py writes them). Shards are decoded once,
in parallel threads (libsndfile releases the GIL), and each utterance is kept as a float32 view
of its shard. Batches group utterances of similar length and are capped by padded audio seconds,
so a batch of long utterances holds fewer of them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: np.ndarray  # float32, 16 kHz
    text: str


def read_manifest(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _decode(path: Path) -> np.ndarray:
    x, rate = sf.read(str(path), dtype="float32")
    if rate != RATE or x.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {rate} Hz, shape {x.shape}")
    return x


def load_manifests(
    paths: list[Path], limit: int | None = None, threads: int = 16
) -> list[Utterance]:
    """The utterances of the manifests (the first `limit` of each, if given)."""
    rows = []
    for p in paths:
        rows += [(p.parent, r) for r in read_manifest(p)[:limit]]
    shard_paths = sorted({folder / r["audio"] for folder, r in rows})
    with ThreadPoolExecutor(threads) as pool:
        shards = dict(zip(shard_paths, pool.map(_decode, shard_paths), strict=True))
    out = []
    for folder, r in rows:
        x = shards[folder / r["audio"]][r["start"] : r["start"] + r["samples"]]
        if x.size != r["samples"]:
            raise ValueError(f"{r['id']}: the shard ends before the utterance does")
        out.append(Utterance(r["id"], x, r["text"]))
    return out


def batches(
    utts: list[Utterance], max_seconds: float, rng: random.Random, pool: int = 50
) -> Iterator[list[Utterance]]:
    """One epoch of batches in random order: each pool of utterances is sorted by length and cut
    into batches whose padded length (items x longest) stays under max_seconds."""
    order = list(range(len(utts)))
    rng.shuffle(order)
    limit = max_seconds * RATE
    per_pool = max(1, int(pool * limit / (np.mean([u.audio.size for u in utts]) + 1)))
    out: list[list[Utterance]] = []
    for i in range(0, len(order), per_pool):
        group = sorted((utts[j] for j in order[i : i + per_pool]), key=lambda u: u.audio.size)
        batch: list[Utterance] = []
        for u in group:
            if batch and (len(batch) + 1) * u.audio.size > limit:
                out.append(batch)
                batch = []
            batch.append(u)
        if batch:
            out.append(batch)
    rng.shuffle(out)
    yield from out
