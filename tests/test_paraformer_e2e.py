"""Paraformer models end to end over every protocol: FunASR's, /v1/realtime and /v1/stream."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest

from engine.chunked import load_paraformer
from engine.runtime import Runtime
from engine.sensevoice_asr import load_sensevoice
from tests.clients import FunasrClient, NativeClient, RealtimeClient, funasr_text, pcm16
from tests.server import make_server, running
from tests.tiny_models import FIXTURES, build_paraformer, build_sensevoice, paraformer_audio

pytestmark = pytest.mark.anyio


@cache
def golden() -> dict:
    return json.loads((FIXTURES / "paraformer" / "golden.json").read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("paraformer")
    runtime = Runtime()
    online = load_paraformer(
        build_paraformer(root / "online", streaming=True), "para-online", runtime=runtime
    )
    offline = load_paraformer(build_paraformer(root / "offline"), "para-offline", runtime=runtime)
    sensevoice = load_sensevoice(sensevoice_dir(root), "sensevoice", runtime=runtime)
    with running(make_server([online, offline, sensevoice])) as url:
        yield url
    runtime.shutdown()


def sensevoice_dir(root):
    folder = root / "sensevoice"
    if not folder.exists():
        build_sensevoice(folder)
    return folder


def speech() -> np.ndarray:
    return paraformer_audio(golden()["streaming"]["stream_4s"]["audio"])


def streamed_text() -> str:
    """funasr's streaming output for the clip, call by call, joined (each call's text is final)."""
    return "".join(c["text"] for c in golden()["streaming"]["stream_4s"]["calls"])


async def test_funasr_protocol_online_mode_streams_the_reference_text(served):
    c = await FunasrClient.connect(served, "/?model=para-online")
    results = await c.transcribe(pcm16(speech()), mode="online", wav_name="clip", vad=None)
    assert funasr_text(results, "online") == streamed_text()


async def test_funasr_protocol_offline_mode_uses_the_offline_model(served):
    c = await FunasrClient.connect(served, "/v1/funasr?model=para-offline")
    results = await c.transcribe(pcm16(speech()), mode="offline", wav_name="clip", vad=None)
    assert funasr_text(results, "offline") == golden()["offline"]["speech_4s"]["text"]


async def test_realtime_and_native_protocols(served):
    c = await RealtimeClient.connect(served, query="model=para-online")
    await c.recv()
    await c.send(
        "session.update",
        session={
            "type": "transcription",
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
            },
        },
    )
    await c.append(pcm16(speech()), chunk=19200)
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == streamed_text()
    await c.close()
    n = await NativeClient.connect(served)
    await n.send("start", model="para-offline", format="pcm16", rate=16000, vad=None)
    await n.recv()
    await n.audio(pcm16(speech()), chunk=32000)
    await n.send("end")
    final = await n.wait_for("final")
    assert final["text"] == golden()["offline"]["speech_4s"]["text"]


async def test_two_pass_over_funasrs_2pass_mode(served):
    c = await FunasrClient.connect(served, "/?model=para-online%2Bpara-offline")
    results = await c.transcribe(pcm16(speech()), mode="2pass", wav_name="clip", vad=None)
    live = funasr_text(results, "2pass-online")  # the first pass, until the second one is done
    assert live and streamed_text().startswith(live)
    assert funasr_text(results, "2pass-offline") == golden()["offline"]["speech_4s"]["text"]


async def test_two_pass_keeps_the_contract_on_realtime_and_stream(served):
    offline_text = golden()["offline"]["speech_4s"]["text"]
    c = await RealtimeClient.connect(served)
    await c.recv()
    session = {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None,
        "transcription": {"model": "para-online+para-offline"}}}}  # fmt: skip
    await c.send("session.update", session=session)
    await c.append(pcm16(speech()), chunk=19200)
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    partials = c.of("rtserve.transcription.partial")
    *live, last = partials
    assert live and all(p["stable"] == "" for p in live)  # the first pass is never stable
    assert streamed_text().startswith(live[-1]["unstable"])
    assert last["stable"] == offline_text and last["unstable"] == ""  # the second pass is
    assert done["transcript"] == offline_text
    deltas = c.of("conversation.item.input_audio_transcription.delta")
    assert "".join(d["delta"] for d in deltas) == offline_text
    await c.close()
    n = await NativeClient.connect(served)
    await n.send("start", model="para-online+para-offline", format="pcm16", rate=16000, vad=None)
    await n.recv()
    await n.audio(pcm16(speech()), chunk=32000)
    await n.send("end")
    assert (await n.wait_for("final"))["text"] == offline_text
    bad = await NativeClient.connect(served)
    await bad.send("start", model="para-online+nope")
    assert (await bad.wait_for("error"))["code"] == "model_not_found"


async def test_two_pass_with_sensevoice_as_the_second_pass(served):
    c = await FunasrClient.connect(served, "/?model=para-online%2Bsensevoice")
    results = await c.transcribe(pcm16(speech()), mode="2pass", wav_name="clip", vad=None)
    offline = [r for r in results if r["mode"] == "2pass-offline" and r["text"]]
    assert len(offline) == 1
    n = await NativeClient.connect(served)
    await n.send("start", model="sensevoice", format="pcm16", rate=16000, vad=None, use_itn=True)
    await n.recv()
    await n.audio(pcm16(speech()), chunk=32000)
    await n.send("end")
    final = await n.wait_for("final")
    assert final["text"] == offline[0]["text"]  # FunASR clients ask for itn by default
    assert set(final["tags"]) >= {"emotion", "event"}  # SenseVoice's rich tags reach the client
