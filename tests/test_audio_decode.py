"""audio.decode: raw codecs, whole files, chunked container streams, and bad input."""

import io
import struct
import threading
import time

import av
import numpy as np
import pytest
import soundfile as sf

from audio.decode import (
    AudioFormatError,
    StreamDecoder,
    decode_f32,
    decode_file,
    decode_pcm16,
    decode_pcma,
    decode_pcmu,
)

TONE_HZ = 440.0


def tone(rate: int, seconds: float, hz: float = TONE_HZ, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noisy_tone(rate: int, seconds: float) -> np.ndarray:
    """A tone with a little noise: compresses like real audio, so lossy encoders spread it
    over many pages / frames (a pure tone fits a 3 s Ogg/Vorbis stream into one page)."""
    noise = np.random.default_rng(0).standard_normal(int(rate * seconds)).astype(np.float32)
    return tone(rate, seconds, amp=0.45) + 0.05 * noise


def dominant_hz(x: np.ndarray, rate: int) -> float:
    x = x[len(x) // 4 : 3 * len(x) // 4]  # away from codec priming and tails
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def encode_av(x: np.ndarray, rate: int, fmt: str, codec: str, layout: str = "mono") -> bytes:
    """Encode mono float32 (copied to every channel of `layout`) into a container in memory."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        channels = stream.codec_context.layout.nb_channels
        step = stream.codec_context.frame_size or 1024
        for i in range(0, len(x), step):
            part = np.repeat(x[None, i : i + step], channels, axis=0)
            frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def encode_sf(x: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def avstream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("avstream")]


def no_avstream_threads(timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while avstream_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not avstream_threads()


# --- G.711, written from the standard's decoding rules, independent of audio.pcm's tables ---


def ulaw_reference(code: int) -> float:
    """ITU-T G.711 µ-law: all bits are inverted on the line; then sign (1 = negative), segment
    e (3 bits), step q (4 bits); the reconstruction value is (2q + 33) * 2^e - 33 in 14-bit
    units (max 8031), i.e. * 4 on the 16-bit scale."""
    code ^= 0xFF
    negative = bool(code & 0x80)
    e, q = (code >> 4) & 7, code & 15
    value = ((2 * q + 33) * 2**e - 33) * 4
    return (-value if negative else value) / 32768


def alaw_reference(code: int) -> float:
    """ITU-T G.711 A-law: even bits are inverted on the line; sign 1 = positive; segment 0 has
    reconstruction values 2q + 1, segment e >= 1 has (2q + 33) * 2^(e-1), in 12-bit units
    (max 4032), i.e. * 8 on the 16-bit scale."""
    code ^= 0x55
    positive = bool(code & 0x80)
    e, q = (code >> 4) & 7, code & 15
    value = (2 * q + 1) if e == 0 else (2 * q + 33) * 2 ** (e - 1)
    value *= 8
    return (value if positive else -value) / 32768


def test_ulaw_matches_standard_for_every_code():
    codes = bytes(range(256))
    expected = np.array([ulaw_reference(c) for c in codes], np.float32)
    np.testing.assert_array_equal(decode_pcmu(codes), expected)


def test_alaw_matches_standard_for_every_code():
    codes = bytes(range(256))
    expected = np.array([alaw_reference(c) for c in codes], np.float32)
    np.testing.assert_array_equal(decode_pcma(codes), expected)


@pytest.mark.parametrize(
    ("decode", "code", "int16"),
    [
        (decode_pcmu, 0xFF, 0),
        (decode_pcmu, 0x7F, 0),
        (decode_pcmu, 0x00, -32124),
        (decode_pcmu, 0x80, 32124),
        (decode_pcmu, 0xFE, 8),
        (decode_pcmu, 0x7E, -8),
        (decode_pcma, 0xD5, 8),
        (decode_pcma, 0x55, -8),
        (decode_pcma, 0xAA, 32256),
        (decode_pcma, 0x2A, -32256),
    ],
)
def test_g711_known_values(decode, code, int16):
    assert decode(bytes([code]))[0] == np.float32(int16 / 32768)


@pytest.mark.parametrize(
    ("codec", "decode"), [("pcm_mulaw", decode_pcmu), ("pcm_alaw", decode_pcma)]
)
def test_g711_agrees_with_ffmpeg(codec, decode):
    # FFmpeg encodes a sweep; its own decoder and ours must read the bytes identically.
    x = tone(8000, 0.5, hz=300) * np.linspace(0.001, 1.8, 4000, dtype=np.float32)
    wav = encode_av(np.clip(x, -1, 1), 8000, "wav", codec)
    payload = wav[wav.index(b"data") + 8 :]
    theirs, rate = decode_file(wav)
    assert rate == 8000
    np.testing.assert_array_equal(decode(payload), theirs)


def test_pcm16_values_and_scale():
    ints = np.array([-32768, -1, 0, 1, 16384, 32767], "<i2")
    np.testing.assert_array_equal(decode_pcm16(ints.tobytes()), ints.astype(np.float32) / 32768)
    assert decode_pcm16(b"").dtype == np.float32
    assert decode_pcm16(bytearray(4)).shape == (2,)


def test_f32_roundtrip_and_clip():
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype("<f4")
    np.testing.assert_array_equal(decode_f32(x.tobytes()), x)
    np.testing.assert_array_equal(decode_f32(np.array([1.5, -3.0], "<f4").tobytes()), [1, -1])


@pytest.mark.parametrize(
    ("decode", "data"),
    [
        (decode_pcm16, b"\x00\x01\x02"),
        (decode_f32, b"\x00" * 6),
        (decode_f32, np.array([0.1, np.nan], "<f4").tobytes()),
        (decode_f32, np.array([np.inf], "<f4").tobytes()),
    ],
)
def test_raw_codecs_reject_malformed_bytes(decode, data):
    with pytest.raises(AudioFormatError):
        decode(data)


def test_raw_codecs_reject_text():
    with pytest.raises(TypeError):
        decode_pcm16("not bytes")


# --- whole files ---


@pytest.mark.parametrize(
    ("name", "make", "rate"),
    [
        ("wav16", lambda x, r: encode_sf(x, r, "WAV", "PCM_16"), 16000),
        ("flac", lambda x, r: encode_sf(x, r, "FLAC", "PCM_16"), 22050),
        ("ogg-vorbis", lambda x, r: encode_sf(x, r, "OGG", "VORBIS"), 44100),
        ("webm-opus", lambda x, r: encode_av(x, r, "webm", "libopus"), 48000),
        ("ogg-opus", lambda x, r: encode_av(x, r, "ogg", "libopus"), 48000),
        ("mp3", lambda x, r: encode_av(x, r, "mp3", "libmp3lame"), 44100),
        ("mp4-aac", lambda x, r: encode_av(x, r, "mp4", "aac"), 24000),
    ],
)
def test_decode_file_formats(name, make, rate):
    x = tone(rate, 1.0)
    y, got_rate = decode_file(make(x, rate))
    assert got_rate == rate
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) < 0.05 * rate, name  # codec priming / padding only
    assert abs(dominant_hz(y, rate) - TONE_HZ) < 3
    assert 0.3 < np.abs(y).max() <= 1.0


def test_decode_file_downmixes_stereo_by_average():
    left, right = tone(16000, 0.5), tone(16000, 0.5, hz=1000, amp=0.2)
    y, rate = decode_file(encode_sf(np.stack([left, right], axis=1), 16000, "WAV", "FLOAT"))
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)
    webm = encode_av(tone(48000, 1.0), 48000, "webm", "libopus", layout="stereo")
    y, rate = decode_file(webm)
    assert rate == 48000 and y.ndim == 1 and abs(dominant_hz(y, rate) - TONE_HZ) < 3


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world, not audio" * 50, bytes(np.random.default_rng(1).bytes(5000))],
    ids=["empty", "text", "random"],
)
def test_decode_file_rejects_garbage(data):
    with pytest.raises(AudioFormatError):
        decode_file(data)


def test_decode_file_does_not_follow_playlists(tmp_path):
    # FFmpeg can probe playlists and concat lists that name other files; never open them.
    target = tmp_path / "other.wav"
    target.write_bytes(encode_sf(tone(16000, 0.5), 16000, "WAV", "PCM_16"))
    for playlist in (
        f"ffconcat version 1.0\nfile {target}\n",
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n",
    ):
        with pytest.raises(AudioFormatError):
            decode_file(playlist.encode())


@pytest.mark.parametrize("fmt", ["wav", "webm", "mp3"])
def test_decode_file_truncated(fmt):
    x = tone(16000 if fmt == "wav" else 48000, 1.0)
    rate = 16000 if fmt == "wav" else 48000
    if fmt == "wav":
        data = encode_sf(x, rate, "WAV", "PCM_16")
    else:
        data = encode_av(x, rate, fmt, "libopus" if fmt == "webm" else "libmp3lame")
    with pytest.raises(AudioFormatError):
        decode_file(data[:30])  # cut inside the header
    y, _ = decode_file(data[: len(data) // 2])  # cut inside the audio: what is there decodes
    assert 0.3 * len(x) < len(y) < 0.7 * len(x)
    assert abs(dominant_hz(y, rate) - TONE_HZ) < 5


# --- chunked container streams ---

STREAMS = {
    # name: (container, encoder(x, rate) -> bytes, rate)
    "webm-opus": ("webm", lambda x, r: encode_av(x, r, "webm", "libopus"), 48000),
    "ogg-opus": ("ogg", lambda x, r: encode_av(x, r, "ogg", "libopus"), 48000),
    "ogg-vorbis": ("ogg", lambda x, r: encode_sf(x, r, "OGG", "VORBIS"), 44100),
    "mp3": ("mp3", lambda x, r: encode_av(x, r, "mp3", "libmp3lame"), 44100),
    "flac": ("flac", lambda x, r: encode_sf(x, r, "FLAC", "PCM_16"), 16000),
    "wav": ("wav", lambda x, r: encode_sf(x, r, "WAV", "PCM_16"), 16000),
}


def stream_decode(container: str, chunks: list[bytes]) -> tuple[list[np.ndarray], np.ndarray]:
    dec = StreamDecoder(container)
    outs = [dec.push(c) for c in chunks]
    tail = dec.close()
    return outs, tail


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_matches_one_shot(name):
    container, encode, rate = STREAMS[name]
    x = noisy_tone(rate, 3.0)
    data = encode(x, rate)
    one_shot, one_shot_rate = decode_file(data)
    chunks = [c.tobytes() for c in np.array_split(np.frombuffer(data, np.uint8), 10)]
    outs, tail = stream_decode(container, chunks)
    y = np.concatenate([*outs, tail])
    assert y.dtype == np.float32
    assert one_shot_rate == rate
    # Codec priming / padding may differ between the two paths by a few ms; the content not.
    assert abs(len(y) - len(one_shot)) <= 0.02 * rate, (len(y), len(one_shot))
    n = min(len(y), len(one_shot))
    assert np.corrcoef(y[: n - rate // 10], one_shot[: n - rate // 10])[0, 1] > 0.999
    assert abs(dominant_hz(y, rate) - TONE_HZ) < 2
    assert sum(len(o) for o in outs[:5]) > 0.2 * len(x), "too few samples from the first half"
    assert no_avstream_threads()


def test_webm_yields_pcm_long_before_the_last_chunk():
    # What a browser MediaRecorder does: a WebM/Opus stream sent in timesliced chunks.
    x = tone(48000, 4.0)
    data = encode_av(x, 48000, "webm", "libopus")
    chunks = [c.tobytes() for c in np.array_split(np.frombuffer(data, np.uint8), 10)]
    dec = StreamDecoder("webm")
    assert dec.rate is None
    first_half = sum(len(dec.push(c)) for c in chunks[:5])
    assert dec.rate == 48000
    # half the bytes carry about half the audio; all of it is out before the 6th chunk
    assert first_half > 0.4 * len(x)
    rest = sum(len(dec.push(c)) for c in chunks[5:]) + len(dec.close())
    assert abs(first_half + rest - len(x)) < 0.02 * 48000


@pytest.mark.parametrize("name", ["webm-opus", "mp3", "wav"])
def test_stream_any_chunking(name):
    container, encode, rate = STREAMS[name]
    data = encode(tone(rate, 1.0), rate)
    one_shot, _ = decode_file(data)
    rng = np.random.default_rng(7)
    cuts = np.sort(rng.choice(np.arange(1, len(data)), size=200, replace=False))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    chunks[3:3] = [b"", b""]
    outs, tail = stream_decode(container, chunks)
    y = np.concatenate([*outs, tail])
    n = min(len(y), len(one_shot)) - rate // 10
    assert np.corrcoef(y[:n], one_shot[:n])[0, 1] > 0.999


@pytest.mark.parametrize("container", ["webm", "ogg", "mp3", "flac", "wav"])
def test_stream_garbage_raises_and_ends_thread(container):
    garbage = np.random.default_rng(3).bytes(64 * 1024)
    dec = StreamDecoder(container)
    with pytest.raises(AudioFormatError):
        for i in range(0, len(garbage), 4096):
            dec.push(garbage[i : i + 4096])
        dec.close()
    assert no_avstream_threads()


def test_stream_endless_garbage_hits_header_limit():
    # The MP3 demuxer skips junk looking for a frame sync; the header limit stops it.
    dec = StreamDecoder("mp3")
    junk = b"\x00" * (256 * 1024)
    with pytest.raises(AudioFormatError, match="header"):
        for _ in range(8):
            dec.push(junk)
    assert no_avstream_threads()


def test_stream_corrupted_middle_does_not_hang():
    data = encode_av(tone(48000, 2.0), 48000, "webm", "libopus")
    bad = data[:4000] + np.random.default_rng(5).bytes(6000) + data[10000:]
    dec = StreamDecoder("webm")
    try:
        got = len(dec.push(bad)) + len(dec.close())
        assert got > 0  # a lenient demuxer resyncs: samples before and after the damage
    except AudioFormatError:
        pass  # or it gives up; either is fine, hanging or crashing is not
    assert no_avstream_threads()


def test_stream_truncated_keeps_what_arrived():
    x = tone(48000, 2.0)
    data = encode_av(x, 48000, "webm", "libopus")
    dec = StreamDecoder("webm")
    y = np.concatenate([dec.push(data[: len(data) * 6 // 10]), dec.close()])
    assert 0.4 * len(x) < len(y) < 0.8 * len(x)
    assert no_avstream_threads()


def test_stream_abort_and_drop_end_the_thread():
    data = encode_av(tone(48000, 1.0), 48000, "webm", "libopus")
    with StreamDecoder("webm") as dec:
        dec.push(data[:3000])
    dropped = StreamDecoder("ogg")
    dropped.push(b"OggS")
    del dropped
    assert no_avstream_threads()


def test_stream_holds_only_unread_bytes():
    # A long stream in 100 ms pushes: after each push nothing waits in the pipe, every decoded
    # sample has been handed out, and the output keeps pace with the input.
    x = noisy_tone(48000, 20.0)
    data = encode_av(x, 48000, "webm", "libopus")
    dec = StreamDecoder("webm")
    pipe = dec._impl._pipe
    step = len(data) // 200
    total = 0
    for i in range(0, len(data), step):
        total += len(dec.push(data[i : i + step]))
        assert len(pipe.buf) == 0 and pipe.out == []
        assert total > (i / len(data)) * len(x) - 0.3 * 48000  # at most a few frames behind
    total += len(dec.close())
    assert abs(total - len(x)) < 0.02 * 48000


def test_stream_api_misuse():
    with pytest.raises(ValueError, match="unknown container"):
        StreamDecoder("avi")
    dec = StreamDecoder("wav")
    dec.close()
    with pytest.raises(ValueError):
        dec.push(b"RIFF")
    assert len(StreamDecoder("webm").close()) == 0  # nothing pushed: nothing to complain about


# --- FLAC streams (framing parsed in audio.flacstream) ---


@pytest.mark.parametrize(
    ("subtype", "channels", "rate"),
    [("PCM_S8", 1, 8000), ("PCM_16", 2, 16000), ("PCM_24", 2, 44100)],
)
def test_flac_stream_exact_in_any_chunking(subtype, channels, rate):
    x = np.stack([noisy_tone(rate, 1.5) / (c + 1) for c in range(channels)], axis=1)
    data = encode_sf(x, rate, "FLAC", subtype)
    expected, _ = decode_file(data)
    rng = np.random.default_rng(channels)
    cuts = np.sort(rng.choice(np.arange(1, len(data)), size=300, replace=False))
    dec = StreamDecoder("flac")
    outs = [dec.push(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert dec.rate == rate
    np.testing.assert_array_equal(np.concatenate([*outs, dec.close()]), expected)


def test_flac_stream_one_frame_behind():
    # FFmpeg's own encoder: an 8 KiB PADDING block before the frames, 4608-sample frames.
    x = noisy_tone(44100, 3.0)
    data = encode_av(x, 44100, "flac", "flac")
    dec = StreamDecoder("flac")
    got = [len(dec.push(data[i : i + 2000])) for i in range(0, len(data), 2000)]
    total = sum(got) + len(dec.close())
    assert total == len(x)
    # once the frames start, every push that completes a frame hands it out at once
    pushed = np.cumsum([min(2000, len(data) - i) for i in range(0, len(data), 2000)])
    out = np.cumsum(got)
    frame_bytes = (len(data) - 8300) / (len(x) / 4608)
    for n_bytes, n_out in zip(pushed, out, strict=True):
        frames_complete = (n_bytes - 8300) / frame_bytes - 2
        assert n_out >= frames_complete * 4608


def test_flac_stream_bad_input():
    with pytest.raises(AudioFormatError, match="not a FLAC"):
        StreamDecoder("flac").push(b"RIFF0000WAVE")
    data = encode_sf(noisy_tone(16000, 3.0), 16000, "FLAC", "PCM_16")
    first = data.index(b"\xff\xf8")
    dec = StreamDecoder("flac")
    with pytest.raises(AudioFormatError, match="frame header expected"):
        dec.push(data[:first] + b"\x00" * 100)
    dec = StreamDecoder("flac")  # valid start, then endless junk: no frame boundary ever
    with pytest.raises(AudioFormatError, match="boundary"):
        dec.push(data[: first + 100])
        for _ in range(20):
            dec.push(b"\x00" * 65536)
    dec = StreamDecoder("flac")  # truncated: the frames that arrived whole are kept
    y = np.concatenate([dec.push(data[: len(data) // 2]), dec.close()])
    assert 0.3 * 48000 < len(y) < 0.7 * 48000


# --- WAV streams (parsed in audio.wavstream) ---


@pytest.mark.parametrize("fmt", ["WAV", "WAVEX"])
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_stream_sample_formats(fmt, subtype):
    rng = np.random.default_rng(2)
    x = np.stack([tone(16000, 0.3), rng.uniform(-0.5, 0.5, 4800).astype(np.float32)], axis=1)
    data = encode_sf(x, 16000, fmt, subtype)
    expected, _ = sf.read(io.BytesIO(data), dtype="float32")
    dec = StreamDecoder("wav")
    y = np.concatenate([dec.push(data[i : i + 7]) for i in range(0, len(data), 7)] + [dec.close()])
    assert dec.rate == 16000
    np.testing.assert_allclose(y, expected.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize(("subtype", "decode"), [("ALAW", decode_pcma), ("ULAW", decode_pcmu)])
def test_wav_stream_g711(subtype, decode):
    data = encode_sf(tone(8000, 0.2), 8000, "WAV", subtype)
    payload = data[data.index(b"data") + 8 :]
    dec = StreamDecoder("wav")
    np.testing.assert_array_equal(np.concatenate([dec.push(data), dec.close()]), decode(payload))


def wav_bytes(pcm: bytes, rate: int, data_size: int, extra_chunks: bytes = b"") -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + extra_chunks
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
        + pcm
    )


def test_wav_stream_unknown_size_skipped_chunks_and_trailer():
    pcm = (tone(16000, 0.1) * 32767).astype("<i2").tobytes()
    expected = decode_pcm16(pcm)
    odd_list = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\x00"  # odd size: one pad byte
    for size in (0, 0xFFFFFFFF):  # what writers that cannot seek back put there
        dec = StreamDecoder("wav")
        got = np.concatenate([dec.push(wav_bytes(pcm, 16000, size, odd_list)), dec.close()])
        np.testing.assert_array_equal(got, expected)
    # RF64 keeps its sizes in a ds64 chunk: the 32-bit data size means nothing, read to the end.
    rf64 = b"RF64" + wav_bytes(pcm, 16000, 4)[4:]
    dec = StreamDecoder("wav")
    got = np.concatenate([dec.push(rf64[:20]), dec.push(rf64[20:]), dec.close()])
    np.testing.assert_array_equal(got, expected)
    # A real size: bytes after the data chunk (metadata) are not audio.
    dec = StreamDecoder("wav")
    data = wav_bytes(pcm, 16000, len(pcm)) + b"LIST" + struct.pack("<I", 4) + b"junk"
    np.testing.assert_array_equal(np.concatenate([dec.push(data), dec.close()]), expected)


@pytest.mark.parametrize(
    "data",
    [
        b"RIFX" + bytes(100),
        b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00",  # data before fmt
        wav_bytes(b"", 16000, 0).replace(struct.pack("<HH", 1, 1), struct.pack("<HH", 0x55, 1)),
    ],
    ids=["not-riff", "data-before-fmt", "mp3-in-wav"],
)
def test_wav_stream_rejects_bad_headers(data):
    dec = StreamDecoder("wav")
    with pytest.raises(AudioFormatError):
        dec.push(data)
        dec.close()


def test_wav_stream_ends_before_data():
    dec = StreamDecoder("wav")
    assert len(dec.push(b"RIFF\x00\x00\x00\x00WA")) == 0
    with pytest.raises(AudioFormatError, match="before its data"):
        dec.close()


def test_wav_stream_memory_is_bounded():
    dec = StreamDecoder("wav")
    dec.push(wav_bytes(b"", 16000, 0))
    chunk = (tone(16000, 0.02) * 30000).astype("<i2").tobytes()
    total = 0
    for _ in range(500):
        total += len(dec.push(chunk[:-1]))  # odd chunk sizes: a byte is always pending
        total += len(dec.push(chunk[-1:]))
        assert len(dec._impl._pending) < 2
    assert total == 500 * len(chunk) // 2
