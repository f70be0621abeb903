"""The runtime: one thread that drives every model's work on a device, off the event loop.

Each served model contributes a worker (chat requests, ASR streams). Every turn the thread takes
the work other threads queued, then steps each worker that has work, interactive ones (speech)
first. While an interactive worker has work, the others step only every `interactive_steps`-th
turn (INTERACTIVE_STEPS): a speech request decodes its tokens one step at a time, and each chat
step between two of them adds a chat step's time to its latency. On the H200 (docs/benchmarks.md,
the mixed workload: 64 live streams beside 32 chat requests), with the CUDA graphs that made
speech steps short, 64 streams' p95 partial latency under chat load was 2.0x what it was alone
at two turns per chat step, 1.7x at three and 1.4x at four, for 4,400, 3,600 and 3,300 chat
tokens/s. A worker that raises fails its own work only; the thread goes on.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)

INTERACTIVE_STEPS = 4  # turns per step of the other workers while interactive ones have work


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
    def __init__(self, name: str = "engine", interactive_steps: int = INTERACTIVE_STEPS) -> None:
        self.interactive_steps = interactive_steps
        self._held = 0  # turns in a row the other workers sat out
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
            # once a turn: a speech worker's answer looks at every stream it has open
            busy = [w for w in workers if w.has_work()]
            urgent = any(w.interactive for w in busy)
            hold = urgent and self._held < self.interactive_steps - 1
            self._held = self._held + 1 if hold else 0
            for w in busy:
                if hold and not w.interactive:
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
