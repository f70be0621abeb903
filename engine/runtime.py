"""The runtime: one thread that drives every model's work on a device, off the event loop.

Each served model contributes a worker (chat requests, ASR streams). Every turn the thread takes
the work other threads queued, then steps each worker that has work, interactive ones (speech)
first, so a speech stream waits at most one chat step. A worker that raises fails its own work
only; the thread goes on.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class Worker(Protocol):
    interactive: bool  # its work is latency-bound (stepped first)

    def take_inbox(self) -> None:
        """Apply what other threads queued (new requests, audio, cancellations)."""

    def has_work(self) -> bool: ...

    def step(self) -> None:
        """One step of work; delivers its own results."""

    def fail(self, error: Exception) -> None:
        """`step` raised: fail the work in flight, keep the worker usable."""


class Runtime:
    def __init__(self, name: str = "engine") -> None:
        self._cond = threading.Condition()
        self._workers: list[Worker] = []
        self._pending = False  # some thread queued work since the last turn
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def add(self, worker: Worker) -> None:
        with self._cond:
            self._workers.append(worker)
            self._workers.sort(key=lambda w: not w.interactive)
            self._cond.notify()

    def remove(self, worker: Worker) -> None:
        with self._cond:
            if worker in self._workers:
                self._workers.remove(worker)

    def notify(self) -> None:
        """Wake the thread: a worker's inbox has something."""
        with self._cond:
            self._pending = True
            self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._pending or any(w.has_work() for w in self._workers)):
                    self._cond.wait()
                if self._stop:
                    return
                self._pending = False
                workers = list(self._workers)
            for w in workers:
                w.take_inbox()
            for w in workers:
                if not w.has_work():
                    continue
                try:
                    w.step()
                except Exception as e:  # one worker's fault fails its own work only
                    log.exception("worker step raised")
                    w.fail(e)


_shared: Runtime | None = None
_shared_lock = threading.Lock()


def shared_runtime() -> Runtime:
    """The process's runtime: every model loaded for serving steps on this one thread."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Runtime()
        return _shared
