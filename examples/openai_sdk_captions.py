"""Live captions of a file through the official `openai` SDK's realtime client.

python examples/openai_sdk_captions.py talk.wav [--base-url http://HOST:8000/v1] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import base64

from openai import AsyncOpenAI
from stream_file import RATE, load


async def main(a: argparse.Namespace) -> None:
    client = AsyncOpenAI(
        api_key=a.api_key,
        base_url=a.base_url,
        websocket_base_url=a.base_url.replace("http", "ws", 1),
    )
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE}}},
            }
        )
        pcm = load(a.file) + bytes(RATE * 2)  # trailing silence ends the last turn
        for i in range(0, len(pcm), RATE // 5):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(pcm[i : i + RATE // 5]).decode()
            )
            await asyncio.sleep(0 if a.fast else 0.1)
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.delta":
                print(event.delta, end="", flush=True)  # only stable text: never taken back
            elif event.type == "conversation.item.input_audio_transcription.completed":
                print()
            elif event.type == "rtserve.lag" and getattr(event, "buffered_ms", 1) == 0:
                break


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="unused")
    p.add_argument("--fast", action="store_true")
    asyncio.run(main(p.parse_args()))
