"""FunASR's runtime WebSocket protocol, on `/` and `/v1/funasr`, against a real server on loopback.

The client (tests/clients.py `FunasrClient`) speaks the protocol as FunASR's documentation and
Python client do. The tone transcriber's tones are not speech to server VAD, so tone tests send
the `vad: null` extension (segments end at `is_speaking: false`); VAD tests use recorded speech.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import numpy as np
import pytest

from engine.streaming import Final
from rtserve.protocols.funasr import (
    FunasrConfig,
    joins_with_space,
    parse_config,
    sniff,
)
from rtserve.session import SessionError
from tests.clients import FunasrClient, at_rate, funasr_text, pcm16
from tests.server import make_server, running
from tests.test_native import encode, letters
from tests.test_realtime import silence, speech
from tests.tone_asr import ToneAsr, ToneStream, tone_audio

pytestmark = pytest.mark.anyio

PATHS = ["/", "/v1/funasr"]
NO_VAD = {"vad": None}
ONLINE = {"online": "online", "2pass": "2pass-online"}
OFFLINE = {"offline": "offline", "2pass": "2pass-offline"}
KEY = "sk-funasr"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One server for the module's tests (each connection is its own session)."""
    with running(make_server()) as base:
        yield base


def final_flags(results: list[dict]) -> list[bool]:
    return [r["is_final"] for r in results]


def errors(results: list[dict]) -> list[str]:
    return [r["error"]["code"] for r in results if "error" in r]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["online", "offline", "2pass"])
async def test_each_mode_on_each_path(url, path, mode):
    c = await FunasrClient.connect(url, path)
    assert c.ws.subprotocol == "binary"
    audio = pcm16(tone_audio("hello world"))
    results = await c.transcribe(audio, mode=mode, wav_name="a.wav", **NO_VAD)
    assert final_flags(results) == [False] * (len(results) - 1) + [True]
    assert {r["wav_name"] for r in results} == {"a.wav"}
    assert {r["mode"] for r in results} == {ONLINE.get(mode), OFFLINE.get(mode)} - {None}
    if mode in ONLINE:
        pieces = [r["text"] for r in results if r["mode"] == ONLINE[mode]]
        assert len(pieces) > 1 and "".join(pieces) == "hello world"
    if mode in OFFLINE:
        (final,) = [r for r in results if r["mode"] == OFFLINE[mode]]
        assert final["text"] == "hello world"
        assert final["stamp_sents"] == [
            {"text_seg": "hello world", "punc": "", "start": 0, "end": 1100, "ts_list": []}
        ]
        assert final is results[-1]
    assert "timestamp" not in results[-1]  # no token times from this model
    await c.close()


def two_turns() -> bytes:
    hello, weather = speech("hello"), speech("weather")
    return pcm16(np.concatenate([silence(500), hello, silence(1200), weather, silence(800)]))


async def test_server_vad_turns_and_the_online_pieces_add_up_to_the_finals(url):
    audio = two_turns()
    by_mode = {}
    for mode in ("online", "offline", "2pass"):
        c = await FunasrClient.connect(url)
        by_mode[mode] = await c.transcribe(audio, mode=mode)
        await c.close()
    offline = [r for r in by_mode["offline"] if r["text"]]
    assert len(offline) == 2 and all(r["mode"] == "offline" for r in offline)
    first, second = (r["stamp_sents"][0] for r in offline)
    total_ms = len(audio) // 32
    assert 0 <= first["start"] < first["end"] < second["start"] < second["end"] <= total_ms
    transcript = funasr_text(by_mode["offline"], "offline")
    assert transcript.strip()
    assert funasr_text(by_mode["online"], "online") == transcript
    assert funasr_text(by_mode["2pass"], "2pass-online") == transcript
    assert funasr_text(by_mode["2pass"], "2pass-offline") == transcript
    for results in by_mode.values():
        assert final_flags(results) == [False] * (len(results) - 1) + [True]


