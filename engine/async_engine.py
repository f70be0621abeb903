"""A text-generation engine for an asyncio server: a worker on the runtime's thread.

`generate()` is an async iterator of a request's outputs. Leaving it early (the client went away,
the task was cancelled) aborts the request, which frees its KV blocks before the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Sequence

from engine.engine import Engine, Output, RequestError
from engine.request import DEFAULT, InjectedEmbeds
from engine.runtime import Runtime
from engine.sampling import SamplingParams


class AsyncEngine:
    interactive = False  # chat; its interactive-priority requests still go first inside it

    def __init__(self, engine: Engine, runtime: Runtime | None = None) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._adds: list[tuple] = []
        self._aborts: list[str] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._owns_runtime = runtime is None
        self.runtime = runtime or Runtime()
        self.runtime.add(self)

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
        with self._lock:
            self._streams[rid] = (asyncio.get_running_loop(), queue)
            self._adds.append((rid, list(prompt_ids), params, priority, list(embeds)))
        self.runtime.notify()
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
            with self._lock:
                self._streams.pop(rid, None)
                if not finished:
                    self._aborts.append(rid)
            if not finished:
                self.runtime.notify()

    def shutdown(self) -> None:
        self.runtime.remove(self)
        if self._owns_runtime:
            self.runtime.shutdown()

    # ---- the worker, on the runtime's thread ----

    def take_inbox(self) -> None:
        with self._lock:
            adds, self._adds = self._adds, []
            aborts, self._aborts = self._aborts, []
        for rid in aborts:
            self.engine.abort(rid)
        for rid, prompt, params, priority, embeds in adds:
            try:
                self.engine.add(prompt, params, rid, priority, embeds)
            except (RequestError, ValueError) as e:
                self._deliver(rid, RequestError(str(e)))

    def has_work(self) -> bool:
        return self.engine.has_work()

    def step(self) -> None:
        for out in self.engine.step():
            self._deliver(out.request_id, out)

    def fail(self, error: Exception) -> None:
        for rid in list(self.engine.requests):
            self.engine.abort(rid)
            self._deliver(rid, RuntimeError(f"engine error: {error}"))

    def _deliver(self, rid: str, item: Output | Exception) -> None:
        with self._lock:
            target = self._streams.get(rid)
        if target is None:
            return
        loop, queue = target
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(queue.put_nowait, item)
