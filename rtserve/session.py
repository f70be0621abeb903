"""A transcription session: one client's audio becomes transcript events, whatever the protocol.

Protocol adapters translate wire messages into calls here (`update`, `append`, `commit`, `clear`,
`finish`) and the events emitted here back into wire messages. This class owns the audio path
(decode -> resample -> VAD -> model stream), segments and their timing, the transcript contract,
and the backlog limits. Times on events are milliseconds of session audio (everything appended).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from audio.decode import AudioFormatError
from audio.input import TARGET_RATE, AudioInput
from audio.vad import Endpointer, SpeechStarted, SpeechStopped, VadConfig
from engine.streaming import AsrModel, Final, Partial, StreamHandle, StreamOptions, Word
from rtserve.config import Limits
from rtserve.metrics import Metrics
from rtserve.transcript import SegmentTranscript

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # a commit with less audio in the open segment is refused
VAD_LOOKBACK_MS = 2_000  # audio kept while nobody speaks, for the prefix padding of the next turn


def ms(samples: int) -> int:
    return samples * 1000 // TARGET_RATE


def samples(ms_: float) -> int:
    return int(ms_ * TARGET_RATE / 1000)


class SessionError(Exception):
    """A client mistake: becomes an error event; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


# ---- events out (the internal event model every protocol maps from) ----


@dataclass(frozen=True)
class SpeechStart:
    segment: int
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStop:
    segment: int
    audio_end_ms: int


@dataclass(frozen=True)
class Committed:
    segment: int


@dataclass(frozen=True)
class Cleared:
    segment: int | None  # the segment dropped, if one was open


@dataclass(frozen=True)
class TranscriptUpdate:
    segment: int
    delta: str
    stable: str
    unstable: str
    revision: int


@dataclass(frozen=True)
class TranscriptDone:
    segment: int
    text: str
    start_ms: int
    end_ms: int
    language: str | None
    tags: dict[str, str] | None = None  # what a model says about the audio (emotion, event)
    words: tuple[Word, ...] | None = None  # seconds on the session's audio clock

    def words_json(self) -> list[dict] | None:
        """The words as every protocol sends them (OpenAI's verbose_json shape), or None."""
        if self.words is None:
            return None
        return [{"word": w.text, "start": w.start, "end": w.end} for w in self.words]


@dataclass(frozen=True)
class TranscriptFailed:
    segment: int
    message: str


@dataclass(frozen=True)
class Lag:
    buffered_ms: int
    lag_ms: int
    dropped_ms: int


@dataclass(frozen=True)
class Overload:
    """The model fell too far behind; audio is being dropped."""

    message: str


SessionEvent = (
    SpeechStart
    | SpeechStop
    | Committed
    | Cleared
    | TranscriptUpdate
    | TranscriptDone
    | TranscriptFailed
    | Lag
    | Overload
)


# ---- settings ----


@dataclass(frozen=True)
class InputFormat:
    codec: str = "pcm16"
    rate: int | None = 24_000


VAD_FIELDS = {
    "threshold": (0.0, 1.0),
    "prefix_padding_ms": (0, 10_000),
    "silence_duration_ms": (0, 10_000),
}