async def test_segments_of_a_spaced_language_are_joined_with_a_space():
    with running(make_server(max_segment_seconds=0.5)) as url:
        c = await FunasrClient.connect(url)
        results = await c.transcribe(pcm16(tone_audio("abcde fghi")), mode="2pass", **NO_VAD)
    # cut at 500 ms: "abcde" and " fghi", whose final is "fghi"
    assert [r["text"] for r in results if r["mode"] == "2pass-offline"] == ["abcde", " fghi"]
    assert funasr_text(results, "2pass-online") == "abcde fghi"


@dataclass
class LoudAsr(ToneAsr):
    """A second pass that disagrees with the first: it hears the same letters, in capitals."""

    name: str = "loud"

    def open_stream(self, options) -> ToneStream:
        return LoudStream(self, options)


class LoudStream(ToneStream):
    async def __anext__(self):
        ev = await super().__anext__()
        return replace(ev, text=ev.text.upper()) if isinstance(ev, Final) else ev


async def test_two_pass_online_pieces_are_the_first_pass_alone():
    """The second pass ends the segment before the slow first pass has said anything: its text
    is the offline result, never sent again as an online piece."""
    with running(make_server([ToneAsr("slow", delay=0.5), LoudAsr()])) as url:
        c = await FunasrClient.connect(url, "/?model=slow%2Bloud")
        results = await c.transcribe(pcm16(tone_audio("hi")), mode="2pass", **NO_VAD)
    assert funasr_text(results, "2pass-offline") == "HI"
    assert "hi".startswith(funasr_text(results, "2pass-online"))


async def test_8khz_audio(url):
    c = await FunasrClient.connect(url, "/v1/funasr")
    audio = pcm16(at_rate(tone_audio("hello world"), 8000))
    results = await c.transcribe(audio, mode="2pass", audio_fs=8000, **NO_VAD)
    assert funasr_text(results, "2pass-offline") == "hello world"
    assert funasr_text(results, "2pass-online") == "hello world"


async def test_a_paced_client_gets_online_pieces_while_it_speaks(url):
    c = await FunasrClient.connect(url)
    await c.start(mode="2pass", chunk_size=(5, 10, 5), chunk_interval=10, **NO_VAD)
    await c.audio(pcm16(tone_audio("hi there ")), paced=True)  # 60 ms frames, in real time
    early = await c.recv(timeout=0.5)  # already here before the end of the utterance
    assert early["mode"] == "2pass-online" and not early["is_final"]
    await c.stop()
    results = [early, *await c.until_final()]
    assert funasr_text(results, "2pass-online") == "hi there"
    assert results[-1]["mode"] == "2pass-offline" and results[-1]["text"] == "hi there"


async def test_config_resent_for_each_file_and_partial_updates(url):
    c = await FunasrClient.connect(url)
    first = await c.transcribe(pcm16(tone_audio("one")), mode="offline", wav_name="1", **NO_VAD)
    assert [(r["wav_name"], r["text"], r["is_final"]) for r in first] == [("1", "one", True)]
    # the next file on the same socket: the whole config again, then an update of two fields
    await c.start(mode="online", wav_name="2", **NO_VAD)
    await c.audio(pcm16(tone_audio("two ")))
    await c.send_json({"wav_name": "2b", "chunk_interval": 5})
    await c.audio(pcm16(tone_audio("three")))
    await c.stop()
    second = await c.until_final()
    assert funasr_text(second, "online") == "two three"
    assert {r["wav_name"] for r in second} <= {"2", "2b"} and second[-1]["wav_name"] == "2b"
    # audio after an utterance ended starts the next one with the config as it stands
    await c.audio(pcm16(tone_audio("four")))
    await c.stop()
    third = await c.until_final()
    assert funasr_text(third, "online") == "four" and third[-1]["wav_name"] == "2b"
    # an end with no audio still gets its final result, empty
    await c.stop()
    assert await c.until_final() == [
        {"mode": "online", "wav_name": "2b", "text": "", "is_final": True}
    ]


