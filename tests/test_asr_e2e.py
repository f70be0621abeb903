"""Every protocol end to end on a real tiny Qwen3-ASR checkpoint, beside a tiny chat model."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import torch
from openai import AsyncOpenAI

from audio.features import whisper_features
from engine.asr import build_qwen3_asr, load_qwen3_asr
from engine.asr_prompt import build_prompt, parse_output
from engine.chat import load_qwen3
from engine.config import EngineConfig
from engine.engine import Engine
from engine.request import InjectedEmbeds
from engine.rollback import RollbackConfig
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from tests.clients import NativeClient, RealtimeClient, at_rate, pcm16
from tests.qwen3_golden import checkpoint as chat_checkpoint
from tests.server import make_server, running
from tests.tiny_models import build_qwen3_asr as build_checkpoint
from tests.tiny_models import qwen3_asr_audio

CPU = dict(device="cpu", dtype=torch.float32, block_size=4, num_blocks=4096)
SHORT = qwen3_asr_audio("hello_3s")[: int(1.9 * 16000)]  # under one step: a single decode


@pytest.fixture(scope="module")
def asr_dir(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("asr") / "tiny", seed=0)


@pytest.fixture(scope="module")
def served(asr_dir, tmp_path_factory):
    runtime = Runtime()
    asr = load_qwen3_asr(
        asr_dir, "tiny-asr", runtime=runtime, rollback=RollbackConfig(max_new_tokens=12), **CPU
    )
    chat = load_qwen3(
        chat_checkpoint("untied", tmp_path_factory.mktemp("chat")), "tiny-chat", runtime=runtime
    )
    server = make_server([asr, chat])
    with running(server) as url:
        yield server, url
    runtime.shutdown()


@pytest.fixture(scope="module")
def expected(asr_dir) -> str:
    """What the model says for SHORT in one decode: the transcript every protocol must give."""
    model, tok = build_qwen3_asr(asr_dir, EngineConfig(**CPU))
    engine = Engine(model.decoder, tok, EngineConfig(**CPU))
    feats, _ = whisper_features(torch.from_numpy(SHORT))
    with torch.inference_mode():
        enc = model.encoder(feats[0])
    prompt = build_prompt(tok)
    req = engine.add(
        prompt.ids(tok, enc.shape[0]),
        SamplingParams(temperature=0, max_tokens=12),
        embeds=[InjectedEmbeds(prompt.audio_start(), enc)],
    )
    while engine.has_work():
        engine.step()
    return parse_output(tok.decode(req.output_ids, skip_special_tokens=True))[1]


def test_models_listed(served):
    kinds = {m["id"]: m["kind"] for m in httpx.get(f"http://{served[1]}/v1/models").json()["data"]}
    assert kinds == {"tiny-asr": "asr", "tiny-chat": "chat"}


@pytest.mark.anyio
async def test_realtime_websocket(served, expected):
    c = await RealtimeClient.connect(served[1])
    assert (await c.recv())["session"]["audio"]["input"]["transcription"]["model"] == "tiny-asr"
    session = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
    await c.send("session.update", session=session)
    await c.append(pcm16(at_rate(SHORT, 24_000)))
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == expected
    deltas = "".join(e["delta"] for e in c.of("conversation.item.input_audio_transcription.delta"))
    assert deltas == expected
    await c.close()


@pytest.mark.anyio
async def test_realtime_sdk_long_stream_keeps_the_contract(served):
    client = AsyncOpenAI(api_key="x", websocket_base_url=f"ws://{served[1]}/v1")
    audio = qwen3_asr_audio("stream_9s")
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 16000},
                        "turn_detection": None,
                    }
                },
            }
        )
        for i in range(0, audio.size, 3200):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(pcm16(audio[i : i + 3200])).decode()
            )
        await conn.input_audio_buffer.commit()
        deltas, partials = [], []
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.delta":
                deltas.append(event.delta)
            elif event.type == "rtserve.transcription.partial":
                partials.append(event)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                break
    assert "".join(deltas) == event.transcript
    stables = [p.stable for p in partials]
    assert all(b.startswith(a) for a, b in zip(stables, stables[1:], strict=False))


@pytest.mark.anyio
async def test_native_stream(served, expected):
    c = await NativeClient.connect(served[1])
    await c.send("start", format="f32", rate=16000, vad=None)
    assert (await c.recv())["model"] == "tiny-asr"
    await c.audio(SHORT.astype("<f4").tobytes(), chunk=6400)
    await c.send("end")
    final = await c.wait_for("final")
    assert final["text"] == expected and (final["start_ms"], final["end_ms"]) == (0, 1900)
    await c.wait_for("done")


def test_transcriptions_endpoint(served, expected):
    buf = io.BytesIO()
    sf.write(
        buf,
        np.concatenate([np.zeros(8000, np.float32), qwen3_asr_audio("hello_3s")]),
        16000,
        format="WAV",
    )
    client = openai.OpenAI(api_key="x", base_url=f"http://{served[1]}/v1", max_retries=0)
    out = client.audio.transcriptions.create(
        model="tiny-asr", file=("a.wav", buf.getvalue()), response_format="verbose_json"
    )
    assert out.segments and out.text == " ".join(s.text for s in out.segments)
    assert 0.0 <= out.segments[0].start < 0.6


def test_rtserve_transcribe_cli(asr_dir, tmp_path, expected):
    import subprocess
    import sys

    path = tmp_path / "short.wav"
    sf.write(
        path,
        np.concatenate([np.zeros(4000, np.float32), SHORT, np.zeros(16000, np.float32)]),
        16000,
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtserve",
            "transcribe",
            str(path),
            "--model",
            str(asr_dir),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "text" in r.stdout
