"""Two-pass recognition: a streaming model's live text, then an offline model's text per segment.

`TwoPassModel(online, offline)` is a served speech model like any other (its name is
`online+offline`). Every stream feeds both models the same audio and the same segment ends. The
online model's running text is shown as the unstable tail of each update; the offline model's
result at the segment's end is its final text. So only the second pass ever becomes stable: the
transcript contract holds however much the two passes disagree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from engine.streaming import (
    AsrModel,
    Final,
    Partial,
    SegmentFailed,
    StreamHandle,
    StreamOptions,
    TranscriptEvent,
)


@dataclass
class TwoPassModel:
    online: AsrModel
    offline: AsrModel
    kind: str = field(default="asr", init=False)
    two_pass: bool = field(default=True, init=False)  # its live text is an unstable first pass

    @property
    def name(self) -> str:
        return f"{self.online.name}+{self.offline.name}"

    def validate(self, options: StreamOptions) -> None:
        self.online.validate(options)
        self.offline.validate(options)

    def open_stream(self, options: StreamOptions) -> TwoPassHandle:
        return TwoPassHandle(self.online.open_stream(options), self.offline.open_stream(options))


class TwoPassHandle:
    def __init__(self, online: StreamHandle, offline: StreamHandle) -> None:
        self.online, self.offline = online, offline
        self._events: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()
        self._revisions: dict[int, int] = {}
        self._ended = -1  # the last segment the second pass has finished
        self._tasks = [
            asyncio.create_task(self._read(online, self._first_pass)),
            asyncio.create_task(self._read(offline, self._second_pass)),
        ]
        self._open = 2

    # ---- StreamHandle: everything goes to both passes ----

    def feed(self, samples: np.ndarray) -> None:
        self.online.feed(samples)
        self.offline.feed(samples)

    def commit(self) -> None:
        self.online.commit()
        self.offline.commit()

    def clear(self) -> None:
        self.online.clear()
        self.offline.clear()

    def finish(self) -> None:
        self.online.finish()
        self.offline.finish()

    def cancel(self) -> None:
        self.online.cancel()
        self.offline.cancel()
        for t in self._tasks:
            t.cancel()
        self._events.put_nowait(None)

    @property
    def consumed_samples(self) -> int:
        return min(self.online.consumed_samples, self.offline.consumed_samples)

    def __aiter__(self):
        return self

    async def __anext__(self) -> TranscriptEvent:
        event = await self._events.get()
        if event is None:
            raise StopAsyncIteration
        return event

    # ---- merging ----

    async def _read(self, handle: StreamHandle, on_event) -> None:
        try:
            async for ev in handle:
                on_event(ev)
        except Exception:  # one pass failing ends the stream: its open segments fail
            self.cancel()
        finally:
            self._open -= 1
            if self._open == 0:
                self._events.put_nowait(None)

    def _first_pass(self, ev: TranscriptEvent) -> None:
        """Online text, stable or not in the first pass, is the unstable tail here."""
        if isinstance(ev, Partial):
            text = ev.stable + ev.unstable
        elif isinstance(ev, Final):
            text = ev.text
        else:
            return  # the second pass still owns the segment's outcome
        if not text or ev.segment <= self._ended:
            return  # empty, or too late: the second pass has the last word
        rev = self._revisions[ev.segment] = self._revisions.get(ev.segment, 0) + 1
        end = ev.end_sample if isinstance(ev, Partial) else self.online.consumed_samples
        self._events.put_nowait(Partial(ev.segment, "", text, rev, end))

    def _second_pass(self, ev: TranscriptEvent) -> None:
        if isinstance(ev, Final | SegmentFailed):
            self._revisions.pop(ev.segment, None)
            self._ended = max(self._ended, ev.segment)
            self._events.put_nowait(ev)
