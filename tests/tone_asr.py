"""A deterministic transcriber for protocol tests: it hears tones, not speech.

Audio is cut into 100 ms blocks per segment; a block whose dominant frequency is
400 + 100*k Hz (k = 0..25) spells the letter chr(ord('a') + k), a quiet block is a space. So
`tone_audio("hi there")` is heard as "hi there". The last word is unstable until a space or the
commit confirms it, as a real streaming model's tail is. It lives in tests/ only: the server never
runs a fake transcriber.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np

from engine.streaming import Final, Partial, SegmentFailed, StreamOptions, TranscriptEvent

RATE = 16_000
BLOCK = RATE // 10
BASE_HZ, STEP_HZ = 400, 100
QUIET_RMS = 0.01


def tone_audio(text: str, rate: int = RATE, amplitude: float = 0.3) -> np.ndarray:
    """The signal the tone transcriber hears as `text` (letters a-z and spaces)."""
    n = rate // 10
    t = np.arange(n) / rate
    blocks = []
    for ch in text:
        if ch == " ":
            blocks.append(np.zeros(n))
        else:
            f = BASE_HZ + STEP_HZ * (ord(ch) - ord("a"))
            blocks.append(amplitude * np.sin(2 * np.pi * f * t))
    return np.concatenate(blocks).astype(np.float32)


def hear_block(x: np.ndarray) -> str:
    if x.size == 0 or np.sqrt(np.mean(x**2)) < QUIET_RMS:
        return " "
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), n=RATE))  # 1 Hz bins
    k = round((int(np.argmax(spectrum)) - BASE_HZ) / STEP_HZ)
    return chr(ord("a") + min(max(k, 0), 25))


@dataclass
class ToneAsr:
    """The model: `delay` seconds of "compute" per block; `fail_after` blocks, then an error."""

    name: str = "tone-asr"
    delay: float = 0.0
    fail_after: int | None = None
    rewrite_stable: bool = False  # break the transcript contract, to test its enforcement
    kind: str = "asr"

    def validate(self, options: StreamOptions) -> None:
        if options.language == "xx":
            raise ValueError("language 'xx' is not supported by this model")

    def open_stream(self, options: StreamOptions) -> ToneStream:
        return ToneStream(self, options)


class ToneStream:
    def __init__(self, model: ToneAsr, options: StreamOptions) -> None:
        self.model = model
        self.options = options
        self._commands: deque[tuple] = deque()
        self._wake = asyncio.Event()
        self._events: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()
        self._consumed = 0
        self._blocks = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    # ---- StreamHandle ----

    def feed(self, samples: np.ndarray) -> None:
        self._command("audio", samples)

    def commit(self) -> None:
        self._command("commit")

    def clear(self) -> None:
        self._command("clear")

    def finish(self) -> None:
        self._command("finish")

    def cancel(self) -> None:
        self._task.cancel()
        self._events.put_nowait(None)

    @property
    def consumed_samples(self) -> int:
        return self._consumed

    def __aiter__(self):
        return self

    async def __anext__(self) -> TranscriptEvent:
        ev = await self._events.get()
        if ev is None:
            raise StopAsyncIteration
        return ev

    # ---- the "model" ----

    def _command(self, *cmd) -> None:
        self._commands.append(cmd)
        self._wake.set()

    async def _run(self) -> None:
        segment, text, pending = 0, "", np.zeros(0, dtype=np.float32)
        revision = 0
        while True:
            if not self._commands:
                self._wake.clear()
                await self._wake.wait()
                continue
            cmd = self._commands.popleft()
            if cmd[0] == "audio":
                pending = np.concatenate([pending, cmd[1]])
                while pending.size >= BLOCK:
                    text += await self._hear(pending[:BLOCK])
                    pending = pending[BLOCK:]
                    if self._failed():
                        self._events.put_nowait(SegmentFailed(segment, "tone model failure"))
                        self._events.put_nowait(None)
                        return
                    revision += 1
                    self._events.put_nowait(self._partial(segment, text, revision))
            elif cmd[0] == "commit":
                if pending.size:
                    text += await self._hear(pending)
                    pending = pending[:0]
                language = self.options.language or "en"
                self._events.put_nowait(Final(segment, " ".join(text.split()), language))
                segment, text, revision = segment + 1, "", 0
            elif cmd[0] == "clear":
                self._consumed += pending.size
                segment, text, revision, pending = segment + 1, "", 0, pending[:0]
            elif cmd[0] == "finish":
                self._events.put_nowait(None)
                return

    async def _hear(self, x: np.ndarray) -> str:
        if self.model.delay:
            await asyncio.sleep(self.model.delay)
        self._blocks += 1
        self._consumed += x.size
        return hear_block(x)

    def _failed(self) -> bool:
        return self.model.fail_after is not None and self._blocks >= self.model.fail_after

    def _partial(self, segment: int, text: str, revision: int) -> Partial:
        words = text.split(" ")
        stable, unstable = " ".join(words[:-1]), words[-1]
        stable = " ".join(stable.split())
        if stable and unstable:
            stable += " "
        if self.model.rewrite_stable and stable:
            stable = stable.upper()
        return Partial(segment, stable, unstable, revision, self._consumed)
