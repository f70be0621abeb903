"""The engine for an asyncio server: its step loop runs in its own thread, never on the event loop.

`generate()` is an async iterator of a request's outputs. Leaving it early (the client went away,
the task was cancelled) aborts the request, which frees its KV blocks before the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Sequence

from engine.engine import Engine, Output, RequestError
from engine.request import DEFAULT, InjectedEmbeds
from engine.sampling import SamplingParams

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._adds: list[tuple] = []
        self._aborts: list[str] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    async def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = DEFAULT,
        embeds: Sequence[InjectedEmbeds] = (),
    ) -> AsyncIterator[Output]:
        rid = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        with self._wake:
            self._streams[rid] = (asyncio.get_running_loop(), queue)
            self._adds.append((rid, list(prompt_ids), params, priority, list(embeds)))
            self._wake.notify()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._wake:
                self._streams.pop(rid, None)
                if not finished:
                    self._aborts.append(rid)
                    self._wake.notify()

    def shutdown(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # ---- the engine thread ----

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stop or self._adds or self._aborts or self.engine.has_work()):
                    self._wake.wait()
                if self._stop:
                    return
                adds, self._adds = self._adds, []
                aborts, self._aborts = self._aborts, []
            for rid in aborts:
                self.engine.abort(rid)
            for rid, prompt, params, priority, embeds in adds:
                try:
                    self.engine.add(prompt, params, rid, priority, embeds)
                except (RequestError, ValueError) as e:
                    self._deliver(rid, RequestError(str(e)))
            try:
                outputs = self.engine.step() if self.engine.has_work() else []
            except Exception as e:  # the engine stays up; the requests in flight fail
                log.exception("engine step raised")
                for rid in list(self.engine.requests):
                    self.engine.abort(rid)
                    self._deliver(rid, RuntimeError(f"engine error: {e}"))
                continue
            for out in outputs:
                self._deliver(out.request_id, out)

    def _deliver(self, rid: str, item: Output | Exception) -> None:
        with self._lock:
            target = self._streams.get(rid)
        if target is None:
            return
        loop, queue = target
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(queue.put_nowait, item)