@pytest.mark.parametrize(
    "frame, code, param",
    [
        ("{bad json", "invalid_json", None),
        ("[1, 2]", "invalid_message", None),
        (b"\x00\x00" * 100, "not_started", None),
        (json.dumps({"mode": "3pass"}), "invalid_value", "mode"),
        (json.dumps({"mode": "online", "chunk_size": [5, 0, 5]}), "invalid_value", "chunk_size"),
        (json.dumps({"chunk_size": "5,ten,5"}), "invalid_value", "chunk_size"),
        (json.dumps({"chunk_interval": 0}), "invalid_value", "chunk_interval"),
        (json.dumps({"audio_fs": 96000}), "invalid_value", "audio_fs"),
        (json.dumps({"is_speaking": "yes"}), "invalid_value", "is_speaking"),
        (json.dumps({"hotwords": 5}), "invalid_value", "hotwords"),
        (json.dumps({"svs_lang": "xx"}), "invalid_value", "svs_lang"),
        (json.dumps({"vad": {"threshold": 2}}), "invalid_value", "vad.threshold"),
    ],
)
async def test_bad_first_messages_get_a_final_error_and_the_socket_goes_on(url, frame, code, param):
    c = await FunasrClient.connect(url)
    await c.ws.send(frame)
    if isinstance(frame, bytes):
        await c.ws.send(frame)  # more audio: dropped without another error
    err = await c.recv()
    assert err["error"]["code"] == code and err["error"].get("param") == param
    assert (err["mode"], err["wav_name"], err["text"], err["is_final"]) == (
        "2pass",
        "microphone",
        "",
        True,
    )
    results = await c.transcribe(pcm16(tone_audio("ok")), mode="offline", **NO_VAD)
    assert [(r["text"], r["is_final"]) for r in results] == [("ok", True)]


async def test_errors_during_an_utterance_do_not_end_it(url):
    c = await FunasrClient.connect(url)
    await c.start(mode="offline", **NO_VAD)
    await c.audio(pcm16(tone_audio("ab")))
    await c.ws.send("{oops")
    await c.send_json({"mode": "3pass"})  # refused whole: the mode stays offline
    await c.ws.send(b"\x00")  # half a sample
    await c.audio(pcm16(tone_audio("cd")))
    await c.stop()
    results = await c.until_final()
    assert errors(results) == ["invalid_json", "invalid_value", "invalid_audio"]
    assert not any(r["is_final"] for r in results if "error" in r)
    assert results[-1]["mode"] == "offline" and results[-1]["text"] == "abcd"


@pytest.mark.parametrize("wav_format", ["webm", "others"])
async def test_undecodable_audio(url, wav_format):
    c = await FunasrClient.connect(url)
    await c.start(mode="offline", wav_format=wav_format)
    await c.audio(b"this is not audio at all" * 400)  # several frames
    await c.stop()
    results = await c.until_final()
    assert errors(results) == ["invalid_audio"]
    assert results[-1] == {"mode": "offline", "wav_name": "demo", "text": "", "is_final": True}


@pytest.mark.parametrize(
    "wav_format, container", [("wav", "wav"), ("mp3", "mp3"), ("others", "ogg"), ("others", "wav")]
)
async def test_containers_named_or_sniffed(url, wav_format, container):
    rate = 48000 if container == "ogg" else 16000
    data = encode(container, at_rate(tone_audio("aaaaa bbbbb"), rate), rate)
    c = await FunasrClient.connect(url)
    await c.start(mode="offline", wav_format=wav_format, **NO_VAD)
    await c.ws.send(data[:2])  # too short to tell the container: held for the next frame
    await c.audio(data[2:])
    await c.stop()
    assert letters(funasr_text(await c.until_final(), "offline")) == "a b"


async def test_hotwords_are_ignored_with_a_warning_and_itn_is_accepted(url):
    c = await FunasrClient.connect(url)
    hotwords = json.dumps({"阿里巴巴": 20, "通义实验室": 30})
    audio = pcm16(tone_audio("hot words"))
    results = await c.transcribe(audio, mode="2pass", hotwords=hotwords, itn=False, **NO_VAD)
    warned = [r for r in results if "warning" in r]
    assert warned == [results[0]] and warned[0]["warning"]["code"] == "hotwords_ignored"
    assert "ignored: 阿里巴巴, 通义实验室" in warned[0]["warning"]["message"]
    assert funasr_text(results, "2pass-offline") == "hot words"
    again = await c.transcribe(audio, mode="2pass", **NO_VAD)  # no hotwords: no warning
    assert not any("warning" in r for r in again)


