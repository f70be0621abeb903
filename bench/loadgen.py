"""Load generator for rtserve's native WebSocket protocol (/v1/stream, msgpack; docs/protocol.md).

Standalone (numpy, websockets, msgpack). `--streams` connections, spread over `--procs`
processes, each sending speech-like PCM16 at 16 kHz in real time (100 ms frames) with
`vad: null`, and committing a segment every `--segment-seconds` (the first segment of each
stream has a random length and the streams start spread over one step, so steps and commits do
not all fall on the same instant). Runs for `--duration` seconds, then ends every stream and
waits up to `--drain` seconds for the last finals.

Partial latency, per step boundary: the server steps every 2 s of a segment's audio and sends
`partial` with `revision` r for its r-th step, so the boundary at r x 2 s is matched to revision
r (or to the segment's final if no partial came for it; a step that was merged into a later one
is answered by that one). Latency runs from the send time of the frame that completed the
boundary to the receive time of its partial. The boundary at a segment's end is not counted
(the commit there makes it the final's). Boundaries still unanswered at the end count with
their age then.

    python bench/loadgen.py --url ws://127.0.0.1:8000/v1/stream --streams 128 --procs 4

Prints a summary, or with `--json` one JSON line: merged p50/p95/p99 (ms), per-process ones,
errors by code, partials, boundaries, unanswered, the largest `lag` the server reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import numpy as np
import websockets

RATE = 16_000
FRAME = RATE // 10  # 100 ms
STEP = 2 * RATE  # the server's step: 2 s of a segment's audio


@dataclass
class Settings:
    url: str
    streams: int
    procs: int
    duration: float
    segment_seconds: float
    drain: float
    seed: int


@dataclass
class Client:
    """One connection's bookkeeping."""

    index: int
    boundaries: dict[int, dict[int, float]] = field(default_factory=dict)  # seg -> rev -> sent
    latencies: list[float] = field(default_factory=list)
    finals: list[float] = field(default_factory=list)
    commits: dict[int, float] = field(default_factory=dict)  # seg -> sent
    errors: Counter = field(default_factory=Counter)
    partials: int = 0
    counted: int = 0  # boundaries sent
    max_lag_ms: int = 0
    dropped_ms: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Harmonics of a wandering pitch and noise under a syllable envelope, over a noise floor."""
    rng = np.random.RandomState(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    ctrl = np.arange(int(seconds * 8) + 2) / 8
    envelope = np.interp(t, ctrl, rng.uniform(0, 1, ctrl.size)) ** 2
    pitch = np.interp(t, ctrl, rng.uniform(100, 220, ctrl.size))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(h * phase) / h for h in range(1, 7))
    x = envelope * (0.2 * voiced + 0.05 * rng.standard_normal(n)) + 0.01 * rng.standard_normal(n)
    return (np.clip(x, -1, 1) * 32767).astype("<i2")


# ---- one process ----


def run_process(s: Settings, indices: list[int], start_at: float) -> dict:
    return asyncio.run(_process(s, indices, start_at))


async def _process(s: Settings, indices: list[int], start_at: float) -> dict:
    audio = speech_like(60.0, s.seed)
    start = time.perf_counter() + (start_at - time.time())
    clients = [Client(i) for i in indices]
    await asyncio.gather(*(_run_client(s, c, audio, start) for c in clients))
    return _process_result(clients)


async def _run_client(s: Settings, c: Client, audio: np.ndarray, start: float) -> None:
    try:
        async with websockets.connect(s.url, max_size=None, open_timeout=120) as ws:
            await ws.send(msgpack.packb({"type": "start", "format": "pcm16", "vad": None}))
            ready = msgpack.unpackb(await ws.recv())
            if ready.get("type") != "ready":
                c.errors[ready.get("code", "not_ready")] += 1
                return
            receiver = asyncio.create_task(_receive(ws, c))
            await _send(ws, s, c, audio, start)
            await ws.send(msgpack.packb({"type": "end"}))
            try:
                await asyncio.wait_for(c.done.wait(), s.drain)
            except TimeoutError:
                c.errors["drain_timeout"] += 1
            receiver.cancel()
    except (OSError, websockets.WebSocketException) as e:
        c.errors[type(e).__name__] += 1
    _censor(c)


async def _send(ws, s: Settings, c: Client, audio: np.ndarray, start: float) -> None:
    """Real-time frames; the boundaries they complete; a commit at each segment's end."""
    rng = np.random.RandomState(s.seed + c.index)
    phase = c.index * (STEP / RATE) / s.streams
    live = int(s.segment_seconds * RATE) // FRAME * FRAME
    segment_len = int(rng.randint(STEP // FRAME, live // FRAME + 1)) * FRAME
    offset = int(rng.randint(audio.size))
    segment, inside = 0, 0
    for k in range(int(s.duration * 10)):
        delay = start + phase + k * FRAME / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        at = (offset + k * FRAME) % (audio.size - FRAME)
        await ws.send(msgpack.packb(audio[at : at + FRAME].tobytes()))
        now = time.perf_counter()
        inside += FRAME
        if inside >= segment_len:
            await ws.send(msgpack.packb({"type": "commit"}))
            c.commits[segment] = now
            segment, inside, segment_len = segment + 1, 0, live
        elif inside % STEP == 0:
            c.boundaries.setdefault(segment, {})[inside // STEP] = now
            c.counted += 1


async def _receive(ws, c: Client) -> None:
    async for frame in ws:
        msg = msgpack.unpackb(frame)
        now, kind = time.perf_counter(), msg.get("type")
        if kind == "partial":
            c.partials += 1
            _on_partial(c, msg, now)
        elif kind == "final":
            _on_final(c, msg, now)
        elif kind == "lag":
            c.max_lag_ms = max(c.max_lag_ms, msg["lag_ms"])
            c.dropped_ms = max(c.dropped_ms, msg["dropped_ms"])
        elif kind == "error":
            c.errors[msg.get("code", "error")] += 1
        elif kind == "failed":
            c.errors["segment_failed"] += 1
        elif kind == "done":
            c.done.set()


def _on_partial(c: Client, msg: dict, now: float) -> None:
    """Revision r answers the boundaries up to r of its segment. (The partial a session sends
    just before a final, with the final's new text, covers the whole segment: the same holds.)"""
    pending = c.boundaries.get(msg["segment"], {})
    for r in sorted(r for r in pending if r <= msg["revision"]):
        c.latencies.append(now - pending.pop(r))


def _on_final(c: Client, msg: dict, now: float) -> None:
    segment = msg["segment"]
    for sent in c.boundaries.pop(segment, {}).values():
        c.latencies.append(now - sent)
    if segment in c.commits:
        c.finals.append(now - c.commits.pop(segment))


def _censor(c: Client) -> None:
    """Boundaries never answered count with their age now."""
    now = time.perf_counter()
    for pending in c.boundaries.values():
        c.errors["unanswered_boundaries"] += len(pending)
        c.latencies += [now - sent for sent in pending.values()]
    c.boundaries.clear()


def _process_result(clients: list[Client]) -> dict:
    latencies = [x * 1000 for c in clients for x in c.latencies]
    finals = [x * 1000 for c in clients for x in c.finals]
    errors = sum((c.errors for c in clients), Counter())
    return {
        "streams": len(clients),
        "latencies_ms": latencies,
        "finals_ms": finals,
        "partials": sum(c.partials for c in clients),
        "boundaries": sum(c.counted for c in clients),
        "errors": dict(errors),
        "max_lag_ms": max((c.max_lag_ms for c in clients), default=0),
        "dropped_ms": max((c.dropped_ms for c in clients), default=0),
    } | percentiles(latencies)


def percentiles(ms: list[float], prefix: str = "") -> dict:
    if not ms:
        return {f"{prefix}p{q}_ms": None for q in (50, 95, 99)}
    values = np.percentile(np.array(ms), [50, 95, 99])
    return {f"{prefix}p{q}_ms": float(v) for q, v in zip((50, 95, 99), values, strict=True)}


# ---- the parent ----


def run(s: Settings) -> dict:
    """Every process's share of the streams; their results merged."""
    procs = max(1, min(s.procs, s.streams))
    shares = [list(range(p, s.streams, procs)) for p in range(procs)]
    start_at = time.time() + 2.0 + 0.02 * s.streams  # connections open before the clock starts
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        parts = pool.starmap(run_process, [(s, share, start_at) for share in shares])
    return merge(s, parts)


def merge(s: Settings, parts: list[dict]) -> dict:
    latencies = [x for p in parts for x in p["latencies_ms"]]
    finals = [x for p in parts for x in p["finals_ms"]]
    errors = sum((Counter(p["errors"]) for p in parts), Counter())
    unanswered = errors.get("unanswered_boundaries", 0)
    per_process = [
        {k: v for k, v in p.items() if k not in ("latencies_ms", "finals_ms")} for p in parts
    ]
    return (
        {
            "url": s.url,
            "streams": s.streams,
            "procs": len(parts),
            "duration": s.duration,
            "segment_seconds": s.segment_seconds,
            "boundaries": sum(p["boundaries"] for p in parts),
            "latencies": len(latencies),
            "partials": sum(p["partials"] for p in parts),
            "unanswered": unanswered,
            "errors": sum(errors.values()) - unanswered,
            "errors_by_code": dict(errors),
            "max_lag_ms": max(p["max_lag_ms"] for p in parts),
            "dropped_ms": max(p["dropped_ms"] for p in parts),
            "per_process": per_process,
        }
        | percentiles(latencies)
        | percentiles(finals, "final_")
    )


def parse(argv: list[str] | None = None) -> tuple[Settings, bool]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--segment-seconds", type=float, default=20.0)
    p.add_argument("--drain", type=float, default=30.0, help="wait for the last finals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON line on stdout")
    a = p.parse_args(argv)
    s = Settings(a.url, a.streams, a.procs, a.duration, a.segment_seconds, a.drain, a.seed)
    return s, a.json


def main(argv: list[str] | None = None) -> int:
    s, as_json = parse(argv)
    result = run(s)
    if as_json:
        print(json.dumps(result))
        return 0
    for key in ("streams", "procs", "boundaries", "partials", "unanswered", "errors"):
        print(f"{key:>12}: {result[key]}")
    for q in (50, 95, 99):
        value = result[f"p{q}_ms"]
        print(f"{'p' + str(q):>12}: " + ("-" if value is None else f"{value:.1f} ms"))
    print(f"{'max lag':>12}: {result['max_lag_ms']} ms; errors by code: {result['errors_by_code']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
