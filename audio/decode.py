"""Audio in: client bytes -> mono float32 samples in [-1, 1] and their sample rate.

Three shapes of input:
- raw chunks without a container (`decode_pcm16`, `decode_f32`, `decode_pcmu`, `decode_pcma`),
- a whole file (`decode_file`: WAV/FLAC/Ogg through soundfile, WebM/MP3/MP4 through av),
- a container streamed in chunks (`StreamDecoder`: WAV and FLAC framing parsed here, so samples
  come out as soon as their frame is complete; Ogg, WebM and MP3 through av on a worker thread).
Stereo is averaged to mono. Bad input raises `AudioFormatError` with a message fit for a client.
Resampling to the engine's 16 kHz is `audio.resample`'s job.
"""

import io

import av
import numpy as np
import soundfile as sf

from audio.avstream import FORMATS as AV_FORMATS
from audio.avstream import AvStream, describe, frame_to_mono
from audio.flacstream import FlacStream
from audio.pcm import (
    AudioFormatError,
    decode_f32,
    decode_pcm16,
    decode_pcma,
    decode_pcmu,
    finite_clip,
)
from audio.wavstream import WavStream

__all__ = [
    "AudioFormatError",
    "StreamDecoder",
    "decode_f32",
    "decode_file",
    "decode_pcm16",
    "decode_pcma",
    "decode_pcmu",
]

CONTAINERS = ("wav", "flac", *AV_FORMATS)

# Demuxers `decode_file` lets FFmpeg pick from. An allow-list, because FFmpeg's probe also knows
# playlist and concat formats that open other files or URLs named inside the data.
FILE_FORMATS = "matroska,webm,mov,mp4,m4a,3gp,3g2,mj2,mp3,aac,ogg,wav,flac,w64,aiff,caf"


def decode_file(data: bytes) -> tuple[np.ndarray, int]:
    """A whole audio file -> (mono float32 samples, sample rate)."""
    if not data:
        raise AudioFormatError("empty audio file")
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError):  # not a format libsndfile knows (LibsndfileError et al.)
        return _decode_file_av(data)
    return finite_clip(x.mean(axis=1, dtype=np.float32)), int(rate)


def _decode_file_av(data: bytes) -> tuple[np.ndarray, int]:
    try:
        with av.open(io.BytesIO(data), "r", options={"format_whitelist": FILE_FORMATS}) as c:
            if not c.streams.audio:
                raise AudioFormatError("file has no audio track")
            stream = c.streams.audio[0]
            parts, rate = [], None
            for frame in c.decode(stream):
                if rate is not None and frame.sample_rate != rate:
                    raise AudioFormatError("sample rate changes inside the file")
                rate = frame.sample_rate
                parts.append(frame_to_mono(frame))
    except AudioFormatError:
        raise
    except Exception as e:  # decoding untrusted input: any failure is a format error
        raise AudioFormatError(f"cannot decode audio file: {describe(e)}") from e
    if rate is None:
        raise AudioFormatError("no audio could be decoded from the file")
    return np.concatenate(parts), rate


class StreamDecoder:
    """A container streamed in chunks: push bytes as they arrive, get the samples they complete.

    `container` is one of "wav", "flac", "ogg" (Opus or Vorbis), "webm" (Opus, as a browser's
    MediaRecorder sends it), "mp3". `rate` is None until the stream header has been parsed.
    `push` may block briefly (the av containers decode on a worker thread and push waits for
    it to drain); call it off an event loop. Not thread-safe: one caller per stream.
    """

    def __init__(self, container: str) -> None:
        if container not in CONTAINERS:
            raise ValueError(f"unknown container {container!r}; one of {list(CONTAINERS)}")
        self.container = container
        parsers = {"wav": WavStream, "flac": FlacStream}
        self._impl = parsers[container]() if container in parsers else AvStream(container)

    @property
    def rate(self) -> int | None:
        return self._impl.rate

    def push(self, data: bytes) -> np.ndarray:
        """Feed the next bytes; returns the new mono float32 samples (possibly none)."""
        return self._impl.push(data)

    def close(self) -> np.ndarray:
        """End of input: returns the remaining samples (codec delay, last frames)."""
        return self._impl.close()

    def abort(self) -> None:
        """Drop the stream without decoding the rest (ends the worker thread, never raises)."""
        self._impl.abort()

    def __enter__(self) -> "StreamDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
