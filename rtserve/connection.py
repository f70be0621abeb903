"""What every WebSocket protocol shares: handshake, auth, admission, the outbox, timers, teardown.

A protocol subclasses `Connection` and says how to encode an event, what an error looks like and
what to do with each incoming message. This class guarantees the rest: a client that never reads
fills only its own bounded outbox and is then dropped; a session past its time limit ends with an
error; whatever happens, the session's model work is cancelled when the socket goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from rtserve.auth import key_matches, presented_keys
from rtserve.config import LAG_INTERVAL_S, OUTBOX_EVENTS, RETRY_AFTER_S
from rtserve.server import Server
from rtserve.session import (
    Lag,
    SessionError,
    TranscriptionSession,
)

log = logging.getLogger(__name__)

# WebSocket close codes
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # session time limit reached
CLOSE_POLICY = 1008  # bad key; client not reading
CLOSE_TRY_AGAIN = 1013  # server full


class Connection(ABC):
    protocol: str  # metrics label
    subprotocols: tuple[str, ...] = ()  # offered by clients; the first one offered is chosen

    def __init__(self, websocket: WebSocket, server: Server) -> None:
        self.ws = websocket
        self.server = server
        self.session: TranscriptionSession | None = None
        self._outbox: asyncio.Queue[Any] = asyncio.Queue(OUTBOX_EVENTS)
        self._stop = asyncio.Event()
        self._close_code = CLOSE_NORMAL
        self._close_reason = ""
        self.started = time.monotonic()

    # ---- for protocols ----

    @abstractmethod
    def encode(self, event: dict) -> str | bytes: ...

    @abstractmethod
    def error_event(self, code: str, message: str, **extra: Any) -> dict: ...

    @abstractmethod
    def lag_event(self, lag: Lag) -> dict: ...

    @abstractmethod
    async def on_open(self) -> None: ...

    @abstractmethod
    async def on_message(self, text: str | None, data: bytes | None) -> None: ...

    def on_close(self) -> None:
        """The socket is gone: stop this connection's work."""
        if self.session is not None:
            self.session.close()

    def send(self, event: dict) -> None:
        """Queue an event for the client; a client that lets the outbox fill is dropped."""
        if self._stop.is_set():
            return
        self.server.metrics.events.labels(event["type"]).inc()
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("%s client stopped reading; dropping it", self.protocol)
            self.server.metrics.sessions_dropped.labels("not_reading").inc()
            self.end(CLOSE_POLICY, "client is not reading its events")

    def error(self, code: str, message: str, **extra: Any) -> None:
        self.server.metrics.errors.labels(code).inc()
        self.send(self.error_event(code, message, **extra))

    def end(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the connection once the queued events are out (or at once if it is stuck)."""
        if not self._stop.is_set():
            self._close_code, self._close_reason = code, reason
            self._stop.set()

    # ---- lifecycle ----

    async def serve(self) -> None:
        offered = self.ws.scope.get("subprotocols", [])
        chosen = next((p for p in self.subprotocols if p in offered), None)
        await self.ws.accept(subprotocol=chosen)
        keys = presented_keys(self.ws.headers, offered)
        if not key_matches(self.server.config.api_key, keys):
            self.server.metrics.sessions_refused.labels("auth").inc()
            await self._refuse("invalid_api_key", "Incorrect or missing API key.", CLOSE_POLICY)
            return
        if not self.server.admission.acquire():
            self.server.metrics.sessions_refused.labels("busy").inc()
            await self._refuse(
                "server_busy",
                f"The server is at its session limit ({self.server.config.limits.max_sessions}); "
                f"try again in {RETRY_AFTER_S} s.",
                CLOSE_TRY_AGAIN,
                retry_after=RETRY_AFTER_S,
            )
            return
        self.server.metrics.sessions.labels(self.protocol).inc()
        active = self.server.metrics.sessions_active.labels(self.protocol)
        active.inc()
        try:
            await self._run()
        finally:
            active.dec()
            self.server.admission.release()
            self.on_close()

    async def _refuse(self, code: str, message: str, close: int, **extra: Any) -> None:
        self.server.metrics.errors.labels(code).inc()
        with contextlib.suppress(Exception):
            await self.ws.send(self._frame(self.error_event(code, message, **extra)))
            await self.ws.close(close, message[:120])

    async def _run(self) -> None:
        tasks = [
            asyncio.create_task(self._receive_loop()),
            asyncio.create_task(self._send_loop()),
            asyncio.create_task(self._tick()),
        ]
        stop = asyncio.create_task(self._stop.wait())
        try:
            await self.on_open()
            await asyncio.wait([stop, tasks[0], tasks[1]], return_when=asyncio.FIRST_COMPLETED)
            if self._stop.is_set() and self._close_code != CLOSE_POLICY:
                await self._drain()
        finally:
            for t in [*tasks, stop]:
                t.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(self._close_code, self._close_reason), 2.0)

    async def _drain(self) -> None:
        """Let the queued events out before closing, within a short grace period."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox.join(), 2.0)

    async def _receive_loop(self) -> None:
        max_bytes = self.server.config.limits.max_frame_bytes
        while True:
            try:
                msg = await self.ws.receive()
            except WebSocketDisconnect:
                return
            if msg["type"] == "websocket.disconnect":
                return
            text, data = msg.get("text"), msg.get("bytes")
            if len(text or data or b"") > max_bytes:  # transports without their own cap
                self.error("frame_too_large", f"frames are limited to {max_bytes} bytes")
                continue
            try:
                await self.on_message(text, data)
            except SessionError as e:
                self.error(e.code, e.message, param=e.param)
            except Exception as e:
                log.exception("%s: error handling a client message", self.protocol)
                self.error("server_error", f"the server failed to handle that message: {e}")

    async def _send_loop(self) -> None:
        while True:
            event = await self._outbox.get()
            try:
                await self.ws.send(self._frame(event))
            except Exception:  # the client went away
                self._stop.set()
                return
            finally:
                self._outbox.task_done()

    async def _tick(self) -> None:
        """Lag reports, and the session time limit."""
        limit = self.server.config.limits.max_session_seconds
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            if time.monotonic() - self.started > limit:
                self.error(
                    "session_expired",
                    f"Your session hit the maximum duration of {limit:g} seconds.",
                )
                self.server.metrics.sessions_dropped.labels("expired").inc()
                self.end(CLOSE_GOING_AWAY, "session expired")
                return
            if self.session is not None:
                self.send(self.lag_event(self.session.lag()))

    def _frame(self, event: dict) -> dict:
        payload = self.encode(event)
        key = "text" if isinstance(payload, str) else "bytes"
        return {"type": "websocket.send", key: payload}
