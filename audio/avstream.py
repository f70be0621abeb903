"""Incremental decoding of a container stream (WebM, Ogg, MP3) with PyAV, fed in chunks.

FFmpeg's demuxers pull bytes through a read callback, so the natural way to feed them pushed
chunks is a pipe: a worker thread runs the demux/decode loop and reads from a blocking byte pipe
that `push` fills. After each push we wait until the worker has consumed every byte and is
blocked on the empty pipe again (or a short deadline passes), so `push` returns everything the
bytes so far can produce, and never waits on bytes that have not arrived. Only bytes not yet
read and samples not yet returned are held, so memory stays bounded on long streams.

The worker never raises into the void: every failure is kept and re-raised as AudioFormatError
from the next `push` or `close`, and closing or dropping the stream ends the thread (the pipe
reads as end-of-file, the demuxer returns).
"""

import threading
import weakref

import av
import numpy as np

from audio.pcm import AudioFormatError, finite_clip

MAX_HEADER_BYTES = 1 << 20  # input allowed before the stream header is parsed (album art fits)
MAX_UNDECODED_BYTES = 4 << 20  # input allowed in a row without a decoded sample
PUSH_WAIT_S = 2.0  # at most this long per push waiting for the decoder to drain the pipe
CLOSE_WAIT_S = 10.0  # at most this long for the decoder to finish after the last byte
IO_BUFFER_BYTES = 4096  # FFmpeg's read size; short reads are fine, this only bounds one read

# Demuxers a caller may name. Tiny probe limits: FFmpeg would otherwise read up to 5 MB / 5 s
# of input (an MP3 stream: ~10 KB) before the first packet. Latency that remains is the
# container's: an Ogg page, a WebM block, an MP3 frame. (FLAC is not here: FFmpeg's FLAC parser
# holds ~9 frames back; audio.flacstream splits frames itself.)
FORMATS = {"webm": "webm", "ogg": "ogg", "mp3": "mp3"}
STREAM_OPTIONS = {"probesize": "32", "analyzeduration": "1"}

# Sample formats (planar suffix stripped) -> scale to [-1, 1].
_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63, "flt": 1.0, "dbl": 1.0}


def describe(e: BaseException) -> str:
    """An FFmpeg error's text without its errno and '<none>' file name."""
    if isinstance(e, av.FFmpegError) and e.strerror:
        return e.strerror
    return str(e)


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame of any sample format and layout -> mono float32 (channel average)."""
    name = frame.format.name.removesuffix("p")
    if name not in _SCALE:
        raise AudioFormatError(f"unsupported decoded sample format {frame.format.name}")
    channels = frame.layout.nb_channels
    x = frame.to_ndarray()
    # Planar frames come as (channels, n); packed ones as (1, n * channels), interleaved.
    x = x.reshape(channels, -1) if frame.format.is_planar else x.reshape(-1, channels).T
    x = x.astype(np.float32)
    if name == "u8":
        x -= 128.0
    if _SCALE[name] != 1.0:
        x /= np.float32(_SCALE[name])
    return finite_clip(x.mean(axis=0, dtype=np.float32))


class _Pipe:
    """State shared by the caller and the worker. The worker holds this, not the AvStream,
    so an AvStream that is dropped without close() can still be collected (and abort it)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.buf = bytearray()  # bytes pushed, not yet read by FFmpeg
        self.eof = False  # no more input: reads return b"" once buf is empty
        self.aborted = False  # stop now: reads return b"", the decode loop breaks
        self.waiting = False  # the worker is blocked on an empty pipe
        self.done = False  # the worker has returned
        self.error: BaseException | None = None
        self.rate: int | None = None
        self.out: list[np.ndarray] = []  # decoded samples not yet returned
        self.bytes_read = 0
        self.read_at_last_sample = 0

    def read(self, n: int) -> bytes:  # called by FFmpeg (through PyAV) on the worker thread
        with self.cond:
            while not self.buf and not self.eof and not self.aborted:
                self.waiting = True
                self.cond.notify_all()
                self.cond.wait()
            self.waiting = False
            if self.aborted:
                return b""
            data = bytes(self.buf[:n])
            del self.buf[:n]
            self.bytes_read += len(data)
            return data

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.buf.clear()
            self.cond.notify_all()

    def idle(self) -> bool:
        return self.done or (self.waiting and not self.buf)


