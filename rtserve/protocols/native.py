"""`/v1/stream`: rtserve's own binary protocol. Every WebSocket frame is one msgpack value.

Client: a map `{"type": "start", "model", "format", "rate", "language", "prompt", "vad"}` first;
then audio as msgpack `bin` values (raw bytes in the declared format); `{"type": "commit"}` ends
a segment by hand; `{"type": "end"}` ends the stream.
Server: `ready`, `speech_started`, `speech_stopped`, `partial {segment, stable, unstable,
revision}`, `final {segment, text, start_ms, end_ms, language}`, `failed`, `lag`, `error {code,
message}`, and `done` after `end`, when every final is out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from audio.input import CODECS, RAW_CODECS
from audio.vad import VadConfig
from engine.streaming import StreamOptions
from rtserve.connection import Connection
from rtserve.server import UnknownModel
from rtserve.session import (
    Cleared,
    Committed,
    InputFormat,
    Lag,
    Overload,
    SessionError,
    SessionEvent,
    Settings,
    SpeechStart,
    SpeechStop,
    TranscriptDone,
    TranscriptFailed,
    TranscriptionSession,
    TranscriptUpdate,
    vad_config,
)

START_KEYS = {"type", "model", "format", "rate", "language", "prompt", "vad", "use_itn"}


class NativeConnection(Connection):
    protocol = "native"

    def __init__(self, websocket, server) -> None:
        super().__init__(websocket, server)
        self._finishing: asyncio.Task | None = None

    def encode(self, event: dict) -> bytes:
        return msgpack.packb(event, use_bin_type=True)

    def error_event(self, code: str, message: str, **extra: Any) -> dict:
        return {"type": "error", "code": code, "message": message, **extra}

    def lag_event(self, lag: Lag) -> dict:
        return {
            "type": "lag",
            "buffered_ms": lag.buffered_ms,
            "lag_ms": lag.lag_ms,
            "dropped_ms": lag.dropped_ms,
        }

    async def on_open(self) -> None:
        pass  # the client speaks first

    async def on_message(self, text: str | None, data: bytes | None) -> None:
        if data is None:
            raise SessionError("invalid_frame", "frames are binary msgpack, not text")
        try:
            msg = msgpack.unpackb(data, raw=False)
        except Exception as e:
            raise SessionError("invalid_msgpack", f"the frame is not msgpack: {e}") from None
        if isinstance(msg, bytes):
            await self._live().append(msg)
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise SessionError("invalid_message", "a message is a map with a string `type`")
        kind = msg["type"]
        if kind == "start":
            self.start(msg)
        elif kind == "commit":
            self._live().commit()
        elif kind == "end":
            session = self._live()
            if self._finishing is None:
                self._finishing = asyncio.create_task(self.finish(session))
        else:
            raise SessionError("unknown_type", f"unknown message type {kind!r}")

    def _live(self) -> TranscriptionSession:
        if self.session is None:
            raise SessionError("not_started", "send a `start` message before audio or commands")
        if self._finishing is not None:
            raise SessionError("ended", "the stream has ended")
        return self.session

    def start(self, msg: dict) -> None:
        if self.session is not None:
            raise SessionError("already_started", "the stream has already started")
        unknown = set(msg) - START_KEYS
        if unknown:
            raise SessionError("invalid_start", f"unknown keys in start: {sorted(unknown)}")
        try:
            model = self.server.asr_model(msg.get("model"))
        except UnknownModel as e:
            raise SessionError("model_not_found", str(e)) from None
        codec = msg.get("format", "pcm16")
        if codec not in CODECS:
            raise SessionError(
                "invalid_format", f"format {codec!r}: use one of {', '.join(CODECS)}"
            )
        rate = msg.get("rate", 16_000 if codec in ("pcm16", "f32") else None)
        if codec in RAW_CODECS and not isinstance(rate, int):
            raise SessionError("invalid_rate", f"format {codec} needs an integer `rate`")
        for key in ("language", "prompt"):
            if msg.get(key) is not None and not isinstance(msg[key], str):
                raise SessionError("invalid_start", f"`{key}` must be a string")
        settings = Settings(
            model=model,
            input=InputFormat(codec, rate if codec in RAW_CODECS else None),
            vad=parse_vad(msg.get("vad", {})),
            options=StreamOptions(msg.get("language"), msg.get("prompt"), msg.get("use_itn")),
        )
        try:
            self.session = TranscriptionSession(
                settings, self.server.config.limits, self.server.metrics, self.on_session_event
            )
        except SessionError:
            raise
        except Exception as e:  # bad rate or format, from the audio layer
            raise SessionError("invalid_start", str(e)) from None
        self.send(
            {
                "type": "ready",
                "model": model.name,
                "format": codec,
                "rate": settings.input.rate,
                "vad": None if settings.vad is None else vars(settings.vad),
                "limits": {
                    "max_frame_bytes": self.server.config.limits.max_frame_bytes,
                    "max_segment_seconds": self.server.config.limits.max_segment_seconds,
                    "max_session_seconds": self.server.config.limits.max_session_seconds,
                },
            }
        )

    async def finish(self, session: TranscriptionSession) -> None:
        try:
            await session.finish()
        except SessionError as e:
            self.error(e.code, e.message)
        self.send({"type": "done"})
        self.end()

    def on_session_event(self, ev: SessionEvent) -> None:
        match ev:
            case SpeechStart():
                self.send(
                    {"type": "speech_started", "segment": ev.segment, "start_ms": ev.audio_start_ms}
                )
            case SpeechStop():
                self.send(
                    {"type": "speech_stopped", "segment": ev.segment, "end_ms": ev.audio_end_ms}
                )
            case TranscriptUpdate():
                self.send(
                    {
                        "type": "partial",
                        "segment": ev.segment,
                        "stable": ev.stable,
                        "unstable": ev.unstable,
                        "revision": ev.revision,
                    }
                )
            case TranscriptDone():
                self.send(
                    {
                        "type": "final",
                        "segment": ev.segment,
                        "text": ev.text,
                        "start_ms": ev.start_ms,
                        "end_ms": ev.end_ms,
                        "language": ev.language,
                        "tags": ev.tags,
                        "words": ev.words_json(),
                    }
                )
            case TranscriptFailed():
                self.send({"type": "failed", "segment": ev.segment, "message": ev.message})
            case Overload():
                self.error("audio_dropped", ev.message)
            case Committed() | Cleared():
                pass  # the client asked for these; finals follow


def parse_vad(vad: Any) -> VadConfig | None:
    if vad is None:
        return None
    if not isinstance(vad, dict):
        raise SessionError("invalid_start", "`vad` is a map or nil")
    unknown = set(vad) - {"threshold", "prefix_padding_ms", "silence_duration_ms"}
    if unknown:
        raise SessionError("invalid_start", f"unknown keys in vad: {sorted(unknown)}")
    return vad_config(vad, "vad")
