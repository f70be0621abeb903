"""Training speech made while training runs: worker processes synthesize, the trainer takes.

A fixed corpus of a few thousand sentences is memorized by the decoder within minutes (it then
writes training sentences instead of reading the audio). So on the training host a pool of
processes keeps drawing new sentences, voices and augmentations (train/make_data.py's
`draw_utterance`, the same recipe as the committed corpus); each epoch of the trainer draws on
what has arrived by its start, the newest `max_hours` of audio. Held-out sentences are reserved and
held-out voice variants never used. Unlike the committed corpus, a quarter have a long pause
before or after the speech (`LONG_PAUSES`). A quarter of the utterances also come cut where one
of their words starts, with the words said so far as the transcript: a streaming step sees
audio that ends mid-sentence, and must write what was said, not finish the sentence. Audio is
held as float16 (half the memory; its rounding error sits 66 dB under the signal).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from train.data import RATE, Utterance
from train.make_data import TRAIN_VARIANTS, draw_utterance, normalize_text, partial
from train.texts import Sentences, frequency_words

CHUNK = 64  # utterances per task: large enough to amortize the pickling, small for freshness
PARTIAL_SHARE = 0.25  # utterances that also give a cut copy (make_data.partial)
LONG_PAUSES = 0.25  # utterances with 0.6-2.5 s of silence at an end (augment.pause)


def _start_worker() -> None:
    torch.set_num_threads(1)  # one core per worker
    os.nice(10)  # the trainer's process comes first: a starved one stalls the GPU


def _make_chunk(args: tuple[int, frozenset[str]]) -> list[tuple[str, np.ndarray]]:
    seed, reserved = args
    rng = np.random.default_rng(seed)
    sentences = Sentences(tuple(frequency_words()), seed=seed)
    out = []
    for _ in range(CHUNK):
        text, x, how = draw_utterance(rng, sentences, TRAIN_VARIANTS, reserved, 1, LONG_PAUSES)
        out.append((text, x.astype(np.float16)))
        cut = partial(text, x, how["words"], rng) if rng.random() < PARTIAL_SHARE else None
        if cut is not None and normalize_text(cut[0]) not in reserved:
            out.append((cut[0], cut[1].astype(np.float16)))
    return out


class SynthStream:
    """Keeps `workers` processes synthesizing into `corpus`, the newest `max_hours` of audio.

    `refresh()` (cheap: call it every step) moves what has arrived into the corpus and keeps
    the workers busy; `wait(hours)` blocks until the corpus holds that much."""

    def __init__(self, workers: int, seed: int, reserved: frozenset[str], max_hours: float) -> None:
        self.reserved = reserved
        self.max_samples = int(max_hours * 3600 * RATE)
        self.corpus: deque[Utterance] = deque()
        self.samples = 0  # audio samples in the corpus
        self.made = 0  # utterances made so far
        self._pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker)
        self._target = 4 * workers  # chunks in flight
        self._seeds = iter(range(seed * 1_000_003 + 7, 2**62))
        self._lock = threading.Lock()
        self._arrived: list[list[tuple[str, np.ndarray]]] = []
        self._in_flight = 0
        self._error: BaseException | None = None
        self.refresh()

    def _done(self, chunk: list[tuple[str, np.ndarray]]) -> None:
        with self._lock:  # runs in the pool's result thread
            self._arrived.append(chunk)

    def _failed(self, error: BaseException) -> None:
        self._error = error

    def refresh(self) -> int:
        """Adds the arrived utterances (dropping the oldest past max_hours), tops up the work in
        flight; returns how many were added."""
        if self._error is not None:
            raise RuntimeError("a synthesis worker failed") from self._error
        with self._lock:
            chunks, self._arrived = self._arrived, []
        self._in_flight -= len(chunks)
        added = 0
        for chunk in chunks:
            for text, x in chunk:
                self.corpus.append(Utterance(f"synth-{self.made}", x, text))
                self.samples += x.size
                self.made += 1
                added += 1
        while self.samples > self.max_samples and len(self.corpus) > 1:
            self.samples -= self.corpus.popleft().audio.size
        while self._in_flight < self._target:
            self._pool.apply_async(
                _make_chunk,
                ((next(self._seeds), self.reserved),),
                callback=self._done,
                error_callback=self._failed,
            )
            self._in_flight += 1
        return added

    @property
    def hours(self) -> float:
        return self.samples / RATE / 3600

    def wait(
        self, hours: float, poll: float = 0.5, until: Callable[[], bool] = lambda: False
    ) -> None:
        """Blocks until the corpus holds `hours` of audio, or `until()` is true."""
        self.refresh()
        while self.hours < hours and not until():
            time.sleep(poll)
            self.refresh()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
