"""Incremental FLAC: a native FLAC stream arriving in chunks -> mono float32, one frame behind.

FFmpeg's FLAC demuxer finds frame boundaries with a parser that holds about nine frames back
(2 s of 16 kHz audio) to be sure of them. Here the boundaries come from the format itself: a
frame ends where the next valid frame header starts, and a header is only taken as valid if its
sync code, reserved bits, CRC-8, channel layout and frame number (the previous one plus one)
all check out, which random bytes inside a frame essentially never do. Each complete frame goes
to FFmpeg's FLAC decoder (through av) with the stream's STREAMINFO; the last frame is decoded at
`close`. Metadata blocks other than STREAMINFO (tags, pictures) are skipped, not stored.
"""

import struct

import av
import numpy as np

from audio.avstream import describe, frame_to_mono
from audio.pcm import AudioFormatError

MAX_HEADER_BYTES = 1 << 20  # metadata (album art...) accepted before the first frame
MAX_FRAME_BYTES = 1 << 20  # bytes without a frame boundary before we call the stream broken

_NEED_MORE = object()  # a header that may be valid once more bytes arrive


def _crc8_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_CRC8 = _crc8_table()


def _crc8(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def _block_size(code: int, extra: int) -> int:
    if code == 1:
        return 192
    if code <= 5:
        return 576 << (code - 2)
    if code <= 7:
        return extra + 1
    return 256 << (code - 8)


class FlacStream:
    """Feed FLAC bytes in any chunking; get mono float32 for each frame once the next begins."""

    def __init__(self) -> None:
        self.rate: int | None = None
        self._buf = bytearray()
        self._seen = 0  # bytes pushed
        self._skip = 0  # bytes of a metadata block still to skip
        self._magic = False
        self._in_frames = False
        self._last_block = False  # the metadata block being skipped is the last one
        self._channels = 0
        self._bits = 0
        self._strategy: int | None = None  # 0: fixed block size (frame numbers), 1: variable
        self._next_number: int | None = None  # coded number the next frame must carry
        self._search = 0  # where to look for the next frame header
        self._decoder: av.CodecContext | None = None
        self._closed = False

    def push(self, data: bytes) -> np.ndarray:
        if self._closed:
            raise ValueError("push() after close()")
        self._seen += len(data)
        self._buf += data
        if not self._in_frames:
            self._parse_metadata()
            if not self._in_frames:
                if self._seen > MAX_HEADER_BYTES:
                    raise AudioFormatError(f"no FLAC audio within {MAX_HEADER_BYTES} bytes")
                return np.zeros(0, np.float32)
        return self._frames()

    def close(self) -> np.ndarray:
        if self._closed:
            return np.zeros(0, np.float32)
        self._closed = True
        if self._seen and not self._in_frames:
            raise AudioFormatError("FLAC stream ended before its first frame")
        if not self._buf:
            return np.zeros(0, np.float32)
        try:  # the last frame ends with the stream; a truncated one is dropped
            return self._decode(bytes(self._buf))
        except AudioFormatError:
            return np.zeros(0, np.float32)
        finally:
            self._buf.clear()

    def abort(self) -> None:
        self._closed = True
        self._buf.clear()

    def _parse_metadata(self) -> None:
        buf = self._buf
        if not self._magic:
            if len(buf) < 4:
                return
            if buf[:4] != b"fLaC":
                raise AudioFormatError("not a FLAC stream (no fLaC marker)")
            self._magic = True
            del buf[:4]
        while not self._in_frames:
            if self._skip:  # the body of a metadata block we do not need
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    return
                self._in_frames = self._last_block
                continue
            if len(buf) < 4:
                return
            last, kind, size = buf[0] >> 7, buf[0] & 0x7F, int.from_bytes(buf[1:4], "big")
            if self.rate is None:
                if kind != 0 or size != 34:
                    raise AudioFormatError("FLAC stream does not start with STREAMINFO")
                if len(buf) < 4 + 34:
                    return
                self._streaminfo(bytes(buf[4:38]))
            del buf[:4]
            self._skip, self._last_block = size, bool(last)
            self._in_frames = self._last_block and not size

    def _streaminfo(self, info: bytes) -> None:
        (packed,) = struct.unpack_from(">Q", info, 10)  # rate 20 bits, channels-1 3, bits-1 5
        rate, channels, bits = packed >> 44, ((packed >> 41) & 7) + 1, ((packed >> 36) & 31) + 1
        if rate == 0:
            raise AudioFormatError("FLAC STREAMINFO has sample rate 0")
        self.rate, self._channels, self._bits = rate, channels, bits
        self._decoder = av.CodecContext.create("flac", "r")
        self._decoder.extradata = info

    def _header(self, pos: int) -> tuple[int, int, int] | object | None:
        """At `pos`: (header length, block size, coded number) of a valid frame header, None if
        there is none, _NEED_MORE if the bytes so far cannot tell."""
        buf = self._buf
        if len(buf) - pos < 5:
            return _NEED_MORE
        b1, b2, b3, c0 = buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]
        if buf[pos] != 0xFF or (b1 & 0xFE) != 0xF8:
            return None
        if self._strategy is not None and (b1 & 1) != self._strategy:
            return None
        bs_code, sr_code = b2 >> 4, b2 & 15
        ch_code, bits_code = b3 >> 4, (b3 >> 1) & 7
        if bs_code == 0 or sr_code == 15 or ch_code > 10 or bits_code == 3 or b3 & 1:
            return None
        channels = ch_code + 1 if ch_code < 8 else 2
        bits = (0, 8, 12, 0, 16, 20, 24, 32)[bits_code]
        if channels != self._channels or bits not in (0, self._bits):
            return None
        # UTF-8-like coded frame / sample number
        n = next((i for i in range(7) if not (c0 << i) & 0x80), 7)
        length = 1 if n == 0 else n
        if n == 1 or (n == 7 and c0 != 0xFE):
            return None
        extra_bs = {6: 1, 7: 2}.get(bs_code, 0)
        extra_sr = {12: 1, 13: 2, 14: 2}.get(sr_code, 0)
        size = 4 + length + extra_bs + extra_sr + 1
        if len(buf) - pos < size:
            return _NEED_MORE
        number = c0 & (0x7F >> n) if n else c0
        for b in buf[pos + 5 : pos + 4 + length]:
            if (b & 0xC0) != 0x80:
                return None
            number = (number << 6) | (b & 0x3F)
        if _crc8(buf[pos : pos + size - 1]) != buf[pos + size - 1]:
            return None
        if self._next_number is not None and number != self._next_number:
            return None
        at = pos + 4 + length
        extra = int.from_bytes(buf[at : at + extra_bs], "big")
        return size, _block_size(bs_code, extra), number

    def _frames(self) -> np.ndarray:
        buf = self._buf
        if self._next_number is None:  # the buffer must start with the first frame
            first = self._header(0)
            if first is _NEED_MORE:
                return np.zeros(0, np.float32)
            if first is None:
                raise AudioFormatError("FLAC frame header expected after the metadata")
            self._accept(first, buf[1] & 1)
        out = []
        pos = self._search
        while (pos := buf.find(b"\xff", pos)) >= 0:
            header = self._header(pos)
            if header is _NEED_MORE:
                break
            if header is None:
                pos += 1
                continue
            out.append(self._decode(bytes(buf[:pos])))  # the frame before the next header
            del buf[:pos]
            self._accept(header, buf[1] & 1)
            pos = self._search
        self._search = pos if pos >= 0 else len(buf)
        if len(buf) > MAX_FRAME_BYTES:
            raise AudioFormatError(f"no FLAC frame boundary within {MAX_FRAME_BYTES} bytes")
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _accept(self, header: tuple[int, int, int], strategy: int) -> None:
        """The buffer now starts with a frame whose header is `header`."""
        size, block, number = header
        self._strategy = strategy
        self._next_number = number + (block if strategy else 1)
        self._search = size

    def _decode(self, frame: bytes) -> np.ndarray:
        try:
            frames = self._decoder.decode(av.Packet(frame))
        except Exception as e:  # untrusted input: any decoder failure is a format error
            raise AudioFormatError(f"cannot decode FLAC frame: {describe(e)}") from e
        parts = [frame_to_mono(f) for f in frames]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
