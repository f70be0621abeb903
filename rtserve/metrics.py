"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sessions_active = Gauge(
            "rtserve_sessions_active", "Open WebSocket sessions", ["protocol"], registry=r
        )
        self.sessions = Counter(
            "rtserve_sessions", "WebSocket sessions opened", ["protocol"], registry=r
        )
        self.sessions_refused = Counter(
            "rtserve_sessions_refused", "Sessions refused", ["reason"], registry=r
        )
        self.sessions_dropped = Counter(
            "rtserve_sessions_dropped", "Sessions the server ended", ["reason"], registry=r
        )
        self.audio_seconds = Counter(
            "rtserve_audio_seconds", "Seconds of audio received", ["model"], registry=r
        )
        self.audio_dropped_seconds = Counter(
            "rtserve_audio_dropped_seconds", "Seconds of audio dropped by limits", registry=r
        )
        self.events = Counter("rtserve_events", "Server events sent", ["type"], registry=r)
        self.errors = Counter("rtserve_errors", "Error events sent", ["code"], registry=r)
        self.transcript_repairs = Counter(
            "rtserve_transcript_repairs", "Model updates mended to keep stable text", registry=r
        )
        self.partial_latency = Histogram(
            "rtserve_partial_latency_seconds",
            "From the arrival of audio to the partial transcript that first covers it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.final_latency = Histogram(
            "rtserve_final_latency_seconds",
            "From the end of a segment (commit or endpoint) to its final transcript",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
