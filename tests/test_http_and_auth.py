"""HTTP endpoints, API keys on HTTP and WebSocket, metrics, and `rtserve serve` start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import websockets

from tests.clients import NativeClient, RealtimeClient, pcm16
from tests.server import make_server, running
from tests.tone_asr import tone_audio

KEY = "sk-test-123"


@pytest.fixture
def keyed_url():
    with running(make_server(api_key=KEY)) as url:
        yield url


def test_health_models_and_demo_page(url):
    health = httpx.get(f"http://{url}/health").json()
    assert health["status"] == "ok" and health["models"] == ["tone-asr"]
    models = httpx.get(f"http://{url}/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "tone-asr" and models["data"][0]["kind"] == "asr"
    page = httpx.get(f"http://{url}/")
    assert page.status_code == 200 and "<html" in page.text


def test_http_needs_the_key(keyed_url):
    r = httpx.get(f"http://{keyed_url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"http://{keyed_url}/metrics").status_code == 401
    bad = httpx.get(f"http://{keyed_url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    ok = httpx.get(f"http://{keyed_url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert httpx.get(f"http://{keyed_url}/v1/models", headers={"x-api-key": KEY}).status_code == 200
    assert httpx.get(f"http://{keyed_url}/health").status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("deflate", [False, True])
async def test_websocket_compression_only_when_turned_on(deflate):
    """Clients offer permessage-deflate (the websockets client does, as browsers do); the
    server accepts it only with `ws_per_message_deflate`, and audio flows either way."""
    with running(make_server(deflate=deflate)) as url:
        c = await NativeClient.connect(url)
        agreed = c.ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ("permessage-deflate" in agreed) == deflate
        await c.send("start", format="pcm16", rate=16000, vad=None)
        await c.audio(pcm16(tone_audio("hello world")))
        await c.send("commit")
        final = await c.wait_for("final")
        assert final["text"] == "hello world"
        await c.ws.close()


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/realtime", "/v1/stream"])
async def test_websocket_without_the_key_is_refused(keyed_url, path):
    async with websockets.connect(f"ws://{keyed_url}{path}") as ws:
        event = await ws.recv()
        assert b"invalid_api_key" in (event if isinstance(event, bytes) else event.encode())
        await ws.wait_closed()
        assert ws.close_code == 1008


@pytest.mark.anyio
async def test_websocket_key_by_header_and_by_subprotocol(keyed_url):
    c = await RealtimeClient.connect(
        keyed_url, additional_headers={"Authorization": f"Bearer {KEY}"}
    )
    assert (await c.recv())["type"] == "session.created"
    await c.close()
    # what a browser does: the key rides in a subprotocol, and "realtime" is chosen
    c = await RealtimeClient.connect(
        keyed_url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]
    )
    assert c.ws.subprotocol == "realtime"
    assert (await c.recv())["type"] == "session.created"
    await c.close()


@pytest.mark.anyio
async def test_metrics_count_sessions_audio_events_errors_and_latency(server, url):
    c = await RealtimeClient.connect(url)
    await c.recv()
    session = {
        "audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcm", "rate": 16000}}}
    }
    await c.send("session.update", session=session)
    await c.ws.send("{bad json")
    await c.append(pcm16(tone_audio("metrics")))
    await c.send("input_audio_buffer.commit")
    await c.wait_for("conversation.item.input_audio_transcription.completed")
    text = httpx.get(f"http://{url}/metrics").text
    await c.close()

    def value(line_start: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(line_start))
        return float(line.rsplit(" ", 1)[1])

    assert value('rtserve_sessions_active{protocol="openai_realtime"}') == 1
    assert value('rtserve_sessions_total{protocol="openai_realtime"}') == 1
    assert value('rtserve_audio_seconds_total{model="tone-asr"}') == pytest.approx(0.7, abs=0.01)
    assert value('rtserve_events_total{type="session.created"}') == 1
    assert value('rtserve_errors_total{code="invalid_json"}') == 1
    assert value("rtserve_final_latency_seconds_count") == 1
    assert value("rtserve_partial_latency_seconds_count") >= 5


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtserve", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"RTSERVE_DEFAULT_MODEL": "/nonexistent/default-model", "PATH": ""},
    )


def test_serve_without_a_usable_model_exits_with_a_clear_message(tmp_path):
    r = run_cli()
    assert r.returncode == 2
    assert "cannot start" in r.stderr and "embedded default" in r.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    r = run_cli("--model", f"mine={tmp_path}")
    assert r.returncode == 2
    assert "model_type='bert'" in r.stderr and "not a model this server can run" in r.stderr


def test_serve_help_lists_every_limit():
    r = subprocess.run(
        [sys.executable, "-m", "rtserve", "serve", "--help"], capture_output=True, text=True
    )
    for flag in (
        "--max-sessions",
        "--max-frame-bytes",
        "--max-buffered-seconds",
        "--max-session-seconds",
        "--max-segment-seconds",
        "--max-lag-ms",
        "--performance-mode",
        "--api-key",
    ):
        assert flag in r.stdout
