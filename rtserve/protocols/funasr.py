"""`/v1/funasr`, and WebSocket upgrades at `/`: FunASR's runtime WebSocket protocol ("2pass").

Stock FunASR clients (runtime/python/websocket/funasr_wss_client.py, the HTML5 and C++ clients)
connect to the server's root. The protocol (FunASR runtime/docs/websocket_protocol.md):

Client: a JSON text message `{"mode": "online"|"offline"|"2pass", "wav_name", "wav_format",
"audio_fs", "is_speaking": true, "chunk_size": [5, 10, 5], "chunk_interval", "hotwords", "itn"}`
first; then binary audio frames; `{"is_speaking": false}` ends the utterance (a file, or a
client-side VAD turn). A later JSON message may carry any subset of the fields (clients re-send
the whole config before each file). Unknown keys are ignored, as FunASR's servers do.
Server: results `{"mode": "online"|"offline"|"2pass-online"|"2pass-offline", "wav_name", "text",
"is_final", "stamp_sents"?}`.

Over the session core (one `TranscriptionSession` per utterance, server VAD cutting segments):
- `online` sends each segment's newly stable text as it appears (the `delta` of transcript
  updates), so the pieces only ever append, as FunASR's online pieces do;
- `offline` sends each segment's final text when the segment ends;
- `2pass` sends both: pieces as `2pass-online`, finals as `2pass-offline`. The "second pass" is,
  for now, the segment's final from the same model.
Every `{"is_speaking": false}` gets exactly one result with `is_final: true`, the last message of
the utterance: the utterance's last result, or an empty one when it has none left.

Our additions, which FunASR clients never send or can ignore: `error {code, message}` on a
result-shaped message (FunASR has no error message); `warning {code, message}` on the first
result after hotwords the model cannot use (a model that reads hotwords, such as Fun-ASR-Nano,
gets them as its stream prompt); config keys `vad` (server VAD knobs, or null for
client-side segmentation) and `lag_reports` (lag as result-shaped messages with `lag`); the
`?model=` query parameter. See docs/protocol.md.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from audio.input import CONTAINERS, MAX_RATE, MIN_RATE
from audio.vad import VadConfig
from engine.streaming import StreamOptions
from rtserve.connection import Connection
from rtserve.server import UnknownModel
from rtserve.session import (
    VAD_FIELDS,
    InputFormat,
    Lag,
    Overload,
    SessionError,
    SessionEvent,
    Settings,
    TranscriptDone,
    TranscriptFailed,
    TranscriptionSession,
    TranscriptUpdate,
    vad_config,
)

MODES = ("online", "offline", "2pass")
ONLINE_LABEL = {"online": "online", "2pass": "2pass-online"}
OFFLINE_LABEL = {"offline": "offline", "2pass": "2pass-offline"}
FINAL_LABEL = {"online": "online", "offline": "offline", "2pass": "2pass-offline"}
# errors after which the server closes the connection
CLOSING_ERRORS = frozenset({"invalid_api_key", "server_busy", "session_expired"})
# leading bytes of the containers a FunASR client may send with another `wav_format`
MAGIC = ((b"RIFF", "wav"), (b"fLaC", "flac"), (b"OggS", "ogg"), (b"\x1a\x45\xdf\xa3", "webm"))
SNIFF_BYTES = 4


@dataclass(frozen=True)
class FunasrConfig:
    """The client's configuration, as its JSON messages have set it so far."""

    mode: str = "2pass"  # FunASR servers' default
    wav_name: str = "microphone"
    wav_format: str = "pcm"  # "pcm" (PCM16 at audio_fs), a container, or anything else: sniffed
    audio_fs: int = 16_000
    chunk_size: tuple[int, int, int] = (5, 10, 5)  # accepted; the model keeps its own cadence
    chunk_interval: int = 10  # client-side pacing
    hotwords: tuple[str, ...] = ()
    itn: bool = True
    language: str | None = None  # `svs_lang`; None = the model detects
    vad: VadConfig | None = VadConfig()  # extension; None = segments end at is_speaking: false
    lag_reports: bool = False  # extension


# ---- parsing the client's JSON ----


def invalid(param: str, message: str) -> SessionError:
    return SessionError("invalid_value", message, param)


def parse_json_object(text: str) -> dict:
    try:
        msg = json.loads(text)
    except ValueError as e:
        raise SessionError("invalid_json", f"the message is not valid JSON: {e}") from None
    if not isinstance(msg, dict):
        raise SessionError("invalid_message", "a text message is a JSON object")
    return msg


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_mode(v: Any) -> str:
    if v not in MODES:
        raise invalid("mode", f"mode {v!r}: use online, offline or 2pass")
    return v


