"""`/v1/realtime` (OpenAI Realtime, transcription sessions) against a real server on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import websockets

from tests.clients import RealtimeClient, alaw, at_rate, pcm16, ulaw
from tests.server import make_server, running
from tests.tone_asr import ToneAsr, tone_audio

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"


async def manual_session(url: str, **fmt) -> RealtimeClient:
    c = await RealtimeClient.connect(url)
    assert (await c.recv())["type"] == "session.created"
    session = {"type": "transcription", "audio": {"input": {"turn_detection": None, **fmt}}}
    await c.send("session.update", session=session)
    await c.wait_for("session.updated")
    return c


def check_contract(c: RealtimeClient, item_id: str, transcript: str) -> None:
    """Deltas add up to the transcript; the stable text of partials only grows."""
    deltas = [
        e["delta"]
        for e in c.of("conversation.item.input_audio_transcription.delta")
        if e["item_id"] == item_id
    ]
    assert "".join(deltas) == transcript
    partials = [e for e in c.of("rtserve.transcription.partial") if e["item_id"] == item_id]
    assert partials, "no partial updates"
    for a, b in zip(partials, partials[1:], strict=False):
        assert b["stable"].startswith(a["stable"])
        assert b["revision"] > a["revision"]


async def test_client_commit_transcribes_and_keeps_the_contract(url):
    c = await manual_session(url)
    await c.append(pcm16(at_rate(tone_audio("hello world"), 24_000)))
    await c.send("input_audio_buffer.commit")
    committed = await c.wait_for("input_audio_buffer.committed")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    item = await c.wait_for("conversation.item.done")
    assert done["transcript"] == "hello world"
    assert committed["item_id"] == done["item_id"] == item["item"]["id"]
    assert committed["previous_item_id"] is None
    assert item["item"]["content"][0]["transcript"] == "hello world"
    assert c.of("conversation.item.added")[0]["item"]["id"] == done["item_id"]
    assert done["usage"]["seconds"] == pytest.approx(1.1, abs=0.02)
    check_contract(c, done["item_id"], "hello world")
    # a second turn links to the first
    await c.append(pcm16(at_rate(tone_audio("again"), 24_000)))
    await c.send("input_audio_buffer.commit")
    second = await c.wait_for("input_audio_buffer.committed")
    assert second["previous_item_id"] == done["item_id"]
    assert (await c.wait_for("conversation.item.input_audio_transcription.completed"))[
        "transcript"
    ] == "again"
    await c.close()


@pytest.mark.parametrize(
    "fmt, encode",
    [
        ({"type": "audio/pcm", "rate": 24000}, lambda x: pcm16(at_rate(x, 24_000))),
        ({"type": "audio/pcm", "rate": 16000}, pcm16),
        ({"type": "audio/pcm", "rate": 8000}, lambda x: pcm16(at_rate(x, 8_000))),
        ({"type": "audio/pcmu"}, lambda x: ulaw(at_rate(x, 8_000))),
        ({"type": "audio/pcma"}, lambda x: alaw(at_rate(x, 8_000))),
    ],
)
async def test_input_formats(url, fmt, encode):
    c = await manual_session(url, format=fmt)
    assert c.of("session.updated")[-1]["session"]["audio"]["input"]["format"] == fmt
    await c.append(encode(tone_audio("abc xyz")))
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "abc xyz"
    await c.close()


async def test_beta_transcription_session_update(url):
    c = await RealtimeClient.connect(url)
    await c.send(
        "transcription_session.update",
        session={
            "input_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "de"},
            "turn_detection": None,
        },
    )
    updated = await c.wait_for("transcription_session.updated")
    assert updated["session"]["input_audio_format"] == "g711_ulaw"
    assert updated["session"]["turn_detection"] is None
    await c.append(ulaw(at_rate(tone_audio("beta"), 8_000)), chunk=800)
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "beta"
    assert done["rtserve"]["language"] == "de"  # the language reached the model
    await c.close()


async def test_binary_frames_are_appends(url):
    c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
    for i in range(0, 16000, 3200):
        await c.ws.send(pcm16(tone_audio("binary")[i : i + 3200]))
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "binary"
    await c.close()


async def test_clear_drops_the_open_turn(url):
    c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
    await c.append(pcm16(tone_audio("forget")))
    await c.send("input_audio_buffer.clear")
    await c.wait_for("input_audio_buffer.cleared")
    await c.send("input_audio_buffer.commit")
    err = await c.wait_for("error")
    assert err["error"]["code"] == "input_audio_buffer_commit_empty"
    await c.append(pcm16(tone_audio("keep")))
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "keep"
    assert not [e for e in c.events if "forget" in str(e.get("transcript", ""))]
    await c.close()


async def test_transcription_model_choice(url):
    c = await RealtimeClient.connect(url)
    created = await c.recv()
    assert created["session"]["audio"]["input"]["transcription"]["model"] == "tone-asr"
    bad = {"type": "transcription", "audio": {"input": {"transcription": {"model": "nope"}}}}
    await c.send("session.update", session=bad, event_id="ev-1")
    err = await c.wait_for("error")
    assert err["error"]["code"] == "model_not_found"
    assert err["error"]["event_id"] == "ev-1"
    assert err["error"]["param"] == "session.audio.input.transcription.model"
    assert "tone-asr" in err["error"]["message"]
    await c.close()


async def test_model_in_url_and_unknown_model(url):
    c = await RealtimeClient.connect(url, query="model=tone-asr")
    assert (await c.recv())["type"] == "session.created"
    await c.close()
    c = await RealtimeClient.connect(url, query="model=no-such-model")
    err = await c.recv()
    assert err["type"] == "error" and err["error"]["code"] == "model_not_found"
    await c.close()


async def test_max_segment_seconds_commits_long_turns():
    server = make_server(max_segment_seconds=1.0)
    with running(server) as url:
        c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        await c.append(pcm16(tone_audio("abcdefghij" * 2 + "klmno")))  # 2.5 s
        texts = []
        for _ in range(2):
            texts.append(
                (await c.wait_for("conversation.item.input_audio_transcription.completed"))[
                    "transcript"
                ]
            )
        await c.send("input_audio_buffer.commit")
        texts.append(
            (await c.wait_for("conversation.item.input_audio_transcription.completed"))[
                "transcript"
            ]
        )
        assert texts == ["abcdefghij", "abcdefghij", "klmno"]
        assert len(c.of("input_audio_buffer.committed")) == 3
        await c.close()


async def test_contract_is_enforced_when_a_model_rewrites_stable_text():
    server = make_server([ToneAsr(rewrite_stable=True)])
    with running(server) as url:
        c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        await c.append(pcm16(tone_audio("one two three")))
        await c.send("input_audio_buffer.commit")
        done = await c.wait_for("conversation.item.input_audio_transcription.completed")
        check_contract(c, done["item_id"], done["transcript"])
        assert server.metrics.transcript_repairs._value.get() > 0
        await c.close()


async def test_model_failure_fails_the_item_and_the_session_goes_on():
    server = make_server([ToneAsr(fail_after=3)])
    with running(server) as url:
        c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        # the third block fails the stream and is the last one sent, so no audio of this
        # turn can reach the next (appends after a failure start a new turn)
        await c.append(pcm16(tone_audio("abc")))
        failed = await c.wait_for("conversation.item.input_audio_transcription.failed")
        assert failed["error"]["code"] == "transcription_failed"
        await c.append(pcm16(tone_audio("ab")))  # a new turn on a fresh model stream
        await c.send("input_audio_buffer.commit")
        done = await c.wait_for("conversation.item.input_audio_transcription.completed")
        assert done["transcript"] == "ab"
        await c.close()


async def test_lag_events_and_the_lag_limit():
    # 100 ms of audio costs the model 300 ms: it falls ever further behind live audio
    server = make_server([ToneAsr(delay=0.3)], max_lag_ms=1500)
    with running(server) as url:
        c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        audio = pcm16(tone_audio("abcdefghijklmnopqrstuvwxyz" * 2))
        for i in range(0, len(audio), 3200):  # real-time pace, 100 ms per frame
            await c.ws.send(audio[i : i + 3200])
            await asyncio.sleep(0.1)
        err = await c.wait_for("error")
        assert err["error"]["code"] == "audio_dropped"
        assert "--max-lag-ms 1500" in err["error"]["message"]
        last = await c.wait_for("rtserve.lag")
        assert last["dropped_ms"] > 0
        lags = c.of("rtserve.lag")
        assert len(lags) >= 2  # one a second
        assert max(e["lag_ms"] for e in lags) > 1500
        assert max(e["buffered_ms"] for e in lags) > 500
        assert server.metrics.audio_dropped_seconds._value.get() > 0
        await c.close()


async def test_rates_and_formats_that_are_refused(url):
    c = await RealtimeClient.connect(url)
    await c.recv()
    for fmt, param in [
        ({"type": "audio/pcm", "rate": 44100}, "session.audio.input.format.rate"),
        ({"type": "audio/opus"}, "session.audio.input.format.type"),
    ]:
        await c.send(
            "session.update", session={"type": "transcription", "audio": {"input": {"format": fmt}}}
        )
        err = await c.wait_for("error")
        assert err["error"]["code"] == "invalid_value" and err["error"]["param"] == param
    await c.send("session.update", session={"type": "translation"})
    assert (await c.wait_for("error"))["error"]["code"] == "unsupported_session_type"
    await c.send("session.update", session={"type": "realtime"})  # no chat model is served
    assert (await c.wait_for("error"))["error"]["code"] == "model_not_found"
    td = {"type": "server_vad", "threshold": 3}
    await c.send("session.update", session={"audio": {"input": {"turn_detection": td}}})
    err = await c.wait_for("error")
    assert err["error"]["param"] == "session.audio.input.turn_detection.threshold"
    await c.close()


@pytest.mark.parametrize(
    "frame, code",
    [
        ("{not json", "invalid_json"),
        ('["a list"]', "invalid_event"),
        ('{"type": "no.such.event"}', "unknown_event_type"),
        ('{"type": "response.create"}', "unsupported_in_transcription_session"),
        ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_base64"),
        ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_value"),
        ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_audio"),  # 3 bytes
        ('{"type": "session.update", "session": "x"}', "invalid_value"),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
    ],
)
async def test_bad_events_get_errors_and_the_session_goes_on(url, frame, code):
    c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
    await c.ws.send(frame)
    err = await c.wait_for("error")
    assert err["error"]["code"] == code, err
    assert err["error"]["type"] == "invalid_request_error"
    await c.append(pcm16(tone_audio("fine")))
    await c.send("input_audio_buffer.commit")
    done = await c.wait_for("conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "fine"
    await c.close()


async def test_odd_byte_count_binary_frame(url):
    c = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
    await c.ws.send(b"\x00\x01\x02")
    assert (await c.wait_for("error"))["error"]["code"] == "invalid_audio"
    await c.close()


async def test_frames_over_the_limit_close_only_that_session():
    server = make_server(max_frame_bytes=64 * 1024)
    with running(server) as url:
        good = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        bad = await manual_session(url)
        big = base64.b64encode(bytes(80 * 1024)).decode()
        await bad.send("input_audio_buffer.append", audio=big)
        await bad.ws.wait_closed()
        assert bad.ws.close_code == 1009
        await good.append(pcm16(tone_audio("still here")))
        await good.send("input_audio_buffer.commit")
        done = await good.wait_for("conversation.item.input_audio_transcription.completed")
        assert done["transcript"] == "still here"
        await good.close()


async def test_a_vanishing_client_costs_only_itself():
    server = make_server()
    with running(server) as url:
        good = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        gone = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        await gone.append(pcm16(tone_audio("abc" * 5)))
        gone.ws.transport.abort()  # no close frame: the TCP connection just drops
        await good.append(pcm16(tone_audio("alive")))
        await good.send("input_audio_buffer.commit")
        done = await good.wait_for("conversation.item.input_audio_transcription.completed")
        assert done["transcript"] == "alive"
        await good.close()
        for _ in range(100):
            if server.admission.active == 0:
                break
            await asyncio.sleep(0.05)
        assert server.admission.active == 0


async def test_session_time_limit():
    server = make_server(max_session_seconds=1.0)
    with running(server) as url:
        c = await manual_session(url)
        err = await c.wait_for("error", timeout=5)
        assert err["error"]["code"] == "session_expired"
        await c.ws.wait_closed()
        assert c.ws.close_code == 1001


async def test_admission_refuses_past_max_sessions():
    server = make_server(max_sessions=1)
    with running(server) as url:
        first = await manual_session(url)
        second = await RealtimeClient.connect(url)
        err = await second.recv()
        assert err["error"]["code"] == "server_busy"
        assert err["error"]["retry_after"] > 0
        await second.ws.wait_closed()
        assert second.ws.close_code == 1013
        await first.close()
        for _ in range(100):  # the slot frees when the first session ends
            if server.admission.active == 0:
                break
            await asyncio.sleep(0.05)
        third = await RealtimeClient.connect(url)
        assert (await third.recv())["type"] == "session.created"
        await third.close()


def test_tone_transcriber_hears_what_it_should():
    from tests.tone_asr import BLOCK, hear_block

    x = tone_audio("az ")
    assert [hear_block(x[i : i + BLOCK]) for i in range(0, x.size, BLOCK)] == ["a", "z", " "]
    assert hear_block(np.zeros(BLOCK, dtype=np.float32)) == " "


def speech(name: str = "hello") -> np.ndarray:
    x, rate = sf.read(FIXTURES / f"{name}.ogg", dtype="float32")
    assert rate == 16_000
    return x


def silence(ms: int) -> np.ndarray:
    return np.zeros(16 * ms, dtype=np.float32)


async def test_server_vad_segments_turns(url):
    hello = speech()
    audio = np.concatenate([silence(1000), hello, silence(1500), hello, silence(1500)])
    c = await RealtimeClient.connect(url)
    await c.recv()
    vad = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}
    session = {
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": vad}}
    }
    await c.send("session.update", session=session)
    await c.append(pcm16(audio), chunk=3200)
    for _ in range(2):
        await c.wait_for("conversation.item.input_audio_transcription.completed")
    started = c.of("input_audio_buffer.speech_started")
    stopped = c.of("input_audio_buffer.speech_stopped")
    committed = c.of("input_audio_buffer.committed")
    done = c.of("conversation.item.input_audio_transcription.completed")
    assert len(started) == len(stopped) == len(committed) == len(done) == 2
    for s, e, k, d in zip(started, stopped, committed, done, strict=True):
        assert s["item_id"] == e["item_id"] == k["item_id"] == d["item_id"]
    speech_ms = len(hello) // 16
    # turns start at the speech minus the prefix padding, and end where the speech ends
    assert 1000 - 300 - 150 <= started[0]["audio_start_ms"] <= 1000 - 300 + 150
    assert 1000 + speech_ms - 150 <= stopped[0]["audio_end_ms"] <= 1000 + speech_ms + 150
    second = 1000 + speech_ms + 1500
    assert second - 300 - 150 <= started[1]["audio_start_ms"] <= second - 300 + 150
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    await c.close()


async def test_a_client_that_never_reads_is_dropped():
    server = make_server()
    with running(server) as url:
        good = await manual_session(url, format={"type": "audio/pcm", "rate": 16000})
        host, port = url.split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        deaf = await websockets.connect(
            f"ws://{url}/v1/realtime?intent=transcription", sock=sock, max_queue=1
        )
        session = {
            "audio": {
                "input": {"turn_detection": None, "format": {"type": "audio/pcm", "rate": 16000}}
            }
        }
        await deaf.send(json.dumps({"type": "session.update", "session": session}))
        # 20 minutes: tens of thousands of events, past what the kernel's socket buffers take in
        # (up to 4 MiB on loopback) before the server's sends wait and the outbox fills. Sent
        # from a task: once the server drops the client it stops reading, and a send would wait.
        audio = pcm16(tone_audio("ab cd " * 2000))

        async def feed() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                for i in range(0, len(audio), 32000):
                    await deaf.send(audio[i : i + 32000])

        feeding = asyncio.create_task(feed())
        for _ in range(400):
            if server.admission.active == 1:
                break
            await asyncio.sleep(0.05)
        assert server.admission.active == 1  # the deaf client is gone, the good one stays
        assert server.metrics.sessions_dropped.labels("not_reading")._value.get() == 1
        await good.append(pcm16(tone_audio("heard")))
        await good.send("input_audio_buffer.commit")
        done = await good.wait_for("conversation.item.input_audio_transcription.completed")
        assert done["transcript"] == "heard"
        await good.close()
        feeding.cancel()
        deaf.transport.abort()
