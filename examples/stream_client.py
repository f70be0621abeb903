"""A `/v1/stream` (msgpack) client: send a file's PCM, print partials and timed finals.

python examples/stream_client.py talk.wav [--url ws://127.0.0.1:8000] [--api-key KEY] [--fast]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgpack
import numpy as np
import soundfile as sf
import websockets


async def main(a: argparse.Namespace) -> None:
    x, rate = sf.read(a.file, dtype="float32", always_2d=True)
    pcm = (np.clip(x.mean(axis=1), -1, 1) * 32767).astype("<i2").tobytes()
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    async with websockets.connect(f"{a.url}/v1/stream", additional_headers=headers) as ws:
        await ws.send(msgpack.packb({"type": "start", "format": "pcm16", "rate": rate}))
        frame = rate // 10 * 2
        for i in range(0, len(pcm), frame):
            await ws.send(msgpack.packb(pcm[i : i + frame], use_bin_type=True))
            await asyncio.sleep(0 if a.fast else 0.1)
        await ws.send(msgpack.packb({"type": "end"}))
        async for frame_bytes in ws:
            msg = msgpack.unpackb(frame_bytes)
            if msg["type"] == "partial":
                sys.stdout.write(f"\r\033[K{msg['stable']}|{msg['unstable']}")
            elif msg["type"] == "final":
                span = f"{msg['start_ms'] / 1000:7.2f}-{msg['end_ms'] / 1000:7.2f}"
                sys.stdout.write(f"\r\033[K[{span}] {msg['text']}\n")
            elif msg["type"] == "error":
                print(f"\nerror {msg['code']}: {msg['message']}", file=sys.stderr)
            elif msg["type"] == "done":
                break
            sys.stdout.flush()


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file")
    p.add_argument("--url", default="ws://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--fast", action="store_true")
    asyncio.run(main(p.parse_args()))