async def test_lag_reports_when_asked_for(url):
    c = await FunasrClient.connect(url)
    await c.start(mode="online", lag_reports=True, **NO_VAD)
    await c.audio(pcm16(tone_audio("a")))
    msg = await c.recv(timeout=3)
    assert msg["text"] == "" and not msg["is_final"] and msg["mode"] == "online"
    assert set(msg["lag"]) == {"buffered_ms", "lag_ms", "dropped_ms"}


async def test_unknown_model_in_the_query(url):
    c = await FunasrClient.connect(url, "/v1/funasr?model=nope")
    err = await c.recv()
    assert err["error"]["code"] == "model_not_found" and err["is_final"]
    await c.ws.wait_closed()


async def test_api_key_by_header_or_subprotocol_only():
    with running(make_server(api_key=KEY)) as url:
        for path in ("/", f"/?api_key={KEY}"):
            c = await FunasrClient.connect(url, path)
            err = await c.recv()
            assert err["error"]["code"] == "invalid_api_key" and err["is_final"]
            await c.ws.wait_closed()
            assert c.ws.close_code == 1008
        audio = pcm16(tone_audio("key"))
        by_header = await FunasrClient.connect(
            url, additional_headers={"Authorization": f"Bearer {KEY}"}
        )
        results = await by_header.transcribe(audio, mode="offline", **NO_VAD)
        assert funasr_text(results, "offline") == "key"
        browser = await FunasrClient.connect(
            url, subprotocols=["binary", f"openai-insecure-api-key.{KEY}"]
        )
        assert browser.ws.subprotocol == "binary"
        results = await browser.transcribe(audio, mode="offline", **NO_VAD)
        assert funasr_text(results, "offline") == "key"


async def test_a_failed_segment_is_an_error_and_the_utterance_still_ends():
    with running(make_server([ToneAsr(fail_after=3)])) as url:
        c = await FunasrClient.connect(url)
        # the third block fails the stream and ends the audio: exactly one failed segment (with
        # more audio, what arrives after the failure starts a new segment, on a new stream)
        results = await c.transcribe(pcm16(tone_audio("abc")), mode="offline", **NO_VAD)
    assert errors(results) == ["transcription_failed"] and not results[0]["is_final"]
    assert results[-1] == {"mode": "offline", "wav_name": "demo", "text": "", "is_final": True}


async def test_a_busy_server_refuses_with_retry_after():
    with running(make_server(max_sessions=1)) as url:
        first = await FunasrClient.connect(url)
        await first.start(mode="online")
        second = await FunasrClient.connect(url)
        err = await second.recv()
        assert err["error"]["code"] == "server_busy" and err["error"]["retry_after"] > 0
        assert err["is_final"]
        await second.ws.wait_closed()
        assert second.ws.close_code == 1013
        await first.close()


def test_get_root_still_serves_the_demo_page(url):
    page = httpx.get(f"http://{url}/")
    assert page.status_code == 200 and "<html" in page.text


def test_config_parsing():
    cfg = parse_config({"chunk_size": "8,8,4", "hotwords": '{"a": 1, "b c": 2}'}, FunasrConfig())
    assert cfg.chunk_size == (8, 8, 4) and cfg.hotwords == ("a", "b c")
    assert parse_config({"hotwords": "one two"}, cfg).hotwords == ("one", "two")
    assert parse_config({"hotwords": ""}, cfg).hotwords == ()
    assert parse_config({"svs_lang": "auto", "itn": 0, "unknown": 1}, cfg).language is None
    with pytest.raises(SessionError):
        parse_config({"wav_name": "x", "mode": "3pass"}, cfg)  # nothing applies


def test_sniffing_and_joining():
    assert sniff(b"RIFF\x00\x00\x00\x00WAVE") == "wav" and sniff(b"OggS") == "ogg"
    assert sniff(b"ID3\x04") == "mp3" and sniff(b"\x1a\x45\xdf\xa3") == "webm"
    assert sniff(b"\x00\x00\x00\x20ftypisom") is None
    assert joins_with_space("d", "w") and joins_with_space(".", "N")
    assert not joins_with_space("好", "我") and not joins_with_space("d", "我")
    assert not joins_with_space("", "a") and not joins_with_space(" ", "a")
    assert not joins_with_space("d", ",")
