"""The embedded model (models/default, trained by train/) end to end: held-out espeak-ng
utterances (unseen voices and sentences, tests/fixtures/heldout) over every protocol, each
transcript scored by word error rate against the text that was spoken."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf

from engine.loader import default_spec, load
from engine.runtime import Runtime
from tests.clients import NativeClient, RealtimeClient, at_rate, pcm16
from tests.server import make_server, running
from tests.tiny_models import FIXTURES
from train.wer import wer

HELDOUT = FIXTURES / "heldout"
# The shipped model's WER on the whole held-out set is in docs/benchmarks.md: 7.5% as made, 10.3%
# with this half second of silence after each utterance (`train.evaluate --silence 0.5`). These
# eight utterances (71 words: six voice-demo sentences, two random word sequences) are a sample
# of it; one garbled sentence costs about 0.1, and a model that does not read the audio fails.
MAX_WER = 0.2
TAIL = np.zeros(8000, np.float32)  # 0.5 s of silence after the speech, as a speaker pauses


def utterances() -> list[tuple[Path, str]]:
    rows = [json.loads(line) for line in (HELDOUT / "heldout.jsonl").read_text().splitlines()]
    return [(HELDOUT / r["audio"], r["text"]) for r in rows]


def audio(path: Path) -> np.ndarray:
    x, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    return np.concatenate([x, TAIL])


@pytest.fixture(scope="module")
def served():
    runtime = Runtime()
    model = load(default_spec(), runtime=runtime, device="cpu")
    with running(make_server([model])) as url:
        yield model.name, url
    runtime.shutdown()


async def realtime(url: str, x: np.ndarray, binary: bool) -> str:
    c = await RealtimeClient.connect(url)
    await c.recv()  # session.created
    session = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
    await c.send("session.update", session=session)
    data = pcm16(at_rate(x, 24_000))  # the session's default format: PCM16 at 24 kHz
    if binary:
        for i in range(0, len(data), 4800):
            await c.ws.send(data[i : i + 4800])
    else:
        await c.append(data)
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed", timeout=120)
    await c.close()
    return done["transcript"]


async def native(url: str, x: np.ndarray) -> str:
    c = await NativeClient.connect(url)
    await c.send("start", format="f32", rate=16000, vad=None)
    await c.recv()
    await c.audio(x.astype("<f4").tobytes(), chunk=6400)
    await c.send("end")
    final = await c.wait_for("final", timeout=120)
    await c.wait_for("done", timeout=120)
    await c.close()
    return final["text"]


@pytest.mark.anyio
@pytest.mark.parametrize("binary", [False, True], ids=["json-frames", "binary-frames"])
async def test_realtime_transcribes_held_out_speech(served, binary):
    pairs = [(text, await realtime(served[1], audio(p), binary)) for p, text in utterances()]
    assert wer(pairs) <= MAX_WER, pairs


@pytest.mark.anyio
async def test_native_stream_transcribes_held_out_speech(served):
    pairs = [(text, await native(served[1], audio(p))) for p, text in utterances()]
    assert wer(pairs) <= MAX_WER, pairs


def test_transcriptions_endpoint_transcribes_held_out_files(served):
    client = openai.OpenAI(api_key="x", base_url=f"http://{served[1]}/v1", max_retries=0)
    pairs = []
    for path, text in utterances():  # the Ogg/Opus files as they are: the server decodes them
        out = client.audio.transcriptions.create(
            model=served[0], file=(path.name, path.read_bytes())
        )
        pairs.append((text, out.text))
    assert wer(pairs) <= MAX_WER, pairs
