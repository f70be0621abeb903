"""Where an ASR workload's time goes: `rtserve bench asr`'s capacity workload (N live streams)
or its offline one (clips at once), the runtime thread's phases timed on the wall clock.

    python bench/profile_asr.py --shape qwen3-asr-0.6b --streams 64 256 --duration 8
    python bench/profile_asr.py --shape qwen3-asr-0.6b --offline 128 [--ops]

Random weights in a bench shape (or `--model DIR`), warmed up as the bench does; each workload
runs once unmeasured at its size (compiles and caches for its shapes), then once timed. Prints
the bench's row and:

- the runtime thread's phases, wall time and calls: the audio and commands queued by the event
  loop, applied between steps (`inbox`), the log-mel of the due windows (`log_mel`),
  the batched encoder call (`encoder`), the prompts' submission (`submit`), engine steps replayed
  from a decode CUDA graph, from a prompt graph and those run eagerly, with
  their mean batch; the thread's busy share (its `step` calls over the wall time; `inbox` is
  outside it); its wait for work (`idle`); and the rest (`other`: the loop's own turns, and
  waits for the GIL while the event loop's thread runs);
- each ASR request's life: submitted -> first token (waiting for a step that takes prompts, and
  the prefill) -> last token (the decode), p50/p95.

A step's host time includes its wait for the device (the engine reads the sampled tokens back),
so a busy share near 100% means the thread never waits for work: the workload is bound by the
steps' time, host and device together. `--ops` adds a torch.profiler run and its top operators
by device and host time (`--out`: the Chrome trace).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from engine import rollback
from engine.bench import synthetic
from engine.bench.asr import AsrBench, _warm_up, clip_offsets, load_system, offline
from engine.bench.live import capacity


@dataclass
class Clock:
    """Wall time and calls per phase, and each request's times (submitted, first, last token)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # batch sizes
    requests: dict[str, list[float]] = field(default_factory=dict)

    def add(self, phase: str, seconds: float, rows: int = 0) -> None:
        self.seconds[phase] += seconds
        self.calls[phase] += 1
        self.rows[phase] += rows