def parse_str(key: str):
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise invalid(key, f"{key} must be a string")
        return v

    return parse


def parse_wav_format(v: Any) -> str:
    return parse_str("wav_format")(v).lower()


def parse_audio_fs(v: Any) -> int:
    if not is_int(v) or not MIN_RATE <= v <= MAX_RATE:
        raise invalid("audio_fs", f"audio_fs must be a whole number from {MIN_RATE} to {MAX_RATE}")
    return v


def parse_chunk_size(v: Any) -> tuple[int, int, int]:
    """`[5, 10, 5]` (or `"5,10,5"`): look-back, chunk and look-ahead, in 60 ms units."""
    if isinstance(v, str):
        try:
            v = [int(x) for x in v.split(",")]
        except ValueError:
            v = None
    ok = (
        isinstance(v, list | tuple)
        and len(v) == 3
        and all(is_int(x) and 0 <= x <= 1000 for x in v)
        and v[1] > 0
    )
    if not ok:
        raise invalid(
            "chunk_size",
            "chunk_size is three whole numbers of 60 ms, the middle one above 0, "
            "such as [5, 10, 5]",
        )
    return tuple(v)


def parse_chunk_interval(v: Any) -> int:
    if not is_int(v) or v <= 0:
        raise invalid("chunk_interval", "chunk_interval must be a whole number above 0")
    return v


def parse_hotwords(v: Any) -> tuple[str, ...]:
    """FunASR sends `"{\"word\": weight, ...}"`; its servers also take space-separated words."""
    if isinstance(v, str):
        try:
            parsed = json.loads(v) if v.strip() else {}
        except ValueError:
            return tuple(v.split())
        v = parsed if isinstance(parsed, dict) else v.split()
    if isinstance(v, dict):
        return tuple(str(k) for k in v)
    if isinstance(v, list) and all(isinstance(w, str) for w in v):
        return tuple(v)
    raise invalid("hotwords", 'hotwords is a JSON string such as "{\\"word\\": 20}", or ""')


def parse_flag(key: str):
    def parse(v: Any) -> bool:
        if v not in (True, False, 0, 1):
            raise invalid(key, f"{key} must be true or false")
        return bool(v)

    return parse


def parse_language(v: Any) -> str | None:
    lang = parse_str("svs_lang")(v)
    return None if lang in ("", "auto") else lang


def parse_vad(v: Any) -> VadConfig | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - VAD_FIELDS.keys():
        raise invalid(
            "vad", "vad is null or an object of threshold, prefix_padding_ms, silence_duration_ms"
        )
    return vad_config(v, "vad")


# message key -> (config field, parser)
FIELDS = {
    "mode": ("mode", parse_mode),
    "wav_name": ("wav_name", parse_str("wav_name")),
    "wav_format": ("wav_format", parse_wav_format),
    "audio_fs": ("audio_fs", parse_audio_fs),
    "chunk_size": ("chunk_size", parse_chunk_size),
    "chunk_interval": ("chunk_interval", parse_chunk_interval),
    "hotwords": ("hotwords", parse_hotwords),
    "itn": ("itn", parse_flag("itn")),
    "svs_lang": ("language", parse_language),
    "vad": ("vad", parse_vad),
    "lag_reports": ("lag_reports", parse_flag("lag_reports")),
}


def parse_config(msg: dict, base: FunasrConfig) -> FunasrConfig:
    """`base` with the fields `msg` carries; all of them are checked before any applies."""
    if "is_speaking" in msg and not isinstance(msg["is_speaking"], bool):
        raise invalid("is_speaking", "is_speaking must be true or false")
    changes = {field: parse(msg[key]) for key, (field, parse) in FIELDS.items() if key in msg}
    return replace(base, **changes)


def sniff(head: bytes) -> str | None:
    """The container a file's first bytes announce (for `wav_format` "others", "mp3", ...)."""
    for magic, container in MAGIC:
        if head.startswith(magic):
            return container
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def joins_with_space(before: str, after: str) -> bool:
    """Whether two segments' texts need a space between them (not in CJK, not before `.,?`)."""
    if not before or not after or before.isspace() or after.isspace():
        return False
    wide = any(unicodedata.east_asian_width(c) in ("W", "F") for c in (before, after))
    return not wide and unicodedata.category(after) not in ("Po", "Pe", "Pf")


def hotwords_warning(model: str, hotwords: tuple[str, ...]) -> dict:
    shown = ", ".join(hotwords[:10]) + (", ..." if len(hotwords) > 10 else "")
    return {
        "code": "hotwords_ignored",
        "message": f"the model {model} does not use hotwords; these were ignored: {shown}",
    }


# ---- the connection ----


