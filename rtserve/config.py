"""Server settings: every knob of `rtserve serve`, with its default, in one place.

Each limit is named here, documented in README.md ("Limits") and set by a flag of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.rollback import RollbackConfig

PerformanceMode = Literal["interactivity", "balanced", "throughput"]


@dataclass(frozen=True)
class Limits:
    # Concurrent WebSocket sessions; one more gets an error with retry_after and close code 1013.
    max_sessions: int = 64
    # Largest WebSocket message accepted; a larger one closes the connection with code 1009.
    max_frame_bytes: int = 1 << 20
    # Audio received but not yet heard by the model; audio past it is dropped with an error.
    max_buffered_seconds: float = 30.0
    # Wall-clock length of a session; then an error `session_expired` and close code 1001.
    max_session_seconds: float = 4 * 3600.0
    # A segment (turn) this long is committed by the server, as if the speaker had paused.
    max_segment_seconds: float = 30.0
    # How far the model may trail the live edge; past it new audio is dropped until it catches up.
    max_lag_ms: int = 10_000


# Limits with no flag, named so that docs and tests can refer to them.
MAX_UPLOAD_BYTES = 64 << 20  # a file sent to /v1/audio/transcriptions
OUTBOX_EVENTS = 512  # server events queued for a client that does not read; then it is dropped
LAG_INTERVAL_S = 1.0  # cadence of `rtserve.lag` / `lag` events
RETRY_AFTER_S = 5  # advice sent with a refusal at max_sessions


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = ()  # `PATH`, hub id, or `NAME=PATH`; empty = the embedded default
    api_key: str | None = None
    performance_mode: PerformanceMode = "balanced"
    limits: Limits = field(default_factory=Limits)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)  # Qwen3-ASR streaming
    attention_backend: str | None = None  # None: the best available (kernels/attention.py)
    cuda_graphs: bool = True  # decode steps replayed from CUDA graphs (on CUDA devices)
    encoder_graphs: bool = True  # and the speech encoder's calls (engine/encoder_graphs.py)
    prompt_graphs: bool = True  # and steps with short prompt rows (engine/prompt_graphs.py)
    # WebSocket permessage-deflate, which browsers and the websockets client offer. Off: audio
    # does not compress, and inflating every frame took 38% of the event loop's busy time at
    # 300 streams (docs/benchmarks.md, the wire's CPU).
    ws_per_message_deflate: bool = False

    def uvicorn_options(self) -> dict[str, object]:
        """What `uvicorn.run` takes from this config (the app and log level aside)."""
        return {
            "host": self.host,
            "port": self.port,
            "ws_max_size": self.limits.max_frame_bytes,
            "ws_per_message_deflate": self.ws_per_message_deflate,
        }
