"""Fake clients for protocol tests: thin wrappers over `websockets`, and audio encoders."""

from __future__ import annotations

import asyncio
import base64
import json

import msgpack
import numpy as np
import websockets

from audio.resample import resample

TIMEOUT = 10.0


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def ulaw(x: np.ndarray) -> bytes:
    """G.711 µ-law encoder (ITU-T G.711, with the 0x84 bias and inverted bits)."""
    s = np.clip((x * 32768).astype(np.int32), -32635, 32635)
    sign = np.where(s < 0, 0x80, 0)
    m = np.abs(s) + 0x84
    exp = np.floor(np.log2(m)).astype(np.int32) - 7
    mant = (m >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def alaw(x: np.ndarray) -> bytes:
    """G.711 A-law encoder (ITU-T G.711, even bits inverted with 0x55)."""
    s = np.clip((x * 32768).astype(np.int32), -32767, 32767) >> 3  # 13-bit magnitude
    sign = np.where(s >= 0, 0x80, 0)
    m = np.where(s >= 0, s, -s - 1)
    exp = np.where(m < 32, 0, np.floor(np.log2(np.maximum(m, 1))).astype(np.int32) - 4)
    mant = np.where(exp == 0, m >> 1, m >> exp) & 0x0F
    return ((sign | (exp << 4) | mant) ^ 0x55).astype(np.uint8).tobytes()


def at_rate(x: np.ndarray, rate: int) -> np.ndarray:
    return x if rate == 16_000 else resample(x, 16_000, rate)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Client:
    """What both protocol clients share: reading events, waiting for a type, filtering."""

    decode = staticmethod(json.loads)  # one frame -> one event

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict] = []

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        event = self.decode(await asyncio.wait_for(self.ws.recv(), timeout))
        self.events.append(event)
        return event

    async def wait_for(self, type: str, timeout: float = TIMEOUT) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv()
                if event["type"] == type:
                    return event

    def of(self, type: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type]

    async def close(self) -> None:
        await self.ws.close()


class RealtimeClient(Client):
    """OpenAI Realtime over a raw WebSocket; remembers every event it has read."""

    @classmethod
    async def connect(cls, url: str, query: str = "intent=transcription", **kw) -> RealtimeClient:
        ws = await websockets.connect(f"ws://{url}/v1/realtime?{query}", **kw)
        return cls(ws)

    async def send(self, type: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": type, **fields}))

    async def append(self, audio: bytes, chunk: int = 4800) -> None:
        for c in chunks(audio, chunk):
            await self.send("input_audio_buffer.append", audio=base64.b64encode(c).decode())


class NativeClient(Client):
    """The msgpack protocol on /v1/stream."""

    decode = staticmethod(msgpack.unpackb)

    @classmethod
    async def connect(cls, url: str, **kw) -> NativeClient:
        return cls(await websockets.connect(f"ws://{url}/v1/stream", **kw))

    async def send(self, type: str, **fields) -> None:
        await self.ws.send(msgpack.packb({"type": type, **fields}))

    async def audio(self, data: bytes, chunk: int = 3200) -> None:
        for c in chunks(data, chunk):
            await self.ws.send(msgpack.packb(c, use_bin_type=True))


class FunasrClient(Client):
    """FunASR's runtime WebSocket protocol, written from its documentation (modelscope/FunASR
    runtime/docs/websocket_protocol.md) and its Python client (runtime/python/websocket/
    funasr_wss_client.py), not from our server: it connects with the subprotocol "binary", sends
    a JSON config with `is_speaking: true`, PCM16 frames of `60 * chunk_size[1] / chunk_interval`
    ms (paced at that interval, or as fast as possible), then `{"is_speaking": false}`; results
    `{"mode", "wav_name", "text", "is_final", ...}` come until one says `is_final: true`."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        super().__init__(ws)
        self.config: dict = {}

    @classmethod
    async def connect(cls, url: str, path: str = "/", **kw) -> FunasrClient:
        kw.setdefault("subprotocols", ["binary"])
        return cls(await websockets.connect(f"ws://{url}{path}", ping_interval=None, **kw))

    async def start(
        self,
        mode: str = "2pass",
        wav_name: str = "demo",
        audio_fs: int = 16_000,
        chunk_size: tuple[int, int, int] = (5, 10, 5),
        chunk_interval: int = 10,
        wav_format: str = "pcm",
        hotwords: str = "",
        itn: bool = True,
        **extra,
    ) -> None:
        """The first message, as funasr_wss_client.py sends it before each file."""
        self.config = {
            "mode": mode,
            "chunk_size": list(chunk_size),
            "chunk_interval": chunk_interval,
            "encoder_chunk_look_back": 4,
            "decoder_chunk_look_back": 0,
            "audio_fs": audio_fs,
            "wav_name": wav_name,
            "wav_format": wav_format,
            "is_speaking": True,
            "hotwords": hotwords,
            "itn": itn,
            **extra,
        }
        await self.send_json(self.config)

    async def send_json(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    def frame_seconds(self) -> float:
        return 60 * self.config["chunk_size"][1] / self.config["chunk_interval"] / 1000

    async def audio(self, data: bytes, paced: bool = False) -> None:
        """Frames of `frame_seconds` of PCM16 (the client's stride), each followed by a pause of
        that length when `paced` (the client's pace in online and 2pass modes)."""
        stride = int(self.frame_seconds() * self.config["audio_fs"] * 2)
        for frame in chunks(data, stride):
            await self.ws.send(frame)
            if paced:
                await asyncio.sleep(self.frame_seconds())

    async def stop(self) -> None:
        await self.send_json({"is_speaking": False})

    async def until_final(self, timeout: float = TIMEOUT) -> list[dict]:
        """The messages up to and including the one with `is_final: true`."""
        got = []
        async with asyncio.timeout(timeout):
            while True:
                got.append(await self.recv())
                if got[-1]["is_final"]:
                    return got

    async def transcribe(self, data: bytes, paced: bool = False, **config) -> list[dict]:
        """One file: config, audio, end; the results."""
        await self.start(**config)
        await self.audio(data, paced)
        await self.stop()
        return await self.until_final()


def funasr_text(results: list[dict], mode: str) -> str:
    """What a FunASR client shows for `mode`: the texts of its results, concatenated."""
    return "".join(r["text"] for r in results if r.get("mode") == mode)
