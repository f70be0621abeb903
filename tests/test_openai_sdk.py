"""The official `openai` SDK's realtime client against our `/v1/realtime`."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from openai import AsyncOpenAI

from tests.clients import at_rate, pcm16
from tests.server import make_server, running
from tests.test_realtime import silence, speech
from tests.tone_asr import tone_audio

pytestmark = pytest.mark.anyio
KEY = "sk-sdk"


async def events_until(conn, stop_type: str, count: int = 1) -> list:
    seen = []
    async for event in conn:
        seen.append(event)
        if event.type == stop_type:
            count -= 1
            if count == 0:
                return seen
    raise AssertionError("connection closed early")


async def test_sdk_transcription_session_with_client_commits():
    with running(make_server(api_key=KEY)) as url:
        client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"ws://{url}/v1")
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                            "turn_detection": None,
                        }
                    },
                }
            )
            audio = pcm16(at_rate(tone_audio("sdk works"), 24_000))
            for i in range(0, len(audio), 9600):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(audio[i : i + 9600]).decode()
                )
            await conn.input_audio_buffer.commit()
            seen = await events_until(conn, "conversation.item.input_audio_transcription.completed")
    types = [e.type for e in seen]
    assert types[0] == "session.created" and "session.updated" in types
    assert "input_audio_buffer.committed" in types and "conversation.item.added" in types
    deltas = [e.delta for e in seen if e.type.endswith("transcription.delta")]
    assert seen[-1].transcript == "sdk works" == "".join(deltas)


async def test_sdk_server_vad_turns():
    audio = np.concatenate([silence(800), speech("weather"), silence(1200)])
    with running(make_server()) as url:
        client = AsyncOpenAI(api_key="unused", websocket_base_url=f"ws://{url}/v1")
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 16000},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                        }
                    },
                }
            )
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm16(audio)).decode())
            seen = await events_until(conn, "conversation.item.input_audio_transcription.completed")
    started = next(e for e in seen if e.type == "input_audio_buffer.speech_started")
    stopped = next(e for e in seen if e.type == "input_audio_buffer.speech_stopped")
    assert started.item_id == stopped.item_id == seen[-1].item_id
    assert 300 <= started.audio_start_ms <= 800 < stopped.audio_end_ms
