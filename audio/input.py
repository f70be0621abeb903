"""Audio as a client sends it -> 16 kHz mono float32: decode, then resample, chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from audio.decode import (
    AudioFormatError,
    StreamDecoder,
    decode_f32,
    decode_pcm16,
    decode_pcma,
    decode_pcmu,
)
from audio.resample import StreamResampler

TARGET_RATE = 16_000
MIN_RATE, MAX_RATE = 8_000, 48_000

RAW_CODECS: dict[str, Callable[[bytes], np.ndarray]] = {
    "pcm16": decode_pcm16,
    "f32": decode_f32,
    "pcmu": decode_pcmu,
    "pcma": decode_pcma,
}
CONTAINERS = ("wav", "flac", "ogg", "webm", "mp3")
CODECS = (*RAW_CODECS, *CONTAINERS)


class AudioInput:
    """One client's audio stream. Raw codecs need `rate`; containers carry their own.

    Container decoding may block briefly (see `StreamDecoder`): when `blocking` is true, call
    `push` and `close` off an event loop.
    """

    def __init__(self, codec: str, rate: int | None = None) -> None:
        if codec not in CODECS:
            raise AudioFormatError(f"unknown audio format {codec!r}; known: {', '.join(CODECS)}")
        if codec in ("pcmu", "pcma"):
            rate = rate or 8_000
        if codec in RAW_CODECS and not (isinstance(rate, int) and MIN_RATE <= rate <= MAX_RATE):
            raise AudioFormatError(
                f"sample rate {rate!r} is not supported for {codec}: "
                f"give an integer from {MIN_RATE} to {MAX_RATE} Hz"
            )
        self.codec = codec
        self._raw = RAW_CODECS.get(codec)
        self._container = None if self._raw else StreamDecoder(codec)
        self._resampler = StreamResampler(rate, TARGET_RATE) if rate else None

    @property
    def blocking(self) -> bool:
        return self._container is not None

    def push(self, data: bytes) -> np.ndarray:
        """Decode a chunk; returns the 16 kHz samples it completes (maybe none)."""
        if self._raw:
            return self._resample(self._raw(data))
        return self._resample(self._container.push(data))

    def close(self) -> np.ndarray:
        """End of stream: the samples still held by the decoder and resampler."""
        tail = self._resample(self._container.close()) if self._container else _EMPTY
        if self._resampler is None:
            return tail
        return np.concatenate([tail, self._resampler.flush()])

    def abort(self) -> None:
        """Drop the stream (ends a container decoder's worker thread)."""
        if self._container is not None:
            self._container.abort()

    def _resample(self, x: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            if self._container is None or self._container.rate is None:
                return x  # header not parsed yet: nothing decoded
            self._resampler = StreamResampler(self._container.rate, TARGET_RATE)
        return self._resampler.process(x)


_EMPTY = np.zeros(0, dtype=np.float32)
