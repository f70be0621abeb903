"""Stream an audio file to rtserve at real-time pace and print live captions.

    python examples/stream_file.py talk.wav [--url ws://127.0.0.1:8000] [--api-key KEY] [--fast]

Uses the OpenAI Realtime protocol (`/v1/realtime`) with raw WebSocket frames: the file is decoded
and resampled to 24 kHz PCM16 here, sent in 100 ms binary frames, and server VAD cuts the turns.
The changing tail of each caption is shown after a `|`; finished lines are printed whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import numpy as np
import soundfile as sf
import websockets

RATE = 24_000


def load(path: str) -> bytes:
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != RATE:  # linear interpolation is plenty for speech at this rate
        t = np.arange(0, len(x) / rate, 1 / RATE)
        x = np.interp(t, np.arange(len(x)) / rate, x)
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def main(a: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    async with websockets.connect(
        f"{a.url}/v1/realtime?intent=transcription", additional_headers=headers
    ) as ws:
        session = {
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}}},
        }
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        pcm = load(a.file)
        frame = RATE // 10 * 2  # 100 ms of PCM16

        async def send() -> None:
            for i in range(0, len(pcm), frame):
                await ws.send(pcm[i : i + frame])
                await asyncio.sleep(0 if a.fast else 0.1)
            await ws.send(pcm[:0] + bytes(RATE * 2))  # a second of silence ends the last turn

        sender = asyncio.create_task(send())
        async for message in ws:
            ev = json.loads(message)
            if ev["type"] == "rtserve.transcription.partial":
                sys.stdout.write(f"\r\033[K{ev['stable']}|{ev['unstable']}")
            elif ev["type"] == "conversation.item.input_audio_transcription.completed":
                sys.stdout.write(f"\r\033[K{ev['transcript']}\n")
            elif ev["type"] == "error":
                print(f"\nerror: {ev['error']['message']}", file=sys.stderr)
            sys.stdout.flush()
            if sender.done() and ev["type"] == "rtserve.lag" and ev["buffered_ms"] == 0:
                break


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file")
    p.add_argument("--url", default="ws://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--fast", action="store_true", help="send as fast as possible")
    asyncio.run(main(p.parse_args()))
