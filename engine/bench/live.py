"""The live workloads of `rtserve bench asr`: streams fed on a real clock (capacity), and the
same alone and under chat load (mixed). Shared by every served speech family's bench
(engine/bench/asr.py for Qwen3-ASR and Fun-ASR-Nano, engine/bench/funasr_asr.py for FunASR's).

A live stream gets 100 ms of audio every 100 ms of wall time and a commit at each segment's end,
as a client with VAD would send it; a partial's latency runs from the feed that completed its
step to the partial's arrival.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.bench.chat_load import ChatLoad
from engine.rollback import RollbackConfig
from engine.streaming import Final, Partial, StreamOptions

if TYPE_CHECKING:
    from engine.asr import AsrHandle, AsrWorker
    from engine.bench.asr import AsrBench, Progress, System

SAMPLE_RATE = 16_000
STEP = RollbackConfig().step_samples  # 2 s: the official chunk
CHUNK = SAMPLE_RATE // 10  # 100 ms: what a live client sends at a time
P95_TARGET_MS = 300.0
STEP_TIMEOUT_S = 600.0  # one step of the steps workload, on the slowest device
MIXED_P95_RATIO_TARGET = 1.5  # issue 8: ASR p95 under full chat load vs alone
WARM_UP_S = 5.0  # a live workload's unmeasured first run at N streams (at most its duration)


class BenchError(RuntimeError):
    """A workload could not run (a missing baseline interpreter, a server that did not start)."""


async def idle(worker: Any, timeout: float = 600.0) -> None:
    """Until the worker has no stream and no work (for an engine's worker: the engine has no
    request; the last run's are gone). Also FunASR's workers (engine/bench/funasr_asr.py)."""
    deadline = time.perf_counter() + timeout
    while worker.streams or worker.has_work():
        if time.perf_counter() > deadline:
            raise BenchError("the engine did not go idle")
        await asyncio.sleep(0.01)


# ---- capacity ----


@dataclass
class _Live:
    """One live stream of the capacity workload, as its client sees it."""

    handle: AsrHandle
    offset: int  # where in the signal its audio starts
    segment: int  # samples of the open segment when it is committed
    fed: int = 0  # samples fed (the handle's clock)
    segment_start: int = 0
    feeds: deque[tuple[int, float]] = field(default_factory=deque)  # (fed up to, at), unheard
    commits: deque[float] = field(default_factory=deque)  # when, for the finals to come
    last_partial: tuple[int, int] | None = None  # (segment, end sample)
    latencies: list[float] = field(default_factory=list)
    finals: list[float] = field(default_factory=list)
    partials: int = 0
    merged: int = 0
    failed: int = 0
    max_backlog: int = 0


async def capacity(system: System, b: AsrBench, signal: np.ndarray, n: int) -> dict[str, Any]:
    """N live streams for `duration` seconds of wall time: the latency of every partial."""
    rng = np.random.RandomState(b.seed + n)
    live_segment = int(b.segment_seconds_live * SAMPLE_RATE) // CHUNK * CHUNK
    streams = [
        _Live(
            system.model.open_stream(StreamOptions()),
            offset=int(rng.randint(signal.size)),
            segment=int(rng.randint(STEP // CHUNK, live_segment // CHUNK + 1)) * CHUNK,
        )
        for _ in range(n)
    ]
    collectors = [asyncio.create_task(_collect(s)) for s in streams]
    t0 = time.perf_counter() + 0.1
    step_s = STEP / SAMPLE_RATE
    feeders = [
        _feed(s, signal, t0 + i * step_s / n, b.duration, live_segment)
        for i, s in enumerate(streams)
    ]
    await asyncio.gather(*feeders)
    feeding = time.perf_counter() - t0
    await _quiet(system.worker, b.drain_seconds)
    end_backlog = max(s.fed - s.handle.consumed_samples for s in streams)
    for s in streams:
        s.handle.cancel()
    await asyncio.gather(*collectors)
    await idle(system.worker)
    row = _capacity_row(n, streams, feeding)
    return row | {"end_backlog_s": end_backlog / SAMPLE_RATE}


async def _feed(s: _Live, signal: np.ndarray, start: float, duration: float, live: int) -> None:
    """100 ms of audio every 100 ms of wall time; a commit at each segment's end."""
    for k in range(int(duration * 10)):
        delay = start + k * CHUNK / SAMPLE_RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = np.take(signal, np.arange(s.offset + s.fed, s.offset + s.fed + CHUNK), mode="wrap")
        now = time.perf_counter()
        s.handle.feed(chunk)
        s.fed += CHUNK
        s.feeds.append((s.fed, now))
        if s.fed - s.segment_start >= s.segment:  # as VAD would: the segment ends here
            s.handle.commit()
            s.commits.append(now)
            s.segment_start, s.segment = s.fed, live
        s.max_backlog = max(s.max_backlog, s.fed - s.handle.consumed_samples)


async def _collect(s: _Live) -> None:
    async for event in s.handle:
        now = time.perf_counter()
        if isinstance(event, Partial):
            s.partials += 1
            _on_partial(s, event, now)
        elif isinstance(event, Final):
            s.finals.append(now - s.commits.popleft())
        else:
            s.failed += 1
            if s.commits:
                s.commits.popleft()


def _on_partial(s: _Live, event: Partial, now: float) -> None:
    """Latency from the feed that closed the step (the one holding its last sample, which made
    the step due) to now; a step covering more than 2 s since the last one was merged."""
    while s.feeds and s.feeds[0][0] < event.end_sample:
        s.feeds.popleft()
    if s.feeds:
        fed_up_to, at = s.feeds[0]
        s.latencies.append(now - at)
        if fed_up_to == event.end_sample:
            s.feeds.popleft()
    last = s.last_partial
    if last and last[0] == event.segment and event.end_sample - last[1] > STEP:
        s.merged += 1
    s.last_partial = (event.segment, event.end_sample)


async def _quiet(worker: AsrWorker, timeout: float) -> None:
    """Until the worker has had nothing to do for 0.2 s (the last steps are out), or timeout."""
    deadline = time.perf_counter() + timeout
    idle_since = None
    while time.perf_counter() < deadline:
        if worker.has_work():
            idle_since = None
        elif idle_since is None:
            idle_since = time.perf_counter()
        elif time.perf_counter() - idle_since > 0.2:
            return
        await asyncio.sleep(0.01)


def _capacity_row(n: int, streams: list[_Live], feeding: float) -> dict[str, Any]:
    latencies = np.array([x for s in streams for x in s.latencies]) * 1000
    finals = np.array([x for s in streams for x in s.finals]) * 1000
    row: dict[str, Any] = {"streams": n, "feeding_s": feeding}
    row |= _percentiles(latencies, "")
    row |= _percentiles(finals, "final_")
    return row | {
        "partials": sum(s.partials for s in streams),
        "merged_steps": sum(s.merged for s in streams),
        "finals": int(finals.size),
        "failed_segments": sum(s.failed for s in streams),
        "max_backlog_s": max(s.max_backlog for s in streams) / SAMPLE_RATE,
    }


def _percentiles(ms: np.ndarray, prefix: str) -> dict[str, float | None]:
    if ms.size == 0:
        return {f"{prefix}p{q}_ms": None for q in (50, 95, 99)}
    values = np.percentile(ms, [50, 95, 99])
    return {f"{prefix}p{q}_ms": float(v) for q, v in zip((50, 95, 99), values, strict=True)}


async def warmed_capacity(
    system: System, b: AsrBench, signal: np.ndarray, n: int
) -> dict[str, Any]:
    """`capacity` after an unmeasured run at the same N: the first run at N streams pays for
    compiling and allocating at its new batch shapes (on the H200 that made the mixed
    workload's "alone" slower than "under load")."""
    await capacity(system, replace(b, duration=min(WARM_UP_S, b.duration)), signal, n)
    return await capacity(system, b, signal, n)


def max_streams_under(rows_: list[dict[str, Any]], target_ms: float = P95_TARGET_MS) -> int | None:
    """The largest N whose p95 partial latency stays under the target (None: not even the
    smallest)."""
    ok = [r["streams"] for r in rows_ if r["p95_ms"] is not None and r["p95_ms"] < target_ms]
    return max(ok) if ok else None


# ---- mixed ----


async def mixed(
    system: System, b: AsrBench, signal: np.ndarray, progress: Progress | None = None
) -> dict[str, Any]:
    """The capacity workload at `mixed_streams`, alone and then under chat load on the same
    runtime thread (the server's arrangement: engine/runtime.py steps the ASR worker first)."""
    n = b.mixed_streams
    if progress:
        progress.tick(f"mixed: {n} streams alone")
    alone = await warmed_capacity(system, b, signal, n)
    if progress:
        progress.tick(f"mixed: {n} streams + {b.chat_streams} chat requests")
    load = ChatLoad(b.chat, system.runtime, system.engine_config, b.seed)
    try:
        load.start()
        await load.running(STEP_TIMEOUT_S)
        tokens0, finished0, t0 = load.tokens, load.finished, time.perf_counter()
        loaded = await capacity(system, b, signal, n)
        seconds = time.perf_counter() - t0
        load.check()
        chat = load.describe() | {
            "output_tokens": load.tokens - tokens0,
            "finished_requests": load.finished - finished0,
            "seconds": seconds,
            "output_tok_s": (load.tokens - tokens0) / seconds,
        }
    finally:
        await load.stop()
        del load
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    ratios = {f"p{q}_ratio": _ratio(loaded[f"p{q}_ms"], alone[f"p{q}_ms"]) for q in (50, 95, 99)}
    p95 = ratios["p95_ratio"]
    return (
        {"streams": n, "alone": alone, "loaded": loaded}
        | ratios
        | {
            "p95_ratio_target": MIXED_P95_RATIO_TARGET,
            "within_target": p95 is not None and p95 <= MIXED_P95_RATIO_TARGET,
            "chat": chat,
        }
    )


def _ratio(loaded: float | None, alone: float | None) -> float | None:
    return loaded / alone if loaded is not None and alone else None
