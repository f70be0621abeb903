"""Live captions of your microphone in a terminal (needs `pip install sounddevice`).

python examples/mic_captions.py [--url ws://127.0.0.1:8000] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

import websockets

RATE = 24_000


async def main(a: argparse.Namespace) -> None:
    import sounddevice as sd  # optional: only this example needs it

    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[bytes] = asyncio.Queue()

    def captured(data, _frames, _time, status) -> None:
        loop.call_soon_threadsafe(frames.put_nowait, bytes(data))

    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    async with websockets.connect(
        f"{a.url}/v1/realtime?intent=transcription", additional_headers=headers
    ) as ws:
        session = {
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}}},
        }
        await ws.send(json.dumps({"type": "session.update", "session": session}))

        async def send() -> None:
            while True:
                await ws.send(await frames.get())

        with sd.RawInputStream(
            samplerate=RATE, channels=1, dtype="int16", blocksize=RATE // 10, callback=captured
        ):
            sender = asyncio.create_task(send())
            print("listening (Ctrl-C to stop)", file=sys.stderr)
            async for message in ws:
                ev = json.loads(message)
                if ev["type"] == "rtserve.transcription.partial":
                    sys.stdout.write(f"\r\033[K{ev['stable']}\033[2m{ev['unstable']}\033[0m")
                elif ev["type"] == "conversation.item.input_audio_transcription.completed":
                    sys.stdout.write(f"\r\033[K{ev['transcript']}\n")
                elif ev["type"] == "error":
                    print(f"\nerror: {ev['error']['message']}", file=sys.stderr)
                sys.stdout.flush()
            sender.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="ws://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(p.parse_args()))
