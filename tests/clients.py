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
