"""Raw sample codecs: bytes of PCM16, float32, G.711 µ-law or A-law -> mono float32 in [-1, 1].

These are the formats a client may stream without a container (OpenAI Realtime's `pcm16`,
`g711_ulaw`, `g711_alaw`, and little-endian float32). Every function takes the bytes of one
chunk and returns a new float32 array; a malformed chunk raises `AudioFormatError`.
"""

import numpy as np

PCM16_SCALE = 32768.0  # int16 full scale: -32768 -> -1.0


class AudioFormatError(ValueError):
    """Input bytes that are not audio of the announced format."""


def _bytes(data: bytes | bytearray | memoryview) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    return memoryview(data).cast("B")


def finite_clip(x: np.ndarray) -> np.ndarray:
    """Check that float samples are finite and clip them to [-1, 1] (lossy codecs overshoot)."""
    if not np.isfinite(x).all():
        raise AudioFormatError("audio contains NaN or infinite samples")
    return np.clip(x, -1.0, 1.0, out=x)


def decode_pcm16(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM, mono."""
    buf = _bytes(data)
    if len(buf) % 2:
        raise AudioFormatError(f"pcm16 needs an even number of bytes, got {len(buf)}")
    return np.frombuffer(buf, dtype="<i2").astype(np.float32) / np.float32(PCM16_SCALE)


def decode_f32(data: bytes) -> np.ndarray:
    """Little-endian IEEE float32, mono; NaN/inf are rejected, the rest clipped to [-1, 1]."""
    buf = _bytes(data)
    if len(buf) % 4:
        raise AudioFormatError(f"float32 needs a multiple of 4 bytes, got {len(buf)}")
    return finite_clip(np.frombuffer(buf, dtype="<f4").astype(np.float32))


def _ulaw_table() -> np.ndarray:
    # G.711 µ-law: bits are transmitted inverted; after inversion a byte is sign(1) exponent(3)
    # mantissa(4) and decodes to ((mantissa << 3) + 0x84) << exponent, minus the 0x84 bias,
    # on the 16-bit scale (the standard's 14-bit values times 4).
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    value = np.where(u & 0x80, -magnitude, magnitude)
    return (value / PCM16_SCALE).astype(np.float32)


def _alaw_table() -> np.ndarray:
    # G.711 A-law: even bits are transmitted inverted (xor 0x55); sign bit set means positive.
    # Segment 0 is linear, segments 1..7 double the step each; 16-bit scale (13-bit values * 8).
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    value = np.where(a & 0x80, magnitude, -magnitude)
    return (value / PCM16_SCALE).astype(np.float32)


ULAW = _ulaw_table()
ALAW = _alaw_table()


def decode_pcmu(data: bytes) -> np.ndarray:
    """G.711 µ-law (PCMU), one byte per sample."""
    return ULAW[np.frombuffer(_bytes(data), dtype=np.uint8)]


def decode_pcma(data: bytes) -> np.ndarray:
    """G.711 A-law (PCMA), one byte per sample."""
    return ALAW[np.frombuffer(_bytes(data), dtype=np.uint8)]


def interleaved_to_mono(x: np.ndarray, channels: int) -> np.ndarray:
    """Average the channels of interleaved samples (a trailing partial frame is an error)."""
    if channels == 1:
        return x
    if len(x) % channels:
        raise AudioFormatError(f"{len(x)} samples do not split into {channels} channels")
    return x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
