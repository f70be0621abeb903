"""Incremental RIFF/WAVE parsing: a WAV stream arriving in chunks -> mono float32 samples.

FFmpeg's WAV demuxer reads 64 KiB ahead before its first packet (it probes for S/PDIF), two
seconds of 16 kHz PCM16 before the first sample; parsing the few header fields here costs
nothing and yields samples from the first data byte on. Handles PCM 8/16/24/32-bit, float
32/64-bit, G.711 A-law and µ-law, WAVE_FORMAT_EXTENSIBLE, and streaming writers' unknown data
sizes (0 or 0xFFFFFFFF: data runs to the end of the stream).
"""

import struct

import numpy as np

from audio.pcm import (
    ALAW,
    PCM16_SCALE,
    ULAW,
    AudioFormatError,
    finite_clip,
    interleaved_to_mono,
)

MAX_HEADER_BYTES = 1 << 20  # bytes before the data chunk (metadata, album art) we accept
UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # data sizes that streaming writers put when they cannot seek

_PCM, _FLOAT, _ALAW, _ULAW, _EXTENSIBLE = 1, 3, 6, 7, 0xFFFE


def _decode_frames(raw: bytes, tag: int, bits: int) -> np.ndarray:
    """Interleaved samples of one format -> float32 (not yet downmixed)."""
    if tag == _PCM and bits == 8:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if tag == _PCM and bits == 16:
        return np.frombuffer(raw, "<i2").astype(np.float32) / np.float32(PCM16_SCALE)
    if tag == _PCM and bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return (v / float(1 << 23)).astype(np.float32)
    if tag == _PCM and bits == 32:
        return (np.frombuffer(raw, "<i4") / float(1 << 31)).astype(np.float32)
    if tag == _FLOAT and bits == 32:
        return finite_clip(np.frombuffer(raw, "<f4").astype(np.float32))
    if tag == _FLOAT and bits == 64:
        return finite_clip(np.frombuffer(raw, "<f8").astype(np.float32))
    if tag == _ALAW and bits == 8:
        return ALAW[np.frombuffer(raw, np.uint8)]
    if tag == _ULAW and bits == 8:
        return ULAW[np.frombuffer(raw, np.uint8)]
    raise AudioFormatError(f"unsupported WAV sample format: tag {tag:#x}, {bits} bits")


class WavStream:
    """Feed WAV bytes in any chunking; get mono float32 as soon as whole frames are in."""

    def __init__(self) -> None:
        self.rate: int | None = None
        self._pending = bytearray()  # header bytes not yet parsed, or a partial sample frame
        self._header_bytes = 0
        self._riff = False  # the 12-byte RIFF/WAVE preamble was seen
        self._rf64 = False  # RF64 (> 4 GiB WAV): sizes live in a ds64 chunk
        self._skip = 0  # bytes of the current non-data chunk still to skip
        self._fmt: tuple[int, int, int] | None = None  # (tag, channels, bits)
        self._frame = 0  # bytes per sample frame
        self._in_data = False
        self._data_left: int | None = None  # None: the data chunk runs to the end of the stream
        self._closed = False

    def push(self, data: bytes) -> np.ndarray:
        if self._closed:
            raise ValueError("push() after close()")
        if self._in_data:
            return self._samples(data)
        self._pending += data
        self._header_bytes += len(data)
        self._parse_header()
        if self._in_data:
            rest = bytes(self._pending)
            self._pending.clear()
            return self._samples(rest)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise AudioFormatError(f"no WAV data chunk within {MAX_HEADER_BYTES} bytes")
        return np.zeros(0, np.float32)

    def close(self) -> np.ndarray:
        # A trailing partial frame is a truncated stream: dropped, as decoders do.
        if self._closed:
            return np.zeros(0, np.float32)
        self._closed = True
        if self._header_bytes and not self._in_data:
            raise AudioFormatError("WAV stream ended before its data chunk")
        self._pending.clear()
        return np.zeros(0, np.float32)

    def abort(self) -> None:
        self._closed = True
        self._pending.clear()

    def _parse_header(self) -> None:
        buf = self._pending
        pos = 0
        if not self._riff:
            if len(buf) < 12:
                return
            if buf[:4] not in (b"RIFF", b"RF64") or buf[8:12] != b"WAVE":
                raise AudioFormatError("not a WAV stream (no RIFF/WAVE header)")
            self._riff = True
            self._rf64 = buf[:4] == b"RF64"
            pos = 12
        while True:
            if self._skip:
                n = min(self._skip, len(buf) - pos)
                pos += n
                self._skip -= n
                if self._skip:
                    break
            if len(buf) - pos < 8:
                break
            chunk_id = bytes(buf[pos : pos + 4])
            (size,) = struct.unpack_from("<I", buf, pos + 4)
            if chunk_id == b"data":
                if self._fmt is None:
                    raise AudioFormatError("WAV data chunk before its fmt chunk")
                # RF64 keeps the real size in its ds64 chunk; reading to the end is as good.
                unknown = size in UNKNOWN_SIZES or self._rf64
                self._data_left = None if unknown else size
                self._in_data = True
                pos += 8
                break
            if chunk_id == b"fmt ":
                if len(buf) - pos < 8 + size:
                    break  # wait for the whole fmt body
                self._parse_fmt(bytes(buf[pos + 8 : pos + 8 + size]))
            pos += 8
            self._skip = size + (size & 1)  # chunks are padded to even sizes
        del buf[:pos]

    def _parse_fmt(self, body: bytes) -> None:
        if len(body) < 16:
            raise AudioFormatError(f"WAV fmt chunk too short ({len(body)} bytes)")
        tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
        if tag == _EXTENSIBLE:
            if len(body) < 26:
                raise AudioFormatError("WAVE_FORMAT_EXTENSIBLE fmt chunk too short")
            (tag,) = struct.unpack_from("<H", body, 24)  # first two bytes of the sub-format GUID
        if channels < 1 or rate < 1:
            raise AudioFormatError(f"bad WAV fmt: {channels} channels at {rate} Hz")
        if bits % 8 or block_align != channels * bits // 8:
            raise AudioFormatError(f"bad WAV fmt: block_align {block_align} for {bits}-bit")
        _decode_frames(b"", tag, bits)  # raises for formats we do not decode
        self._fmt = (tag, channels, bits)
        self._frame = block_align
        self.rate = rate

    def _samples(self, data: bytes) -> np.ndarray:
        if self._data_left is not None:
            data = data[: self._data_left]
            self._data_left -= len(data)
        self._pending += data
        usable = len(self._pending) - len(self._pending) % self._frame
        raw = bytes(self._pending[:usable])
        del self._pending[:usable]
        tag, channels, bits = self._fmt
        return interleaved_to_mono(_decode_frames(raw, tag, bits), channels)
