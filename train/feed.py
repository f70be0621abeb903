"""Training batches made in a process of their own, so that the trainer's process runs only steps.

Every torch op releases the GIL, so any busy Python thread beside the training loop (a batch
maker, the synthesis pool's result thread) turns a step's ~2,000 operator calls into as many
handoffs between threads. On the H200 host a step of 800 s of audio took 62 ms with batches
made in a thread of the trainer and synthesis stopped, and 350 ms with ten synthesis workers
delivering into the trainer's process (train/README.md). Here a child process owns the corpus
(the --data manifests and the synthesized stream, train/synth.py), draws epochs of
length-bucketed batches, adds silent items and noise levels, pads and tokenizes, and hands each
batch over through a queue with its waveforms in shared memory.

    with Feed(FeedConfig(tokenizer_dir, batch_seconds=800, seed=0, data=(folder,))) as feed:
        print(feed.corpus)
        for batch in feed: ...
"""

from __future__ import annotations

import math
import os
import queue
import random
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp

from engine.tokenizer import Tokenizer
from train.data import RATE, Utterance, batches, load_manifests
from train.model import Prepared, prepare
from train.synth import SynthStream
from train.tokenizer import TOKENIZER_FILES, write_tokenizer


@dataclass(frozen=True)
class FeedConfig:
    tokenizer: Path  # folder; written from the corpus transcripts when it holds no tokenizer
    batch_seconds: float  # padded audio per batch
    seed: int  # draws of the first epoch; each later epoch adds one
    data: tuple[Path, ...] = ()  # folders with train.jsonl
    limit: int | None = None  # utterances per manifest
    synth_workers: int = 0  # processes making fresh speech (0: none)
    synth_seed: int = 0
    synth_hours: float = 100.0  # newest synthesized audio kept
    synth_start: float = 5.0  # hours made before the first batch
    reserved: frozenset[str] = frozenset()  # normalized sentences never synthesized
    depth: int = 3  # batches made ahead of the trainer
    cores: tuple[int, ...] = ()  # CPUs of the feed and its workers (empty: the trainer's)


@dataclass(frozen=True)
class Corpus:
    """What the feed holds when its first batch is drawn."""

    utterances: int
    hours: float
    synthesized_hours: float
    seconds: float  # from the feed's start until it was ready


@dataclass(frozen=True)
class Batch:
    ready: Prepared
    epoch: int  # counted from the feed's start
    synthesized: int  # utterances synthesized by the feed so far
    shortest: float  # seconds
    longest: float


@dataclass(frozen=True)
class _Failure:
    traceback: str


class Feed:
    """The child process and the queue its batches come through; iterate for batches."""

    def __init__(self, config: FeedConfig) -> None:
        ctx = mp.get_context("spawn")
        self._queue = ctx.Queue(config.depth)
        self._stop = ctx.Event()
        outbox = Outbox(self._queue, self._stop, os.getpid())
        self._process = ctx.Process(target=_run, args=(config, outbox), name="feed")
        self._process.start()
        try:
            self.corpus: Corpus = self._get()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self._get()

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self):
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._process.is_alive():
                    raise RuntimeError(
                        f"the feed process ended (exit code {self._process.exitcode})"
                    ) from None
                continue
            if isinstance(item, _Failure):
                raise RuntimeError(f"the feed process failed:\n{item.traceback}")
            return item

    def close(self, timeout: float = 30.0) -> None:
        """Stops the child (it closes its synthesis workers) and waits for it."""
        self._stop.set()
        deadline = time.time() + timeout
        while self._process.is_alive() and time.time() < deadline:
            try:  # a child blocked on a full queue gets to see the stop
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
            except Exception:  # noqa: BLE001 - a batch whose shared memory left with the child
                pass
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()


def silence(rng: random.Random, seconds: float) -> Utterance:
    """Noise without speech (its answer is `language None<asr_text>`), so that VAD false
    starts do not make the model invent words."""
    n = int(seconds * RATE)
    level = 10 ** rng.uniform(-4, -1.5)
    x = torch.randn(n, generator=torch.Generator().manual_seed(rng.randrange(2**31))) * level
    return Utterance("silence", x.numpy(), "")


def noise_levels(n: int, rng: random.Random) -> list[float]:
    """On-the-fly augmentation on top of the generator's: white noise at 10-50 dB SNR on half
    of the utterances, a different draw every epoch (added on the device by the Batcher)."""
    return [rng.uniform(10, 50) if rng.random() < 0.5 else math.inf for _ in range(n)]


class Outbox:
    """The child's end of the queue."""

    def __init__(self, channel: mp.Queue, stop, trainer: int) -> None:
        self.channel, self.stop, self.trainer = channel, stop, trainer

    def closed(self) -> bool:
        """Whether the trainer has asked to stop or is gone (killed: this process would
        otherwise wait on a full queue forever, its synthesis workers with it)."""
        return self.stop.is_set() or os.getppid() != self.trainer

    def leave(self) -> None:
        """At the child's exit. With the trainer stopped or gone nobody reads the queue any
        more, and its writer thread, blocked on a full pipe, must not hold the exit."""
        if self.closed():
            self.channel.cancel_join_thread()

    def put(self, item: object) -> bool:
        """Puts item unless the outbox is closed (then False)."""
        while not self.closed():
            try:
                self.channel.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False


def _run(config: FeedConfig, out: Outbox) -> None:
    torch.set_num_threads(1)
    if config.cores:  # before the workers start: they inherit it
        os.sched_setaffinity(0, config.cores)
    try:
        _feed(config, out)
    except BaseException:  # handed to the trainer, which raises it
        out.put(_Failure(traceback.format_exc()))
    finally:
        out.leave()


def _feed(config: FeedConfig, out: Outbox) -> None:
    t0 = time.time()
    paths = [d / "train.jsonl" for d in config.data]
    fixed = load_manifests(paths, config.limit) if paths else []
    synth = None
    if config.synth_workers:
        synth = SynthStream(
            config.synth_workers, config.synth_seed, config.reserved, config.synth_hours
        )
    try:
        if synth:
            synth.wait(config.synth_start, until=out.closed)
        if out.closed():  # before a tokenizer is made from a corpus cut short
            return

        def corpus() -> list[Utterance]:
            return fixed + (list(synth.corpus) if synth else [])

        utts = corpus()
        if not all((config.tokenizer / name).exists() for name in TOKENIZER_FILES):
            write_tokenizer(config.tokenizer, [u.text for u in utts])
        tokenizer = Tokenizer.from_folder(config.tokenizer)
        hours = sum(u.audio.size for u in utts) / RATE / 3600
        out.put(Corpus(len(utts), hours, synth.hours if synth else 0.0, time.time() - t0))
        epoch = 0
        while True:
            rng = random.Random(config.seed + epoch)
            for batch in batches(corpus(), config.batch_seconds, rng):
                if synth:
                    synth.refresh()
                if rng.random() < 0.5:  # about 2% of utterances are silence
                    batch = batch + [silence(rng, rng.uniform(0.5, 4.0))]
                seconds = [u.audio.size / RATE for u in batch]
                ready = prepare(
                    tokenizer,
                    [u.audio for u in batch],
                    [u.text for u in batch],
                    noise_levels(len(batch), rng),
                )
                made = synth.made if synth else 0
                if not out.put(Batch(ready, epoch, made, min(seconds), max(seconds))):
                    return
            epoch += 1
    finally:
        if synth:
            synth.close()
