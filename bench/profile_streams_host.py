"""The speech worker's host cost per stream, apart from the model: what 1,000 live streams ask
of the event loop and the runtime thread between steps.

    python bench/profile_streams_host.py --streams 1000

A Qwen3-ASR worker (random weights in the `tiny` shape on the CPU: the model never runs here)
with N open streams, each fed 100 ms chunks, none due for a step. Times, in microseconds (the
median of repeats):

- `feed`: a handle's feed on the event loop (the copy and the post to the worker's inbox);
- `audio command`: the runtime thread applying one fed chunk (`take_inbox`);
- `has_work`: the worker's answer to the runtime's "anything to do?" with no request running,
  which looks at every open stream. The runtime asks once a turn, and at 1,000 live streams on
  the H200 it turned about 190 times a second (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import numpy as np

from engine.bench.asr import AsrBench, load_system
from engine.streaming import StreamOptions


def per_call_us(fn, calls: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return 1e6 * statistics.median(times)


async def measure(n: int) -> dict[str, float]:
    b = AsrBench(shape="tiny", device="cpu", dtype="float32", cuda_graphs=False)
    system = load_system(b)
    worker = system.worker
    system.runtime.remove(worker)  # driven by hand: nothing steps, nothing races
    worker.runtime = None
    try:
        handles = [system.model.open_stream(StreamOptions()) for _ in range(n)]
        chunk = np.zeros(1600, np.float32)  # 100 ms
        for h in handles:  # every stream holds an open segment, far from due
            h.feed(chunk)
        worker.take_inbox()
        has_work = per_call_us(worker.has_work, 50)
        for h in handles:
            h.feed(chunk)
        t0 = time.perf_counter()
        worker.take_inbox()
        command = 1e6 * (time.perf_counter() - t0) / n
        feed = per_call_us(lambda: handles[0].feed(chunk), 2000)  # last: stream 0 becomes due
        return {"streams": n, "feed_us": feed, "audio_command_us": command, "has_work_us": has_work}
    finally:
        system.runtime.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1000])
    a = ap.parse_args()
    for n in a.streams:
        print(json.dumps(asyncio.run(measure(n))))


if __name__ == "__main__":
    main()
