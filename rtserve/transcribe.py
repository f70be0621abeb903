"""Whole-file transcription: `POST /v1/audio/transcriptions` and `rtserve transcribe FILE`.

A file goes through the same session as live audio (VAD turns, --max-segment-seconds, the
transcript contract), fed as fast as the model takes it: the session's backlog stays under
FILE_BACKLOG_SECONDS instead of being dropped, so nothing is lost however slow the model is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from audio.decode import decode_file
from audio.resample import resample
from audio.vad import VadConfig
from engine.streaming import StreamOptions, Word
from rtserve.config import Limits
from rtserve.metrics import Metrics
from rtserve.session import (
    InputFormat,
    SessionEvent,
    Settings,
    TranscriptDone,
    TranscriptFailed,
    TranscriptionSession,
    TranscriptUpdate,
)

FILE_BACKLOG_SECONDS = 60.0  # audio handed to the model ahead of what it has heard
FEED_SECONDS = 1.0  # the file goes in pieces this long
RATE = 16_000


@dataclass
class Segment:
    id: int
    start: float  # seconds
    end: float
    text: str
    language: str | None
    words: tuple[Word, ...] | None = None  # from models with `word_timestamps`


@dataclass
class Transcript:
    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def language(self) -> str | None:
        return next((s.language for s in self.segments if s.language), None)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words or ()]


def load_audio(data: bytes) -> np.ndarray:
    """Any file soundfile or av decodes -> 16 kHz mono float32."""
    x, rate = decode_file(data)
    return resample(x, rate, RATE) if rate != RATE else x


async def transcribe(
    model,
    samples: np.ndarray,
    limits: Limits,
    metrics: Metrics,
    options: StreamOptions | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Transcript:
    """Run a file through a session; `on_text` gets the transcript as it becomes stable."""
    result = Transcript(duration=samples.size / RATE)
    spoken: list[int] = []  # segments that have streamed text, in order
    failures: list[str] = []

    def emit(ev: SessionEvent) -> None:
        if isinstance(ev, TranscriptUpdate) and ev.delta and on_text is not None:
            if ev.segment not in spoken:  # segments join with a space, as Transcript.text does
                if spoken:
                    on_text(" ")
                spoken.append(ev.segment)
            on_text(ev.delta)
        elif isinstance(ev, TranscriptDone):
            seg = Segment(
                len(result.segments),
                ev.start_ms / 1000,
                ev.end_ms / 1000,
                ev.text,
                ev.language,
                ev.words,
            )
            result.segments.append(seg)
        elif isinstance(ev, TranscriptFailed):
            failures.append(ev.message)

    file_limits = replace(limits, max_lag_ms=10**9, max_buffered_seconds=float("inf"))
    settings = Settings(
        model=model,
        input=InputFormat("f32", RATE),
        vad=VadConfig(),
        options=options or StreamOptions(),
    )
    session = TranscriptionSession(settings, file_limits, metrics, emit)
    try:
        step = int(FEED_SECONDS * RATE)
        for i in range(0, samples.size, step):
            while session.lag().buffered_ms > FILE_BACKLOG_SECONDS * 1000:
                await asyncio.sleep(0.02)
            await session.append(samples[i : i + step].astype("<f4").tobytes())
        await session.finish()
    finally:
        session.close()
    if failures and not result.segments:
        raise RuntimeError(f"transcription failed: {failures[0]}")
    return result


def render(t: Transcript, fmt: str, words: bool = False) -> tuple[str, str]:
    """(body, media type) of a transcript in an OpenAI response_format; `words` adds the timed
    words to verbose_json (timestamp_granularities[]=word)."""
    if fmt == "text":
        return t.text + "\n", "text/plain"
    if fmt == "json":
        usage = {"type": "duration", "seconds": round(t.duration, 3)}
        return json.dumps({"text": t.text, "usage": usage}, ensure_ascii=False), "application/json"
    if fmt == "verbose_json":
        body = {
            "task": "transcribe",
            "language": t.language,
            "duration": round(t.duration, 3),
            "text": t.text,
            "segments": [
                {"id": s.id, "start": s.start, "end": s.end, "text": s.text} for s in t.segments
            ],
        }
        if words:
            body["words"] = [{"word": w.text, "start": w.start, "end": w.end} for w in t.words]
        return json.dumps(body, ensure_ascii=False), "application/json"
    if fmt in ("srt", "vtt"):
        return _subtitles(t, fmt), "text/plain" if fmt == "srt" else "text/vtt"
    raise ValueError(f"response_format {fmt!r}: use json, text, verbose_json, srt or vtt")


FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def _subtitles(t: Transcript, fmt: str) -> str:
    sep = "," if fmt == "srt" else "."

    def stamp(s: float) -> str:
        ms = int(round(s * 1000))
        return (
            f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"
        )

    blocks = [
        (f"{i + 1}\n" if fmt == "srt" else "") + f"{stamp(s.start)} --> {stamp(s.end)}\n{s.text}\n"
        for i, s in enumerate(t.segments)
    ]
    return ("WEBVTT\n\n" if fmt == "vtt" else "") + "\n".join(blocks)


async def stream_events(
    run: Callable[[Callable[[str], None]], asyncio.Future],
) -> AsyncIterator[str]:
    """SSE `transcript.text.delta` events as text becomes stable, then `transcript.text.done`."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(run(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (delta := await queue.get()) is not None:
            yield _sse({"type": "transcript.text.delta", "delta": delta})
        transcript = task.result()
        yield _sse({"type": "transcript.text.done", "text": transcript.text})
    finally:
        task.cancel()


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
