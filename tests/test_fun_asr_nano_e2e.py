"""Fun-ASR-Nano end to end on a real tiny checkpoint over every protocol: /v1/realtime,
/v1/stream, FunASR's (hotwords and itn from the client's config) and /v1/audio/transcriptions."""

from __future__ import annotations

import io

import numpy as np
import openai
import pytest
import soundfile as sf
import torch

from audio.pcm import decode_pcm16
from engine.config import EngineConfig
from engine.engine import Engine
from engine.fun_asr_nano_asr import (
    NanoWorker,
    build_fun_asr_nano,
    build_prompt,
    clean_text,
    load_fun_asr_nano,
)
from engine.request import InjectedEmbeds
from engine.rollback import RollbackConfig
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from tests.clients import FunasrClient, NativeClient, RealtimeClient, funasr_text, pcm16
from tests.server import make_server, running
from tests.tiny_models import build_fun_asr_nano as build_checkpoint
from tests.tiny_models import qwen3_asr_audio

pytestmark = pytest.mark.anyio
CPU = dict(device="cpu", dtype=torch.float32, block_size=4, num_blocks=2048)
MAX_NEW = 12
# under one step (a single decode); as PCM16, and the samples every protocol decodes from it
SHORT_PCM = pcm16(qwen3_asr_audio("hello_3s")[: int(1.9 * 16000)])
SHORT = decode_pcm16(SHORT_PCM)
HOTWORDS = ["阿里巴巴", "通义实验室"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("nano") / "tiny", seed=11)


@pytest.fixture(scope="module")
def served(folder):
    runtime = Runtime()
    nano = load_fun_asr_nano(
        folder, "nano", runtime=runtime, rollback=RollbackConfig(max_new_tokens=MAX_NEW), **CPU
    )
    with running(make_server([nano])) as url:
        yield url, nano
    runtime.shutdown()


@pytest.fixture(scope="module")
def expected(folder):
    """What one decode of SHORT gives, per (hotwords, language name, itn): the transcript every
    protocol must deliver."""
    config = EngineConfig(**CPU)
    model, tok, frontend, fmt = build_fun_asr_nano(folder, config)
    engine = Engine(model.llm, tok, config)
    worker = NanoWorker(model, tok, engine, RollbackConfig(), frontend)
    rows, _ = worker.encode([SHORT])[0]

    def text(hotwords=(), language=None, itn=True) -> str:
        prompt = build_prompt(tok, 0, hotwords, language, itn, fmt)
        req = engine.add(
            prompt.ids(tok, rows.shape[0]),
            SamplingParams(temperature=0, max_tokens=MAX_NEW),
            embeds=[InjectedEmbeds(prompt.audio_start(), rows)],
        )
        while engine.has_work():
            engine.step()
        return clean_text(tok.decode(req.output_ids, skip_special_tokens=True)).strip()

    out = {
        "plain": text(),
        "hotwords_no_itn": text(HOTWORDS, None, False),
        "english": text((), "英文"),
    }
    assert all(out.values()) and len(set(out.values())) == 3  # the options change the output
    return out


async def test_realtime(served, expected):
    url, _ = served
    c = await RealtimeClient.connect(url)
    await c.recv()
    session = {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None,
        "transcription": {"model": "nano", "language": "en"}}}}  # fmt: skip
    await c.send("session.update", session=session)
    await c.append(SHORT_PCM)
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == expected["english"]
    deltas = c.of("conversation.item.input_audio_transcription.delta")
    assert "".join(d["delta"] for d in deltas) == expected["english"]
    await c.close()


async def test_native_stream(served, expected):
    url, _ = served
    n = await NativeClient.connect(url)
    await n.send("start", model="nano", format="f32", rate=16000, vad=None)
    assert (await n.recv())["model"] == "nano"
    await n.audio(SHORT.astype("<f4").tobytes(), chunk=6400)
    await n.send("end")
    final = await n.wait_for("final")
    assert final["text"] == expected["plain"] and final["end_ms"] == 1900
    n = await NativeClient.connect(url)
    await n.send(
        "start", model="nano", format="pcm16", rate=16000, vad=None,
        prompt="，".join(HOTWORDS), use_itn=False,
    )  # fmt: skip
    await n.recv()
    await n.audio(SHORT_PCM, chunk=6400)
    await n.send("end")
    assert (await n.wait_for("final"))["text"] == expected["hotwords_no_itn"]


async def test_funasr_protocol_hotwords_and_itn(served, expected):
    url, _ = served
    c = await FunasrClient.connect(url, "/?model=nano")
    hotwords = '{"阿里巴巴": 20, "通义实验室": 30}'
    results = await c.transcribe(
        SHORT_PCM, mode="offline", wav_name="clip", vad=None, hotwords=hotwords, itn=False
    )
    assert funasr_text(results, "offline") == expected["hotwords_no_itn"]
    assert not any("warning" in r for r in results)  # the model reads hotwords
    results = await c.transcribe(SHORT_PCM, mode="2pass", wav_name="clip", vad=None)
    assert funasr_text(results, "2pass-offline") == expected["plain"]
    live = funasr_text(results, "2pass-online")
    assert expected["plain"].startswith(live)


async def test_transcriptions_endpoint_with_a_prompt(served):
    url, nano = served
    buf = io.BytesIO()
    silence = np.zeros(8000, np.float32)
    sf.write(
        buf,
        np.concatenate([silence, qwen3_asr_audio("hello_3s"), silence]),
        16000,
        "PCM_16",
        format="WAV",
    )
    nano.worker.trace = trace = []
    client = openai.OpenAI(api_key="x", base_url=f"http://{url}/v1", max_retries=0)
    out = client.audio.transcriptions.create(
        model="nano", file=("a.wav", buf.getvalue()), prompt="Qwen", language="en",
        response_format="verbose_json",
    )  # fmt: skip
    nano.worker.trace = None
    assert out.segments and out.text == " ".join(s.text for s in out.segments) and out.text
    tok = nano.worker.tokenizer
    prompts = {tok.decode(t.prompt_ids) for t in trace}
    assert trace and all("热词列表：[Qwen]" in p and "语音转写成英文：" in p for p in prompts)
