"""The state one server process shares across connections: settings, models, metrics, admission."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.two_pass import TwoPassModel
from rtserve.config import ServerConfig
from rtserve.metrics import Metrics

# OpenAI transcription model names that clients send by default; they mean "the default ASR model".
OPENAI_ASR_ALIASES = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-diarize",
        "gpt-realtime-whisper",
        "gpt-transcribe",
        "gpt-live-transcribe",
    }
)


class Admission:
    """Counts sessions against --max-sessions."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.active = 0

    def acquire(self) -> bool:
        if self.active >= self.max_sessions:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


class UnknownModel(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"The model `{name}` does not exist. Served models: {', '.join(known)}")
        self.name = name


@dataclass
class Server:
    config: ServerConfig
    models: dict[str, Any]  # served name -> model (each has `name` and `kind`)
    metrics: Metrics = field(default_factory=Metrics)
    admission: Admission = field(init=False)
    _two_pass: dict[tuple[str, str], Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.config.limits.max_sessions)

    def chat_model(self, name: str) -> Any:
        model = self.models.get(name)
        if model is None or model.kind != "chat":
            raise UnknownModel(name, [m.name for m in self.models.values() if m.kind == "chat"])
        return model

    def asr_model(self, name: str | None = None) -> Any:
        """An ASR model by name; None or an OpenAI transcription name means the first one served;
        `ONLINE+OFFLINE` is two-pass recognition over two served models."""
        if name and "+" in name:
            online, _, offline = name.partition("+")
            key = (online, offline)
            if key not in self._two_pass:
                self._two_pass[key] = TwoPassModel(self.asr_model(online), self.asr_model(offline))
            return self._two_pass[key]
        asr = [m for m in self.models.values() if m.kind == "asr"]
        if name is None or (name in OPENAI_ASR_ALIASES and name not in self.models):
            if not asr:
                raise UnknownModel(name or "(default)", [m.name for m in asr])
            return asr[0]
        model = self.models.get(name)
        if model is None or model.kind != "asr":
            raise UnknownModel(name, [m.name for m in asr])
        return model