class FunasrConnection(Connection):
    protocol = "funasr"
    subprotocols = ("binary",)  # what funasr_wss_client.py offers

    def __init__(self, websocket, server) -> None:
        super().__init__(websocket, server)
        self.model: Any = None
        self.config: FunasrConfig | None = None  # None until the first valid JSON message
        self._warning: dict | None = None  # for the next result
        self._unconfigured_audio = False  # audio came before any config: dropped till one comes
        self._ending = False  # finishing an utterance: results are held one deep
        self._held: dict | None = None
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self.session = None
        self._broken = False  # its audio could not be decoded: the rest is dropped
        self._head = b""  # first bytes of a container whose format is sniffed
        self._seps: dict[int, str] = {}  # segment -> the separator its text got
        self._online: dict[int, str] = {}  # segment -> the online text sent so far
        self._tail = ""  # the last character of text sent in this utterance

    # ---- wire format ----

    def encode(self, event: dict) -> str:
        return json.dumps({k: v for k, v in event.items() if k != "type"}, ensure_ascii=False)

    def result(self, mode: str, text: str, **extra: Any) -> dict:
        """A FunASR result; `type` is internal (metrics), left out on the wire."""
        msg = {
            "type": mode,
            "mode": mode,
            "wav_name": self._config.wav_name,
            "text": text,
            "is_final": False,
            **extra,
        }
        if self._warning is not None:
            msg["warning"], self._warning = self._warning, None
        return msg

    def error_event(self, code: str, message: str, **extra: Any) -> dict:
        """A result-shaped error. `is_final` is true when nothing more will come for what the
        client sent: no valid config yet, or the server closes the connection."""
        error = {"code": code, "message": message}
        param = extra.pop("param", None)
        if param is not None:
            error["param"] = param
        return {
            "type": "error",
            "mode": self._config.mode,
            "wav_name": self._config.wav_name,
            "text": "",
            "is_final": self.config is None or code in CLOSING_ERRORS,
            "error": error | extra,
        }

    def lag_event(self, lag: Lag) -> dict:
        return {
            "type": "lag",
            "mode": self._config.mode,
            "wav_name": self._config.wav_name,
            "text": "",
            "is_final": False,
            "lag": {
                "buffered_ms": lag.buffered_ms,
                "lag_ms": lag.lag_ms,
                "dropped_ms": lag.dropped_ms,
            },
        }

    @property
    def _config(self) -> FunasrConfig:
        return self.config or FunasrConfig()

    def send(self, event: dict) -> None:
        """Lag only when asked for; while an utterance finishes, the newest result waits so
        that the last one can carry `is_final: true`."""
        kind = event["type"]
        if kind == "lag":
            if self._config.lag_reports:
                super().send(event)
            return
        if self._ending and kind != "error":
            event, self._held = self._held, event
            if event is None:
                return
        elif self._held is not None:  # an error: what came before it goes first
            super().send(self._held)
            self._held = None
        super().send(event)

    # ---- client messages ----

    async def on_open(self) -> None:
        try:
            self.model = self.server.asr_model(self.ws.query_params.get("model"))
        except UnknownModel as e:
            self.error("model_not_found", str(e), param="model")
            self.end()

    async def on_message(self, text: str | None, data: bytes | None) -> None:
        if self.model is None:
            return  # no model: the connection is closing
        if data is not None:
            await self.on_audio(data)
            return
        msg = parse_json_object(text)
        self.configure(msg)
        if msg.get("is_speaking") is False:
            await self.end_utterance()

    def configure(self, msg: dict) -> None:
        old = self._config
        new = parse_config(msg, old)
        if new.language != old.language:
            try:
                self.model.validate(StreamOptions(new.language))
            except ValueError as e:
                raise invalid("svs_lang", str(e)) from None
        if self.session is not None and (
            new.vad != old.vad or self.options(new) != self.options(old)
        ):
            settings = self.session.settings
            self.session.update(replace(settings, vad=new.vad, options=self.options(new)))
        if "hotwords" in msg and new.hotwords and not getattr(self.model, "hotwords", False):
            self._warning = hotwords_warning(self.model.name, new.hotwords)
        self.config = new
        self._unconfigured_audio = False

    def options(self, config: FunasrConfig) -> StreamOptions:
        """The stream options of a config: hotwords become the prompt of a model that reads
        them (its `hotwords` attribute), as a comma-separated list."""
        hotwords = getattr(self.model, "hotwords", False) and ", ".join(config.hotwords)
        return StreamOptions(config.language, hotwords or None, config.itn)

    async def on_audio(self, data: bytes) -> None:
        if self._broken or self._unconfigured_audio:
            return  # the error has been sent
        if self.config is None:
            self._unconfigured_audio = True
            raise SessionError(
                "not_started",
                "send the JSON configuration message before audio; audio is dropped until then",
            )
        if self.session is None:
            codec = self._codec(data)
            if codec is None:
                return  # not enough bytes yet to tell the container
            data, self._head = self._head + data if self._head else data, b""
            self._open(codec)
        try:
            await self.session.append(data)
        except SessionError as e:
            if e.code == "invalid_audio" and self.session.settings.input.codec != "pcm16":
                self._broken = True  # a broken container stays broken
                e.message += "; the rest of this utterance's audio is dropped"
            raise

    def _codec(self, data: bytes) -> str | None:
        """The utterance's audio format: as configured, or told from the first bytes (held
        in `_head` until there are enough)."""
        fmt = self.config.wav_format
        if fmt == "pcm":
            return "pcm16"
        if fmt in CONTAINERS:
            return fmt
        if len(self._head) + len(data) < SNIFF_BYTES:
            self._head += data
            return None
        codec = sniff(self._head + data)
        if codec is None:
            self._head, self._broken = b"", True
            raise SessionError(
                "invalid_audio",
                f"wav_format {fmt!r}: the audio is none of {', '.join(CONTAINERS)} "
                "(MP4/AAC cannot be streamed); send PCM16 with wav_format pcm",
            )
        return codec

    def _open(self, codec: str) -> None:
        """Start an utterance: a session for its audio format and the config as it stands."""
        settings = Settings(
            model=self.model,
            input=InputFormat(codec, self.config.audio_fs if codec == "pcm16" else None),
            vad=self.config.vad,
            options=self.options(self.config),
        )
        limits, metrics = self.server.config.limits, self.server.metrics
        self.session = TranscriptionSession(settings, limits, metrics, self.on_session_event)

    async def end_utterance(self) -> None:
        """`is_speaking: false`: finish the utterance; its last result says `is_final: true`."""
        self._ending = True
        try:
            if self.session is not None and not self._broken:
                try:
                    await self.session.finish()
                except SessionError as e:
                    self.error(e.code, e.message)
        finally:
            self._ending = False
            final, self._held = self._held, None
            if self.session is not None:
                self.session.close()
            self._reset_utterance()
        final = final or self.result(FINAL_LABEL[self._config.mode], "")
        final["is_final"] = True
        super().send(final)

    # ---- session events -> results ----

    def on_session_event(self, ev: SessionEvent) -> None:
        mode = self._config.mode
        match ev:
            case TranscriptUpdate() if mode in ONLINE_LABEL:
                self._online_piece(ev, mode)
            case TranscriptDone():
                if ev.text and mode in OFFLINE_LABEL:
                    # word times in ms, as FunASR's timestamp models give them (models with
                    # `word_timestamps`; empty otherwise)
                    stamps = [[round(w.start * 1000), round(w.end * 1000)] for w in ev.words or ()]
                    sentence = {
                        "text_seg": ev.text,
                        "punc": "",
                        "start": ev.start_ms,
                        "end": ev.end_ms,
                        "ts_list": stamps,
                    }
                    extra: dict[str, Any] = {"stamp_sents": [sentence]}
                    if stamps:
                        extra["timestamp"] = json.dumps(stamps)
                    text = self._separator(ev.segment, ev.text[0]) + ev.text
                    self._tail = ev.text[-1]
                    self.send(self.result(OFFLINE_LABEL[mode], text, **extra))
                self._seps.pop(ev.segment, None)
                self._online.pop(ev.segment, None)
            case TranscriptFailed():
                self._seps.pop(ev.segment, None)
                self._online.pop(ev.segment, None)
                self.error("transcription_failed", ev.message)
            case Overload():
                self.error("audio_dropped", ev.message)

    def _online_piece(self, ev: TranscriptUpdate, mode: str) -> None:
        """FunASR's online text never changes once sent: send what the segment's text gained.
        That is the newly stable text; for a two-pass model, the first pass's text, which is
        all unstable. Its stable text is the second pass's, which arrives as the offline result
        (and may come while the first pass has sent little or nothing: it is no online piece)."""
        live = ev.unstable if getattr(self.model, "two_pass", False) else ev.stable
        sent = self._online.get(ev.segment, "")
        if not live.startswith(sent) or len(live) == len(sent):
            return
        piece = live[len(sent) :]
        self._online[ev.segment] = live
        sep = self._separator(ev.segment, piece[0]) if not sent else ""
        self._tail = piece[-1]
        self.send(self.result(ONLINE_LABEL[mode], sep + piece))

    def _separator(self, segment: int, first: str) -> str:
        """What goes before a segment's text: a space when it follows another segment's text in
        a language written with spaces. Decided by the segment's first text, then kept."""
        if segment not in self._seps:
            self._seps[segment] = " " if joins_with_space(self._tail, first) else ""
        return self._seps[segment]
