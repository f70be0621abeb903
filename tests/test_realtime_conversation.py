"""Realtime conversation sessions (text) on `/v1/realtime`, raw and through the openai SDK."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from openai import AsyncOpenAI

from engine.chat import load_qwen3
from engine.sampling import SamplingParams
from tests.clients import RealtimeClient, pcm16
from tests.qwen3_golden import checkpoint, engine
from tests.server import make_server, running
from tests.tone_asr import ToneAsr, tone_audio

pytestmark = pytest.mark.anyio
INSTRUCTIONS = "You are terse."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return checkpoint("untied", tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="module")
def served(model_dir):
    model = load_qwen3(model_dir, "tiny-chat")
    server = make_server([ToneAsr(), model])
    with running(server) as url:
        yield server, url
    model.engine.shutdown()


def reference(model_dir, messages: list[dict], n: int) -> tuple[str, str]:
    eng = engine(model_dir)
    text = eng.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    req = eng.add(eng.tokenizer.encode(text), SamplingParams(temperature=0, max_tokens=n))
    out = ""
    while eng.has_work():
        out += "".join(o.text for o in eng.step())
    return out, req.finish_reason


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def conversation(url: str) -> RealtimeClient:
    c = await RealtimeClient.connect(url, query="model=tiny-chat")
    created = await c.recv()
    assert created["session"]["type"] == "realtime" and created["session"]["model"] == "tiny-chat"
    session = {"type": "realtime", "instructions": INSTRUCTIONS, "temperature": 0}
    await c.send("session.update", session=session)
    await c.wait_for("session.updated")
    return c


async def test_a_reply_streams_and_joins_the_conversation(model_dir, served):
    c = await conversation(served[1])
    await c.send("conversation.item.create", item=user("Name a colour."))
    added = await c.wait_for("conversation.item.added")
    assert added["item"]["role"] == "user" and added["previous_item_id"] is None
    await c.send("response.create", response={"max_output_tokens": 12})
    done = await c.wait_for("response.done")
    want, finish = reference(
        model_dir,
        [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": "Name a colour."},
        ],
        12,
    )
    deltas = "".join(e["delta"] for e in c.of("response.output_text.delta"))
    assert deltas == want == c.of("response.output_text.done")[0]["text"]
    assert done["response"]["status"] == ("incomplete" if finish == "length" else "completed")
    assert done["response"]["output"][0]["content"][0]["text"] == want
    assert done["response"]["usage"]["output_tokens"] <= 12
    order = [e["type"] for e in c.events if e["type"].startswith("response.")]
    assert order[:3] == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert order[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    # the reply is now part of the conversation: a second turn sees it
    await c.send("conversation.item.create", item=user("Another."))
    await c.send("response.create", response={"max_output_tokens": 8})
    c.events.clear()
    await c.wait_for("response.done")
    history = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": want},
        {"role": "user", "content": "Another."},
    ]
    want2, _ = reference(model_dir, history, 8)
    assert "".join(e["delta"] for e in c.of("response.output_text.delta")) == want2
    await c.close()


async def test_cancel_stops_the_reply_and_frees_the_engine(served):
    server, url = served
    c = await conversation(url)
    await c.send("conversation.item.create", item=user("Talk for a long time."))
    await c.send("response.create", response={"max_output_tokens": 400})
    await c.wait_for("response.output_text.delta")
    await c.send("response.create")
    busy = await c.wait_for("error")
    assert busy["error"]["code"] == "conversation_already_has_active_response"
    await c.send("response.cancel")
    done = await c.wait_for("response.done")
    assert done["response"]["status"] in ("cancelled", "completed")  # it may have just ended
    eng = server.models["tiny-chat"].engine.engine
    for _ in range(200):
        if not eng.has_work() and eng.blocks.num_free == eng.blocks.num_blocks:
            break
        await asyncio.sleep(0.02)
    assert not eng.has_work() and eng.blocks.num_free == eng.blocks.num_blocks
    await c.send("response.cancel")
    assert (await c.wait_for("error"))["error"]["code"] == "response_cancel_not_active"
    await c.close()


async def test_items_out_of_place_and_bad_requests(served):
    c = await conversation(served[1])
    await c.send("input_audio_buffer.append", audio="AAAA")  # speech goes in, but whole samples
    assert (await c.wait_for("error"))["error"]["code"] == "invalid_audio"
    audio_item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "audio": "AA=="}],
    }
    await c.send("conversation.item.create", item=audio_item)
    assert (await c.wait_for("error"))["error"]["param"] == "item.content[0]"
    await c.send("response.create", response={"output_modalities": ["audio"]})
    assert (await c.wait_for("error"))["error"]["param"] == "response.output_modalities"
    await c.send("response.create")
    assert (await c.wait_for("error"))["error"]["code"] == "invalid_value"  # nothing to answer
    await c.send("conversation.item.create", item=user("first"))
    first = (await c.wait_for("conversation.item.added"))["item"]["id"]
    await c.send("conversation.item.create", item=user("zeroth"), previous_item_id="root")
    assert (await c.wait_for("conversation.item.added"))["previous_item_id"] is None
    await c.send("conversation.item.delete", item_id=first)
    assert (await c.wait_for("conversation.item.deleted"))["item_id"] == first
    await c.send("conversation.item.delete", item_id=first)
    assert (await c.wait_for("error"))["error"]["code"] == "item_not_found"
    await c.close()


async def test_a_transcription_session_can_become_a_conversation(served):
    c = await RealtimeClient.connect(served[1])
    assert (await c.recv())["session"]["type"] == "transcription"
    await c.send(
        "session.update", session={"type": "realtime", "model": "tiny-chat", "temperature": 0}
    )
    updated = await c.wait_for("session.updated")
    assert updated["session"]["type"] == "realtime"
    await c.send(
        "session.update",
        session={"type": "transcription", "audio": {"input": {"turn_detection": None}}},
    )
    updated = await c.wait_for("session.updated")
    assert updated["session"]["type"] == "transcription"
    await c.append(pcm16(tone_audio("back", rate=24_000)))
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "back"
    await c.close()


async def test_sdk_conversation(model_dir, served):
    client = AsyncOpenAI(api_key="unused", websocket_base_url=f"ws://{served[1]}/v1")
    async with client.realtime.connect(model="tiny-chat") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": INSTRUCTIONS,
                "output_modalities": ["text"],
                "temperature": 0,
            }
        )
        await conn.conversation.item.create(item=user("Name a colour."))
        await conn.response.create(response={"max_output_tokens": 12})
        text = ""
        async for event in conn:
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.done":
                break
    want, _ = reference(
        model_dir,
        [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": "Name a colour."},
        ],
        12,
    )
    assert text == want and event.response.status in ("completed", "incomplete")


async def test_voice_assistant_on_one_socket(served):
    """Speech -> VAD turn -> transcript -> a reply streamed back; speaking again cancels it."""
    from tests.test_realtime import silence, speech

    c = await RealtimeClient.connect(served[1], query="model=tiny-chat")
    created = await c.recv()
    assert created["session"]["audio"]["input"]["turn_detection"]["create_response"] is True
    session = {
        "type": "realtime",
        "instructions": INSTRUCTIONS,
        "temperature": 0,
        "max_output_tokens": 200,
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
    }
    await c.send("session.update", session=session)
    await c.wait_for("session.updated")
    turn = pcm16(np.concatenate([silence(300), speech(), silence(900)]))
    await c.append(turn, chunk=6400)
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"]
    created = await c.wait_for("response.created")
    await c.wait_for("response.output_text.delta")
    await c.append(turn, chunk=6400)  # the user speaks again while the reply streams
    first = await c.wait_for("response.done")
    assert first["response"]["id"] == created["response"]["id"]
    assert first["response"]["status"] == "cancelled", first["response"]["status"]
    second = await c.wait_for("response.done", timeout=30)
    assert second["response"]["id"] != first["response"]["id"]
    # the second reply answered a conversation holding both turns and the first reply's text
    users = [e for e in c.of("conversation.item.added") if e["item"]["role"] == "user"]
    assert len(users) == 2
    await c.close()
