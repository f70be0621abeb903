"""The seam between a session and a speech model: a stream handle and its transcript events.

A session opens one `StreamHandle` per run of audio with fixed settings, feeds it 16 kHz mono
float32 samples, marks segment ends with `commit()`, and reads transcript events by async
iteration. Segments are numbered from 0 within a handle; every event names its segment.

The transcript contract: for one segment, the `stable` text of successive `Partial`s only grows
(each extends the previous one), and the `Final` text extends the last stable text. `unstable` is
the tail that may still change. Sessions enforce this on the wire even when a model slips.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class StreamOptions:
    language: str | None = None  # ISO code or name; None = detect
    prompt: str | None = None  # context text: names, jargon, hotwords
    use_itn: bool | None = (
        None  # inverse text normalisation where a model has it; None: its default
    )


@dataclass(frozen=True)
class Partial:
    segment: int
    stable: str  # never changes again
    unstable: str  # may still change
    revision: int  # counts updates within the segment, from 1
    end_sample: int  # handle-stream sample up to which this update has heard the audio


@dataclass(frozen=True)
class Word:
    """A word of a final transcript and when it was said."""

    text: str
    start: float  # seconds from the segment's start (the session shifts them to its clock)
    end: float


@dataclass(frozen=True)
class Final:
    segment: int
    text: str
    language: str | None = None  # as detected or forced
    tags: dict[str, str] | None = None  # what else the model labelled the segment with, e.g.
    # SenseVoice's {"language": "zh", "emotion": "NEUTRAL", "event": "Speech", "textnorm": "woitn"}
    words: tuple[Word, ...] | None = None  # from models that time their words (`word_timestamps`)


@dataclass(frozen=True)
class SegmentFailed:
    segment: int
    message: str


TranscriptEvent = Partial | Final | SegmentFailed


class StreamHandle(Protocol):
    """One stream of audio into a model. Called from the event loop only."""

    def feed(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples to the open segment (opening one if none is)."""

    def commit(self) -> None:
        """End the open segment: its `Final` (or `SegmentFailed`) follows."""

    def clear(self) -> None:
        """Drop the open segment's audio; no `Final` comes for it and its number is not reused."""

    def finish(self) -> None:
        """No more audio: commit what is open; iteration ends after the last event."""

    def cancel(self) -> None:
        """Stop at once and free the model's resources; iteration ends."""

    @property
    def consumed_samples(self) -> int:
        """Samples fed so far that the model has already heard (drives lag accounting)."""

    def __aiter__(self) -> AsyncIterator[TranscriptEvent]: ...


class WorkerHandle:
    """A StreamHandle whose model runs on a runtime worker (engine/runtime.py): its calls post
    commands to the worker's inbox, and the worker hands events back with `_deliver` (from its
    thread) and keeps `consumed` current. `make_stream(handle)` is the worker's per-stream
    state, posted to the worker with "open"."""

    def __init__(self, worker: Any, make_stream: Callable[[WorkerHandle], Any]) -> None:
        self._worker = worker
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()
        self.consumed = 0  # written by the worker
        self._stream = make_stream(self)
        worker.post(self, "open", self._stream)

    def feed(self, samples: np.ndarray) -> None:
        self._worker.post(self, "audio", np.asarray(samples, dtype=np.float32).copy())

    def commit(self) -> None:
        self._worker.post(self, "commit")

    def clear(self) -> None:
        self._worker.post(self, "clear")

    def finish(self) -> None:
        self._worker.post(self, "finish")

    def cancel(self) -> None:
        self._worker.post(self, "cancel")

    @property
    def consumed_samples(self) -> int:
        return self.consumed

    def __aiter__(self) -> WorkerHandle:
        return self

    async def __anext__(self) -> TranscriptEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def _deliver(self, event: TranscriptEvent | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)


class AsrModel(Protocol):
    """A served speech model: opens streams."""

    name: str
    kind: Literal["asr"]

    def validate(self, options: StreamOptions) -> None:
        """Raise ValueError for options this model cannot honour (an unknown language)."""

    def open_stream(self, options: StreamOptions) -> StreamHandle: ...