def timed(clock: Clock, obj: object, name: str, phase: str) -> None:
    """Wraps obj.name so that each call's wall time counts towards `phase`."""
    fn = getattr(obj, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(phase, time.perf_counter() - t0)

    setattr(obj, name, wrapper)


def instrument(system, clock: Clock) -> None:
    worker, engine = system.worker, system.worker.engine
    timed(clock, rollback, "raw_mels", "log_mel")  # looked up in the module at each call
    timed(clock, worker, "encode_windows", "encoder")  # eager or from CUDA graphs
    timed(clock, worker, "take_inbox", "inbox")
    timed(clock, worker, "step", "thread busy")
    timed(clock, system.runtime._cond, "wait", "idle")  # the loop's wait for work
    add, step, runner = engine.add, engine.step, engine.runner

    def submit(*args, **kwargs):
        t0 = time.perf_counter()
        req = add(*args, **kwargs)
        clock.add("submit", time.perf_counter() - t0)
        clock.requests[req.id] = [t0]
        return req

    def engine_step():
        graphs, prompt_graphs = runner.graph_steps, runner.prompt_graph_steps
        t0 = time.perf_counter()
        outputs = step()
        now = time.perf_counter()
        if runner.graph_steps > graphs:
            kind = "step, graph"
        elif runner.prompt_graph_steps > prompt_graphs:
            kind = "step, prompt graph"
        else:
            kind = "step, eager"
        clock.add(kind, now - t0, len(outputs))
        for out in outputs:
            times = clock.requests.get(out.request_id)
            if times is not None and (len(times) == 1 or out.finished):
                times.append(now)
        return outputs

    engine.add, engine.step = submit, engine_step


def report(clock: Clock, wall: float) -> str:
    lines = [f"runtime thread over {wall:.1f} s of wall time:"]
    header = ("phase", "calls", "wall ms", "share", "ms/call", "batch")
    lines.append("{:<18} {:>7} {:>9} {:>6} {:>8} {:>6}".format(*header))
    accounted = sum(clock.seconds[k] for k in ("inbox", "thread busy", "idle"))
    clock.seconds["other"], clock.calls["other"] = max(0.0, wall - accounted), 1
    order = (
        "inbox", "log_mel", "encoder", "submit", "step, graph", "step, prompt graph",
        "step, eager", "thread busy", "idle", "other",
    )  # fmt: skip
    for name in order:
        n = clock.calls.get(name, 0)
        if not n:
            continue
        ms = 1000 * clock.seconds[name]
        batch = f"{clock.rows[name] / n:6.1f}" if name.startswith("step") else ""
        lines.append(
            f"{name:<18} {n:>7} {ms:>9.0f} {ms / 10 / wall:>5.0f}% {ms / n:>8.2f} {batch:>6}"
        )
    done = [t for t in clock.requests.values() if len(t) == 3]
    if done:
        t = np.array(done)
        lines.append(f"\n{len(done)} requests, ms (p50 / p95):")
        for label, ms in (
            ("submitted -> first token", 1000 * (t[:, 1] - t[:, 0])),
            ("first -> last token", 1000 * (t[:, 2] - t[:, 1])),
            ("submitted -> last token", 1000 * (t[:, 2] - t[:, 0])),
        ):
            p50, p95 = np.percentile(ms, [50, 95])
            lines.append(f"  {label:<26} {p50:7.1f} / {p95:7.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="qwen3-asr-0.6b")
    ap.add_argument("--model", type=Path, help="a checkpoint folder instead of random weights")
    ap.add_argument("--streams", type=int, nargs="+", default=[64])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of live audio")
    ap.add_argument("--offline", type=int, metavar="C", help="C clips at once instead")
    ap.add_argument("--performance-mode", default="balanced")
    ap.add_argument("--prefill-interval", type=int, default=AsrBench.prefill_interval)
    ap.add_argument("--max-num-seqs", type=int, default=AsrBench.max_num_seqs)
    ap.add_argument("--no-encoder-graphs", dest="encoder_graphs", action="store_false")
    ap.add_argument("--no-prompt-graphs", dest="prompt_graphs", action="store_false")
    ap.add_argument("--ops", action="store_true", help="also a torch.profiler run: top operators")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="folder for the Chrome trace (with --ops)")
    a = ap.parse_args()

    b = AsrBench(
        shape=a.shape,
        model=a.model,
        duration=a.duration,
        performance_mode=a.performance_mode,
        prefill_interval=a.prefill_interval,
        max_num_seqs=a.max_num_seqs,
        encoder_graphs=a.encoder_graphs,
        prompt_graphs=a.prompt_graphs,
    )
    sizes = [a.offline] if a.offline else a.streams
    torch.manual_seed(b.seed)
    signal = synthetic.speech_like(b.signal_seconds(), b.seed)
    system = load_system(b)
    clock = Clock()

    def workload(n: int) -> dict:
        if a.offline:
            bn = replace(b, concurrency=n, offline_repeats=1)  # one pass, timed below
            return asyncio.run(offline(system, bn, signal, clip_offsets(bn, signal)))
        return asyncio.run(capacity(system, b, signal, n))

    try:
        asyncio.run(_warm_up(system, signal))
        instrument(system, clock)
        for n in sizes:
            workload(n)  # unmeasured: compiles and caches for this size's shapes
            clock.__init__()
            t0 = time.perf_counter()
            row = workload(n)
            wall = time.perf_counter() - t0
            print(f"\n== {n} {'clips' if a.offline else 'streams'}")
            print({k: v for k, v in row.items() if not isinstance(v, list)})
            print(report(clock, wall))
        if a.ops:
            profile_ops(a, lambda: workload(sizes[-1]))
    finally:
        system.close()


def profile_ops(a: argparse.Namespace, workload) -> None:
    """The top operators of one more run under torch.profiler (kernels replayed inside a CUDA
    graph are not listed one by one)."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    # the model's work runs on the runtime thread, which exists before the profiler starts
    everywhere = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=activities, experimental_config=everywhere) as prof:
        workload()
    if torch.cuda.is_available():
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.top))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(a.out / "asr.trace.json"))


if __name__ == "__main__":
    main()