def vad_config(fields: dict, param: str) -> VadConfig:
    """`server_vad` knobs from a client message, each checked with the name of its field."""
    for key, (lo, hi) in VAD_FIELDS.items():
        if key not in fields:
            continue
        value = fields[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not lo <= value <= hi or (key != "threshold" and value != int(value)):
            kind = "a number" if key == "threshold" else "a whole number of ms"
            raise SessionError(
                "invalid_value", f"{key} must be {kind} from {lo} to {hi}", f"{param}.{key}"
            )
    return VadConfig(
        **{k: fields[k] if k == "threshold" else int(fields[k]) for k in VAD_FIELDS if k in fields}
    )


@dataclass(frozen=True)
class Settings:
    model: AsrModel
    input: InputFormat = InputFormat()
    vad: VadConfig | None = VadConfig()  # None: the client commits turns
    options: StreamOptions = StreamOptions()


def check_options(settings: Settings) -> None:
    try:
        settings.model.validate(settings.options)
    except ValueError as e:
        raise SessionError("invalid_value", str(e), "language") from None


# ---- bookkeeping ----


@dataclass
class _Stream:
    """One model stream handle and the segments it carries."""

    handle: StreamHandle
    model: AsrModel
    options: StreamOptions
    fed: int = 0  # samples fed into the handle
    # (fed, monotonic time) of each feed: those the model has not heard yet (for lag), and
    # those no partial has covered yet (for partial latency)
    unheard: deque[tuple[int, float]] = field(default_factory=deque)
    unanswered: deque[tuple[int, float]] = field(default_factory=deque)
    segments: deque[int] = field(default_factory=deque)  # session segment ids, in handle order
    task: asyncio.Task | None = None

    def note_feed(self, n: int) -> None:
        self.fed += n
        entry = (self.fed, time.monotonic())
        self.unheard.append(entry)
        self.unanswered.append(entry)

    def answered(self, sample: int) -> float | None:
        """Arrival time of the feed holding `sample`; forgets the feeds before it."""
        q = self.unanswered
        while q and q[0][0] < sample:
            q.popleft()
        return q[0][1] if q else None


@dataclass
class _Segment:
    id: int
    stream: _Stream
    start: int  # session sample of its first fed sample
    fed: int = 0
    stream_end: int = 0  # the stream's sample count when the segment was committed
    transcript: SegmentTranscript = field(default_factory=SegmentTranscript)
    committed_at: float | None = None


class TranscriptionSession:
    def __init__(
        self,
        settings: Settings,
        limits: Limits,
        metrics: Metrics,
        emit: Callable[[SessionEvent], None],
    ) -> None:
        check_options(settings)
        self.settings = settings
        self.limits = limits
        self.metrics = metrics
        self.emit = emit
        self._input = AudioInput(settings.input.codec, settings.input.rate)
        self._received = 0  # session samples (16 kHz) received so far
        self._endpointer: Endpointer | None = None
        self._vad_origin = 0  # session sample where the endpointer's clock starts
        self._make_endpointer(settings.vad)
        self._lookback = np.zeros(0, dtype=np.float32)  # the newest audio, for prefix padding
        self._speaking = False
        self._fed_until = 0  # session sample up to which the open VAD turn has been fed
        self._stream: _Stream | None = None  # the stream new segments go to
        self._streams: list[_Stream] = []  # including finishing ones, until their events end
        self._segments: dict[int, _Segment] = {}  # open or awaiting their final
        self._open: _Segment | None = None
        self._next_segment = 0
        self._dropped = 0  # samples dropped by the backlog limits
        self._dropping = False

    # ---- client actions ----

    def update(self, settings: Settings) -> None:
        """New settings. Format and VAD apply now; model, language and prompt at the next turn."""
        check_options(settings)
        if settings.input != self.settings.input:
            self._input.abort()
            self._input = AudioInput(settings.input.codec, settings.input.rate)
        if settings.vad != self.settings.vad:
            if settings.vad is not None and self._endpointer is not None:
                self._endpointer.configure(**vars(settings.vad))  # keeps the turn in progress
            else:
                self._speaking = False  # an open turn now ends with the client's commit
                self._make_endpointer(settings.vad)
        self.settings = settings

    async def append(self, data: bytes) -> None:
        self._receive(await self._decode(self._input.push, data))

    def commit(self) -> int:
        seg = self._open
        if seg is None or seg.fed < samples(MIN_COMMIT_MS):
            got = 0 if seg is None else ms(seg.fed)
            raise SessionError(
                "input_audio_buffer_commit_empty",
                f"buffer too small: expected at least {MIN_COMMIT_MS}ms of audio, got {got}ms",
            )
        self._end_turn(ms(self._received))
        return seg.id

    def clear(self) -> None:
        seg = self._open
        if seg is not None:
            seg.stream.handle.clear()
            del self._segments[seg.id]
            self._open = None
        self._speaking = False
        self._make_endpointer(self.settings.vad)
        self.emit(Cleared(seg.id if seg else None))

    async def finish(self) -> None:
        """End of audio: flush the decoder, commit what is open, wait for the last finals."""
        self._receive(await self._decode(self._input.close))
        if self._open is not None and self._open.fed > 0:
            self._end_turn(ms(self._received))
        streams = list(self._streams)
        for s in streams:
            s.handle.finish()
        await asyncio.gather(*(s.task for s in streams if s.task))

    def close(self) -> None:
        """The client is gone: stop all model work now."""
        self._input.abort()
        for s in self._streams:
            s.handle.cancel()
            if s.task:
                s.task.cancel()
        self._streams.clear()

    def lag(self) -> Lag:
        s = self._stream
        buffered = lag = 0
        if s is not None:
            consumed = s.handle.consumed_samples
            buffered = max(0, s.fed - consumed)
            while s.unheard and s.unheard[0][0] <= consumed:
                s.unheard.popleft()
            if s.unheard:
                lag = int((time.monotonic() - s.unheard[0][1]) * 1000)
        return Lag(ms(buffered), lag, ms(self._dropped))

    # ---- the audio path ----

    async def _decode(self, step, *args) -> np.ndarray:
        """Run a decoder step; container decoders block, so they run off the event loop."""
        try:
            if self._input.blocking:
                return await asyncio.to_thread(step, *args)
            return step(*args)
        except AudioFormatError as e:
            raise SessionError("invalid_audio", str(e)) from None

    def _make_endpointer(self, vad: VadConfig | None) -> None:
        self._vad_origin = self._received
        self._endpointer = None if vad is None else Endpointer(vad)

    def _receive(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        start = self._received
        self._received += x.size
        self.metrics.audio_seconds.labels(self.settings.model.name).inc(x.size / TARGET_RATE)
        if self._endpointer is None:
            self._feed(x, start)
            return
        # the lookback holds this chunk and the VAD_LOOKBACK_MS before it
        self._lookback = np.concatenate([self._lookback, x])[-(samples(VAD_LOOKBACK_MS) + x.size) :]
        oldest = self._received - self._lookback.size
        for ev in self._endpointer.push(x):
            if isinstance(ev, SpeechStarted) and not self._speaking:
                at = max(self._vad_origin + samples(ev.audio_start_ms), oldest)
                self._speaking = True
                self._fed_until = at
                seg = self._open or self._open_segment(at)
                self.emit(SpeechStart(seg.id, ms(at)))
            elif isinstance(ev, SpeechStopped) and self._speaking:
                end = self._vad_origin + samples(ev.audio_end_ms)
                self._feed_lookback(end)
                if self._open is not None:
                    self._end_turn(ms(end))
                self._speaking = False
        if self._speaking:
            self._feed_lookback(self._received)

    def _feed_lookback(self, until: int) -> None:
        """Feed the looked-back audio from where the turn was fed up to `until`."""
        base = self._received - self._lookback.size
        if until > self._fed_until:
            self._feed(
                self._lookback[max(self._fed_until - base, 0) : until - base], self._fed_until
            )
            self._fed_until = until

    def _feed(self, x: np.ndarray, at: int) -> None:
        """Feed session audio that starts at session sample `at` into the open segment."""
        if self._over_backlog():
            self._dropped += x.size
            self.metrics.audio_dropped_seconds.inc(x.size / TARGET_RATE)
            return
        while x.size:
            seg = self._open or self._open_segment(at)
            # the server's limit, or the model's own when shorter (FireRedASR2: 60 s)
            seconds = getattr(seg.stream.model, "max_segment_seconds", None)
            limit = samples(min(self.limits.max_segment_seconds, seconds or math.inf) * 1000)
            head, x = x[: limit - seg.fed], x[limit - seg.fed :]
            seg.stream.handle.feed(head)
            seg.stream.note_feed(head.size)
            seg.fed += head.size
            at += head.size
            if seg.fed >= limit:  # --max-segment-seconds: end the turn as if at a pause
                self._end_turn(ms(at))
                if self._speaking:
                    self.emit(SpeechStart(self._open_segment(at).id, ms(at)))

    def _over_backlog(self) -> bool:
        lag = self.lag()
        over = (
            lag.lag_ms > self.limits.max_lag_ms
            or lag.buffered_ms > self.limits.max_buffered_seconds * 1000
        )
        if over and not self._dropping:
            self.emit(
                Overload(
                    f"the model is {lag.lag_ms} ms behind with {lag.buffered_ms} ms of audio "
                    f"waiting (limits: --max-lag-ms {self.limits.max_lag_ms}, "
                    f"--max-buffered-seconds {self.limits.max_buffered_seconds:g}); "
                    "new audio is dropped until it catches up"
                )
            )
        self._dropping = over
        return over

    # ---- segments and model streams ----

    def _open_segment(self, at: int) -> _Segment:
        stream = self._stream
        if stream is None or (stream.model, stream.options) != (
            self.settings.model,
            self.settings.options,
        ):
            if stream is not None:
                stream.handle.finish()
            stream = self._start_stream()
        seg = _Segment(self._next_segment, stream, start=at)
        self._next_segment += 1
        stream.segments.append(seg.id)
        self._segments[seg.id] = seg
        self._open = seg
        return seg

    def _start_stream(self) -> _Stream:
        model, options = self.settings.model, self.settings.options
        stream = _Stream(model.open_stream(options), model, options)
        stream.task = asyncio.get_running_loop().create_task(self._pump(stream))
        self._stream = stream
        self._streams.append(stream)
        return stream

    def _end_turn(self, end_ms: int) -> None:
        """Commit the open segment; under server VAD also say that speech stopped."""
        seg = self._open
        assert seg is not None
        if self._speaking:
            self.emit(SpeechStop(seg.id, end_ms))
        self._open = None
        seg.committed_at = time.monotonic()
        seg.stream_end = seg.stream.fed
        seg.stream.handle.commit()
        self.emit(Committed(seg.id))

    async def _pump(self, stream: _Stream) -> None:
        """Model events -> session events, for one stream handle."""
        order = stream.segments  # the handle's segment k is order[k - done]
        done = 0
        reason = "the model stream ended before the segment's transcript"
        try:
            async for ev in stream.handle:
                if ev.segment < done:
                    continue  # a late update for a segment that has already ended
                sid = order[ev.segment - done]
                seg = self._segments.get(sid)
                if seg is None:
                    continue  # cleared
                if isinstance(ev, Partial):
                    self._on_partial(seg, ev)
                    continue
                self._forget(seg)
                if isinstance(ev, Final):
                    self._on_final(seg, ev)
                else:
                    self.emit(TranscriptFailed(sid, ev.message))
                while order and order[0] not in self._segments:  # segments end in order
                    order.popleft()
                    done += 1
        except Exception as e:  # a model fault costs this stream's segments only
            log.exception("model stream failed")
            reason = f"model error: {e}"
        finally:
            if stream in self._streams:
                self._streams.remove(stream)
            if self._stream is stream:
                self._stream = None
        for sid in order:  # whatever the stream left unfinished has failed
            seg = self._segments.get(sid)
            if seg is not None:
                self._forget(seg)
                self.emit(TranscriptFailed(sid, reason))

    def _forget(self, seg: _Segment) -> None:
        del self._segments[seg.id]
        if self._open is seg:
            self._open = None

    def _on_partial(self, seg: _Segment, ev: Partial) -> None:
        up = seg.transcript.partial(ev.stable, ev.unstable)
        self._note(up.repaired)
        heard_at = seg.stream.answered(ev.end_sample)
        if heard_at is not None:
            self.metrics.partial_latency.observe(time.monotonic() - heard_at)
        self.emit(TranscriptUpdate(seg.id, up.delta, up.stable, up.unstable, up.revision))

    def _on_final(self, seg: _Segment, ev: Final) -> None:
        up = seg.transcript.final(ev.text)
        self._note(up.repaired)
        seg.stream.answered(seg.stream_end)
        if seg.committed_at is not None:
            self.metrics.final_latency.observe(time.monotonic() - seg.committed_at)
        if up.delta:
            self.emit(TranscriptUpdate(seg.id, up.delta, up.stable, "", up.revision))
        end = seg.start + seg.fed
        words = None
        if ev.words is not None:
            at = seg.start / TARGET_RATE
            words = tuple(
                Word(w.text, round(at + w.start, 3), round(at + w.end, 3)) for w in ev.words
            )
        self.emit(
            TranscriptDone(seg.id, up.stable, ms(seg.start), ms(end), ev.language, ev.tags, words)
        )

    def _note(self, repaired: bool) -> None:
        if repaired:
            self.metrics.transcript_repairs.inc()
            log.warning("model %s broke the transcript contract", self.settings.model.name)