def _decode_loop(pipe: _Pipe, fmt: str, options: dict[str, str]) -> None:
    try:
        with av.open(pipe, "r", format=fmt, options=options, buffer_size=IO_BUFFER_BYTES) as c:
            if not c.streams.audio:
                raise AudioFormatError(f"{fmt} stream has no audio track")
            stream = c.streams.audio[0]
            with pipe.cond:
                pipe.rate = stream.sample_rate or None
            for frame in c.decode(stream):
                x = frame_to_mono(frame)
                with pipe.cond:
                    if pipe.aborted:
                        break
                    if pipe.rate is None:
                        pipe.rate = frame.sample_rate
                    elif frame.sample_rate != pipe.rate:
                        raise AudioFormatError(
                            f"sample rate changed mid-stream: {pipe.rate} -> {frame.sample_rate}"
                        )
                    pipe.out.append(x)
                    pipe.read_at_last_sample = pipe.bytes_read
    except Exception as e:  # decoding untrusted input: every failure becomes the stream's error
        with pipe.cond:
            pipe.error = e
    finally:
        with pipe.cond:
            pipe.done = True
            pipe.cond.notify_all()


class AvStream:
    """One container stream decoded on a worker thread; see the module docstring."""

    def __init__(self, container: str) -> None:
        if container not in FORMATS:
            raise ValueError(f"unknown container {container!r}; one of {sorted(FORMATS)}")
        self.container = container
        self._pipe = _Pipe()
        self._pushed = 0
        self._closed = False
        self._thread = threading.Thread(
            target=_decode_loop,
            args=(self._pipe, FORMATS[container], dict(STREAM_OPTIONS)),
            name=f"avstream-{container}",
            daemon=True,
        )
        self._thread.start()
        weakref.finalize(self, self._pipe.abort)

    @property
    def rate(self) -> int | None:
        return self._pipe.rate

    def push(self, data: bytes) -> np.ndarray:
        if self._closed:
            raise ValueError("push() after close()")
        pipe = self._pipe
        with pipe.cond:
            if data and not pipe.done:
                pipe.buf += data
                pipe.waiting = False
                pipe.cond.notify_all()
            self._pushed += len(data)
            pipe.cond.wait_for(pipe.idle, timeout=PUSH_WAIT_S)
            out = self._take()
            if pipe.rate is None and self._pushed > MAX_HEADER_BYTES:
                self._fail(f"no {self.container} header within {MAX_HEADER_BYTES} bytes")
            if self._pushed - pipe.read_at_last_sample > MAX_UNDECODED_BYTES:
                self._fail(f"no audio decoded from {MAX_UNDECODED_BYTES} bytes of input")
        return out

    def close(self) -> np.ndarray:
        if self._closed:
            return np.zeros(0, np.float32)
        if self._pushed == 0:  # an empty stream is not a broken one
            self.abort()
            return np.zeros(0, np.float32)
        self._closed = True
        pipe = self._pipe
        with pipe.cond:
            pipe.eof = True
            pipe.cond.notify_all()
            finished = pipe.cond.wait_for(lambda: pipe.done, timeout=CLOSE_WAIT_S)
            if not finished:
                self._fail(f"{self.container} decoder did not finish in {CLOSE_WAIT_S} s")
            out = self._take()
            if pipe.rate is None:
                self._fail(f"{self.container} stream ended before its header")
        self._thread.join()
        return out

    def abort(self) -> None:
        """Stop the worker without waiting for it or raising."""
        self._closed = True
        self._pipe.abort()

    def _take(self) -> np.ndarray:
        """Decoded samples so far (caller holds the lock); raises the worker's error."""
        pipe = self._pipe
        if pipe.error is not None:
            self._fail(f"cannot decode {self.container} stream: {describe(pipe.error)}", pipe.error)
        out = np.concatenate(pipe.out) if pipe.out else np.zeros(0, np.float32)
        pipe.out.clear()
        return out

    def _fail(self, message: str, cause: BaseException | None = None) -> None:
        self.abort()  # the pipe's lock is reentrant: callers may hold it
        raise AudioFormatError(message) from cause
