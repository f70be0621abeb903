"""`/v1/realtime`: the OpenAI Realtime API (GA event names; beta `transcription_session.update`).

Transcription sessions: `?intent=transcription`, `session.type="transcription"`, or a `model`
query parameter naming an ASR model. Conversation sessions (text): a `model` query parameter
naming a chat model, or `session.type="realtime"` (realtime_conversation.py). JSON text frames
carry events; a binary frame is taken as `input_audio_buffer.append` of raw bytes in the
session's input format.

Our extensions (clients that do not know them can ignore them):
- `rtserve.transcription.partial` {item_id, content_index, stable, unstable, revision}: the
  changing tail for display. `...transcription.delta` carries only newly stable text, so the
  deltas of an item add up to its `...transcription.completed` transcript.
- `rtserve.lag` {buffered_ms, lag_ms, dropped_ms} every second.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import replace
from typing import Any

from audio.vad import VadConfig
from engine.streaming import StreamOptions
from rtserve.connection import Connection
from rtserve.protocols.realtime_conversation import Conversation
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

GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
BETA_FORMATS = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
PCM_RATES = (24_000, 16_000, 8_000)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class RealtimeConnection(Connection):
    protocol = "openai_realtime"
    subprotocols = ("realtime",)

    def __init__(self, websocket, server) -> None:
        super().__init__(websocket, server)
        self.session_id = new_id("sess")
        self.items: dict[int, str] = {}  # segment -> item id
        self.last_item: str | None = None  # the newest committed item
        self.transcription = {"model": None, "language": None, "prompt": None}
        self.noise_reduction = None
        self.client_event_id: str | None = None
        self.conversation: Conversation | None = None
        self.create_response = True  # conversation: a transcribed turn gets a reply
        self.interrupt = True  # conversation: speech cancels the reply in progress

    # ---- wire format ----

    def encode(self, event: dict) -> str:
        return json.dumps({"event_id": new_id("event"), **event}, ensure_ascii=False)

    def error_event(self, code: str, message: str, **extra: Any) -> dict:
        kind = (
            "server_error" if code in ("server_error", "audio_dropped") else "invalid_request_error"
        )
        return {
            "type": "error",
            "error": {
                "type": kind,
                "code": code,
                "message": message,
                "param": extra.pop("param", None),
                "event_id": self.client_event_id,
                **extra,
            },
        }

    def lag_event(self, lag: Lag) -> dict:
        return {
            "type": "rtserve.lag",
            "buffered_ms": lag.buffered_ms,
            "lag_ms": lag.lag_ms,
            "dropped_ms": lag.dropped_ms,
        }

    # ---- opening ----

    async def on_open(self) -> None:
        query = self.ws.query_params
        model = query.get("model")
        chat = model and model in self.server.models and self.server.models[model].kind == "chat"
        try:
            if chat and query.get("intent") != "transcription":
                self.start_conversation(model)
            else:
                self.start_transcription(model)
        except SessionError as e:
            self.error(e.code, e.message, param="model")
            self.end()
            return
        self.send({"type": "session.created", "session": self.session_object()})

    def start_transcription(self, model: str | None) -> None:
        self.close_conversation()
        if self.session is not None:
            self.session.close()
        self.start_audio_input(model)

    def start_conversation(self, model: str | None) -> None:
        if model is None:
            chats = [m.name for m in self.server.models.values() if m.kind == "chat"]
            if not chats:
                raise SessionError("model_not_found", "no chat model is served", "session.model")
            model = chats[0]
        try:
            chat = self.server.chat_model(model)
        except UnknownModel as e:
            raise SessionError("model_not_found", str(e), "session.model") from None
        if self.session is not None:
            self.session.close()
            self.session = None
        self.close_conversation()
        self.conversation = Conversation(chat, self.send)
        # speech in: turns are transcribed, join the conversation, and get a reply
        if any(m.kind == "asr" for m in self.server.models.values()):
            self.start_audio_input(None)
            self.session.update(replace(self.session.settings, vad=VadConfig()))

    def start_audio_input(self, model: str | None) -> None:
        try:
            asr = self.server.asr_model(model)
        except UnknownModel as e:
            raise SessionError("model_not_found", str(e), "model") from None
        self.transcription["model"] = asr.name
        self.session = TranscriptionSession(
            Settings(model=asr, input=InputFormat("pcm16", 24_000)),
            self.server.config.limits,
            self.server.metrics,
            self.on_session_event,
        )

    def close_conversation(self) -> None:
        if self.conversation is not None:
            self.conversation.close()
            self.conversation = None

    def on_close(self) -> None:
        super().on_close()
        self.close_conversation()

    def session_object(self) -> dict:
        if self.conversation is not None:
            obj = self.conversation.session_object(self.session_id)
            if self.session is not None:
                obj["audio"] = {"input": self.audio_input_object()}
            return obj
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.session_id,
            "audio": {"input": self.audio_input_object()},
            "include": [],
        }

    def audio_input_object(self) -> dict:
        s = self.session.settings
        fmt = {v: k for k, v in GA_FORMATS.items()}[s.input.codec]
        turn = turn_detection_object(s.vad)
        if turn is not None and self.conversation is not None:
            turn |= {"create_response": self.create_response, "interrupt_response": self.interrupt}
        return {
            "format": {"type": fmt, **({"rate": s.input.rate} if fmt == "audio/pcm" else {})},
            "transcription": dict(self.transcription),
            "noise_reduction": self.noise_reduction,
            "turn_detection": turn,
        }

    def beta_session_object(self) -> dict:
        s = self.session.settings
        return {
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "input_audio_format": {v: k for k, v in BETA_FORMATS.items()}[s.input.codec],
            "input_audio_transcription": dict(self.transcription),
            "input_audio_noise_reduction": self.noise_reduction,
            "turn_detection": turn_detection_object(s.vad),
        }

    # ---- client events ----

    async def on_message(self, text: str | None, data: bytes | None) -> None:
        self.client_event_id = None
        if data is not None:
            await self.transcribing().append(data)
            return
        try:
            event = json.loads(text)
        except ValueError as e:
            raise SessionError("invalid_json", f"the message is not valid JSON: {e}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise SessionError("invalid_event", "an event is a JSON object with a string `type`")
        self.client_event_id = event.get("event_id")
        kind = event["type"]
        if kind in CONVERSATION_HANDLERS and self.conversation is not None:
            CONVERSATION_HANDLERS[kind](self.conversation, event)
        elif kind in HANDLERS:
            await HANDLERS[kind](self, event)
        elif kind in CONVERSATION_HANDLERS or kind.startswith(("response.", "conversation.")):
            raise SessionError(
                "unsupported_in_transcription_session",
                f"`{kind}` is not accepted in a transcription session",
                "type",
            )
        else:
            raise SessionError(
                "unknown_event_type", f"`{kind}` is not an event this server accepts", "type"
            )

    def transcribing(self) -> TranscriptionSession:
        if self.session is None:
            raise SessionError(
                "unsupported_in_conversation_session",
                "this server has no speech model for audio input",
            )
        return self.session

    async def on_session_update(self, event: dict) -> None:
        session = _object(event.get("session"), "session")
        kind = session.get("type", "realtime" if self.conversation else "transcription")
        if kind not in ("transcription", "realtime"):
            raise SessionError(
                "unsupported_session_type",
                f"session.type {kind!r}: use `transcription` or `realtime`",
                "session.type",
            )
        if kind == "realtime":
            model = session.get("model")
            if self.conversation is None or (model and model != self.conversation.model.name):
                self.start_conversation(model or None)
            self.conversation.update(session)
        elif self.conversation is not None or self.session is None:
            self.start_transcription(None)
        audio_in = _object(
            _object(session.get("audio", {}), "session.audio").get("input", {}),
            "session.audio.input",
        )
        if audio_in:
            self.apply_audio_input(audio_in)
        self.send({"type": "session.updated", "session": self.session_object()})

    def apply_audio_input(self, audio_in: dict) -> None:
        settings = self.transcribing().settings
        if "format" in audio_in:
            settings = replace(settings, input=parse_ga_format(audio_in["format"]))
        if "transcription" in audio_in:
            settings = self.apply_transcription(
                settings, audio_in["transcription"], "session.audio.input.transcription"
            )
        if "turn_detection" in audio_in:
            td = audio_in["turn_detection"]
            param = "session.audio.input.turn_detection"
            settings = replace(settings, vad=parse_turn_detection(td, param))
            for key, attr in (
                ("create_response", "create_response"),
                ("interrupt_response", "interrupt"),
            ):
                if isinstance(td, dict) and key in td:
                    if not isinstance(td[key], bool):
                        raise SessionError(
                            "invalid_value", f"{key} must be true or false", f"{param}.{key}"
                        )
                    setattr(self, attr, td[key])
        if "noise_reduction" in audio_in:
            self.noise_reduction = audio_in["noise_reduction"]  # accepted; audio is not filtered
        self.session.update(settings)

    async def on_transcription_session_update(self, event: dict) -> None:
        session = _object(event.get("session"), "session")
        settings = self.transcribing().settings
        if "input_audio_format" in session:
            name = session["input_audio_format"]
            if name not in BETA_FORMATS:
                raise SessionError(
                    "invalid_value",
                    f"input_audio_format must be one of {', '.join(BETA_FORMATS)}",
                    "session.input_audio_format",
                )
            codec = BETA_FORMATS[name]
            settings = replace(
                settings, input=InputFormat(codec, 24_000 if codec == "pcm16" else 8_000)
            )
        if "input_audio_transcription" in session:
            settings = self.apply_transcription(
                settings, session["input_audio_transcription"], "session.input_audio_transcription"
            )
        if "turn_detection" in session:
            settings = replace(
                settings,
                vad=parse_turn_detection(session["turn_detection"], "session.turn_detection"),
            )
        if "input_audio_noise_reduction" in session:
            self.noise_reduction = session["input_audio_noise_reduction"]
        self.session.update(settings)
        self.send({"type": "transcription_session.updated", "session": self.beta_session_object()})

    def apply_transcription(self, settings: Settings, cfg: Any, param: str) -> Settings:
        cfg = _object(cfg or {}, param)
        if "model" in cfg:
            try:
                model = self.server.asr_model(cfg["model"])
            except UnknownModel as e:
                raise SessionError("model_not_found", str(e), f"{param}.model") from None
            settings = replace(settings, model=model)
            self.transcription["model"] = cfg["model"]
        for key in ("language", "prompt"):
            if key in cfg:
                if cfg[key] is not None and not isinstance(cfg[key], str):
                    raise SessionError("invalid_value", f"{key} must be a string", f"{param}.{key}")
                self.transcription[key] = cfg[key]
        options = StreamOptions(
            self.transcription["language"] or None, self.transcription["prompt"] or None
        )
        return replace(settings, options=options)

    async def on_append(self, event: dict) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise SessionError("invalid_value", "`audio` must be a base64 string", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise SessionError("invalid_base64", "`audio` is not valid base64", "audio") from None
        await self.transcribing().append(data)

    async def on_commit(self, event: dict) -> None:
        self.transcribing().commit()

    async def on_clear(self, event: dict) -> None:
        self.transcribing().clear()

    # ---- session events -> wire ----

    def item_id(self, segment: int) -> str:
        if segment not in self.items:
            self.items[segment] = new_id("item")
        return self.items[segment]

    def on_session_event(self, ev: SessionEvent) -> None:
        match ev:
            case SpeechStart():
                if self.conversation is not None and self.interrupt:
                    self.conversation.interrupt()
                self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": ev.audio_start_ms,
                        "item_id": self.item_id(ev.segment),
                    }
                )
            case SpeechStop():
                self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": ev.audio_end_ms,
                        "item_id": self.item_id(ev.segment),
                    }
                )
            case Committed():
                item = self.item_id(ev.segment)
                previous, self.last_item = self.last_item, item
                if self.conversation is not None:
                    previous = self.conversation.add_audio_item(item)
                self.send(
                    {
                        "type": "input_audio_buffer.committed",
                        "item_id": item,
                        "previous_item_id": previous,
                    }
                )
                self.send(
                    {
                        "type": "conversation.item.added",
                        "previous_item_id": previous,
                        "item": user_item(item, None),
                    }
                )
            case Cleared():
                if ev.segment is not None:
                    self.items.pop(ev.segment, None)
                self.send({"type": "input_audio_buffer.cleared"})
            case TranscriptUpdate():
                item = self.item_id(ev.segment)
                if ev.delta:
                    self.send(
                        {
                            "type": "conversation.item.input_audio_transcription.delta",
                            "item_id": item,
                            "content_index": 0,
                            "delta": ev.delta,
                        }
                    )
                self.send(
                    {
                        "type": "rtserve.transcription.partial",
                        "item_id": item,
                        "content_index": 0,
                        "stable": ev.stable,
                        "unstable": ev.unstable,
                        "revision": ev.revision,
                    }
                )
            case TranscriptDone():
                item = self.items.pop(ev.segment, None) or new_id("item")
                self.send(
                    {
                        "type": "conversation.item.input_audio_transcription.completed",
                        "item_id": item,
                        "content_index": 0,
                        "transcript": ev.text,
                        "usage": {
                            "type": "duration",
                            "seconds": round((ev.end_ms - ev.start_ms) / 1000, 3),
                        },
                        "rtserve": {
                            "start_ms": ev.start_ms,
                            "end_ms": ev.end_ms,
                            "language": ev.language,
                            "tags": ev.tags,
                            "words": ev.words_json(),
                        },
                    }
                )
                self.send({"type": "conversation.item.done", "item": user_item(item, ev.text)})
                if self.conversation is not None:
                    auto = self.create_response and self.session.settings.vad is not None
                    self.conversation.transcribed(item, ev.text, respond=auto)
            case TranscriptFailed():
                item = self.items.pop(ev.segment, None) or new_id("item")
                self.send(
                    {
                        "type": "conversation.item.input_audio_transcription.failed",
                        "item_id": item,
                        "content_index": 0,
                        "error": {
                            "type": "server_error",
                            "code": "transcription_failed",
                            "message": ev.message,
                        },
                    }
                )
            case Overload():
                self.error("audio_dropped", ev.message)


CONVERSATION_HANDLERS = {
    "conversation.item.create": Conversation.create_item,
    "conversation.item.delete": Conversation.delete_item,
    "response.create": Conversation.create_response,
    "response.cancel": Conversation.cancel_response,
}

HANDLERS = {
    "session.update": RealtimeConnection.on_session_update,
    "transcription_session.update": RealtimeConnection.on_transcription_session_update,
    "input_audio_buffer.append": RealtimeConnection.on_append,
    "input_audio_buffer.commit": RealtimeConnection.on_commit,
    "input_audio_buffer.clear": RealtimeConnection.on_clear,
}


def user_item(item_id: str, transcript: str | None) -> dict:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def turn_detection_object(vad: VadConfig | None) -> dict | None:
    if vad is None:
        return None
    return {
        "type": "server_vad",
        "threshold": vad.threshold,
        "prefix_padding_ms": vad.prefix_padding_ms,
        "silence_duration_ms": vad.silence_duration_ms,
    }


def parse_ga_format(fmt: Any) -> InputFormat:
    fmt = _object(fmt, "session.audio.input.format")
    kind = fmt.get("type")
    if kind not in GA_FORMATS:
        raise SessionError(
            "invalid_value",
            f"audio format {kind!r}: use one of {', '.join(GA_FORMATS)}",
            "session.audio.input.format.type",
        )
    if kind != "audio/pcm":
        return InputFormat(GA_FORMATS[kind], 8_000)
    rate = fmt.get("rate", 24_000)
    if rate not in PCM_RATES:
        raise SessionError(
            "invalid_value",
            f"audio/pcm rate {rate!r}: use one of {', '.join(map(str, PCM_RATES))}",
            "session.audio.input.format.rate",
        )
    return InputFormat("pcm16", rate)


def parse_turn_detection(td: Any, param: str) -> VadConfig | None:
    if td is None:
        return None
    td = _object(td, param)
    if td.get("type", "server_vad") != "server_vad":
        raise SessionError(
            "invalid_value",
            f"turn_detection type {td.get('type')!r}: only `server_vad` (or null) is served",
            f"{param}.type",
        )
    return vad_config(td, param)


def _object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise SessionError("invalid_value", f"`{param}` must be an object", param)
    return value
