"""`POST /v1/audio/transcriptions` through the openai SDK and plain HTTP."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.test_realtime import silence, speech


def wav(x: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV")
    return buf.getvalue()


@pytest.fixture
def two_turns() -> bytes:
    return wav(
        np.concatenate([silence(500), speech(), silence(1200), speech("weather"), silence(800)])
    )


def test_transcription_formats(url, two_turns):
    client = openai.OpenAI(api_key="x", base_url=f"http://{url}/v1", max_retries=0)
    verbose = client.audio.transcriptions.create(
        model="tone-asr", file=("a.wav", two_turns), response_format="verbose_json"
    )
    assert len(verbose.segments) >= 2
    assert verbose.text == " ".join(s.text for s in verbose.segments)
    assert verbose.segments[0].start == pytest.approx(0.2, abs=0.25)
    assert all(
        a.end <= b.start for a, b in zip(verbose.segments, verbose.segments[1:], strict=False)
    )
    plain = client.audio.transcriptions.create(model="tone-asr", file=("a.wav", two_turns))
    assert plain.text == verbose.text
    text = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", two_turns), response_format="text"
    )
    assert text.strip() == verbose.text
    srt = httpx.post(
        f"http://{url}/v1/audio/transcriptions",
        files={"file": ("a.wav", two_turns)},
        data={"response_format": "srt"},
    ).text
    assert srt.startswith("1\n00:00:00,") and " --> " in srt


def test_transcription_streams_stable_text(url, two_turns):
    with httpx.stream(
        "POST",
        f"http://{url}/v1/audio/transcriptions",
        files={"file": ("a.wav", two_turns)},
        data={"stream": "true"},
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    done = events[-1]
    assert done["type"] == "transcript.text.done" and deltas
    assert "".join(deltas) == done["text"]


def test_transcription_other_containers(url):
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([silence(300), speech(), silence(700)]), 16000, format="OGG")
    r = httpx.post(
        f"http://{url}/v1/audio/transcriptions", files={"file": ("a.ogg", buf.getvalue())}
    )
    assert r.status_code == 200 and r.json()["text"]


def test_transcription_errors(url):
    post = lambda **kw: httpx.post(f"http://{url}/v1/audio/transcriptions", **kw)  # noqa: E731
    r = post(files={"file": ("a.wav", b"not audio at all")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = post(data={"model": "tone-asr"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = post(files={"file": ("a.wav", wav(speech()))}, data={"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(files={"file": ("a.wav", wav(speech()))}, data={"response_format": "xml"})
    assert r.status_code == 400
    r = post(files={"file": ("a.wav", wav(speech()))}, data={"language": "xx"})
    assert r.status_code == 400 and "language" in r.json()["error"]["message"]
    r = post(content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_word_timestamps_are_asked_for_properly(url):
    """timestamp_granularities[]: verbose_json only, `segment` or `word`, and words only from a
    model that times them (tone-asr does not; FireRedASR2 does: tests/test_fireredasr2.py)."""
    post = lambda **kw: httpx.post(f"http://{url}/v1/audio/transcriptions", **kw)  # noqa: E731
    audio = {"file": ("a.wav", wav(speech()))}
    param = "timestamp_granularities"
    r = post(files=audio, data={"timestamp_granularities[]": "word"})
    assert r.status_code == 400 and "verbose_json" in r.json()["error"]["message"]
    r = post(files=audio, data={"response_format": "verbose_json", f"{param}[]": "letter"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    r = post(files=audio, data={"response_format": "verbose_json", f"{param}[]": "word"})
    assert r.status_code == 400 and "word timestamps" in r.json()["error"]["message"]
    r = post(files=audio, data={"response_format": "verbose_json", f"{param}[]": "segment"})
    assert r.status_code == 200 and r.json()["segments"] and "words" not in r.json()
