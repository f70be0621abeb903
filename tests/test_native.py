"""`/v1/stream` (msgpack) against a real server on loopback."""

from __future__ import annotations

import io
import itertools

import av
import msgpack
import numpy as np
import pytest
import soundfile as sf

from tests.clients import NativeClient, at_rate, pcm16
from tests.server import make_server, running
from tests.tone_asr import tone_audio

pytestmark = pytest.mark.anyio


async def started(url: str, **start) -> NativeClient:
    c = await NativeClient.connect(url)
    await c.send("start", **{"vad": None, **start})
    ready = await c.recv()
    assert ready["type"] == "ready", ready
    return c


async def test_stream_partials_finals_and_end(url):
    c = await started(url, format="pcm16", rate=16000, language="fr")
    assert c.events[0]["model"] == "tone-asr" and c.events[0]["vad"] is None
    await c.audio(pcm16(tone_audio("one two")))
    await c.send("commit")
    first = await c.wait_for("final")
    await c.audio(pcm16(tone_audio("three")))
    await c.send("end")
    second = await c.wait_for("final")
    assert (await c.wait_for("done"))["type"] == "done"
    await c.ws.wait_closed()
    assert c.ws.close_code == 1000
    assert (first["segment"], first["text"], first["language"]) == (0, "one two", "fr")
    assert (first["start_ms"], first["end_ms"]) == (0, 700)
    assert (second["segment"], second["text"]) == (1, "three")
    assert (second["start_ms"], second["end_ms"]) == (700, 1200)
    partials = [e for e in c.of("partial") if e["segment"] == 0]
    for a, b in itertools.pairwise(partials):
        assert b["stable"].startswith(a["stable"]) and b["revision"] > a["revision"]
    assert partials[-1]["stable"] + partials[-1]["unstable"] in ("one two", "one tw")


@pytest.mark.parametrize("rate", [8000, 24000, 48000])
async def test_pcm16_at_other_rates(url, rate):
    c = await started(url, format="pcm16", rate=rate)
    await c.audio(pcm16(at_rate(tone_audio("rates"), rate)))
    await c.send("end")
    assert (await c.wait_for("final"))["text"] == "rates"


async def test_f32_audio(url):
    c = await started(url, format="f32", rate=16000)
    await c.audio(tone_audio("float").astype("<f4").tobytes())
    await c.send("end")
    assert (await c.wait_for("final"))["text"] == "float"


def encode(container: str, x: np.ndarray, rate: int = 16000) -> bytes:
    if container in ("wav", "flac"):
        buf = io.BytesIO()
        sf.write(buf, x, rate, format=container.upper())
        return buf.getvalue()
    codec = {"ogg": "libopus", "webm": "libopus", "mp3": "libmp3lame"}[container]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        s = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in s.encode(frame):
            out.mux(packet)
        for packet in s.encode(None):
            out.mux(packet)
    return buf.getvalue()


def letters(text: str) -> str:
    """Runs of one letter collapsed: codec delays shift the tone transcriber's 100 ms grid."""
    return " ".join("".join(k for k, _ in itertools.groupby(w)) for w in text.split())


@pytest.mark.parametrize("container", ["wav", "flac", "ogg", "webm", "mp3"])
async def test_containers_stream_in_chunks(url, container):
    rate = 16000 if container != "ogg" else 48000
    x = at_rate(tone_audio("aaaaa bbbbb"), rate)
    data = encode(container, x, rate)
    c = await started(url, format=container)
    await c.audio(data, chunk=max(len(data) // 8, 1))
    partial = await c.wait_for("partial")  # text before the stream is complete
    assert partial["segment"] == 0
    await c.send("end")
    final = await c.wait_for("final")
    assert letters(final["text"]) == "a b"


async def test_undecodable_container(url):
    c = await started(url, format="webm")
    await c.audio(b"this is not a webm file at all" * 100)
    await c.send("end")
    err = await c.wait_for("error")
    assert err["code"] == "invalid_audio"
    await c.wait_for("done")


@pytest.mark.parametrize(
    "frames, code",
    [
        ([msgpack.packb(b"\x00\x00")], "not_started"),
        ([msgpack.packb({"type": "commit"})], "not_started"),
        (["a text frame"], "invalid_frame"),
        ([b"\xc1\xc1"], "invalid_msgpack"),
        ([msgpack.packb([1, 2])], "invalid_message"),
        ([msgpack.packb({"type": "dance"})], "unknown_type"),
        ([msgpack.packb({"type": "start", "model": "nope"})], "model_not_found"),
        ([msgpack.packb({"type": "start", "format": "aiff"})], "invalid_format"),
        ([msgpack.packb({"type": "start", "format": "pcm16", "rate": "fast"})], "invalid_rate"),
        ([msgpack.packb({"type": "start", "format": "pcm16", "rate": 96000})], "invalid_start"),
        ([msgpack.packb({"type": "start", "colour": "red"})], "invalid_start"),
        ([msgpack.packb({"type": "start", "vad": {"threshold": 2}})], "invalid_value"),
        (
            [msgpack.packb({"type": "start", "vad": None}), msgpack.packb({"type": "start"})],
            "already_started",
        ),
        ([msgpack.packb({"type": "start", "vad": None}), msgpack.packb(b"\x00")], "invalid_audio"),
    ],
)
async def test_bad_messages_get_errors_and_the_stream_goes_on(url, frames, code):
    c = await NativeClient.connect(url)
    for f in frames:
        await c.ws.send(f)
    err = await c.wait_for("error")
    assert err["code"] == code, err
    if not c.of("ready"):
        await c.send("start", vad=None)
        await c.wait_for("ready")
    await c.audio(pcm16(tone_audio("ok")))
    await c.send("end")
    assert (await c.wait_for("final"))["text"] == "ok"


async def test_commit_with_no_audio(url):
    c = await started(url)
    await c.send("commit")
    assert (await c.wait_for("error"))["code"] == "input_audio_buffer_commit_empty"


async def test_lag_reports():
    with running(make_server()) as url:
        c = await started(url)
        lag = await c.wait_for("lag", timeout=3)
        assert set(lag) == {"type", "buffered_ms", "lag_ms", "dropped_ms"}


async def test_busy_server_refuses_with_retry_after():
    with running(make_server(max_sessions=1)) as url:
        first = await started(url)
        second = await NativeClient.connect(url)
        err = await second.recv()
        assert err["code"] == "server_busy" and err["retry_after"] > 0
        await second.ws.wait_closed()
        assert second.ws.close_code == 1013
        await first.send("end")
        await first.wait_for("done")
