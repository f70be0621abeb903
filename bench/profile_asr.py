"""Where an ASR workload's time goes: `rtserve bench asr`'s capacity workload (N live streams)
or its offline one (clips at once) under torch.profiler, the runtime thread's phases labelled.

    python bench/profile_asr.py --shape qwen3-asr-0.6b --streams 64 --duration 8 [--out DIR]
    python bench/profile_asr.py --shape qwen3-asr-0.6b --offline 128

Random weights in a bench shape (or `--model DIR`), warmed up as the bench does; the workload
runs once plainly (its result row), then once profiled. Prints:

- the phases of the runtime thread (host time and calls): the log-mel of the due windows
  (`raw_mels`), the batched encoder call, the prompts' submission, the engine step, and the
  worker's whole step (which holds the others);
- the device's busy share (the union of kernel time over the profiled wall time);
- the top operators by device time and by host time.

With `--out`, the Chrome trace goes there too (open it in Perfetto).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from engine import rollback
from engine.bench import synthetic
from engine.bench.asr import AsrBench, _warm_up, clip_offsets, load_system, offline
from engine.bench.live import capacity

PHASES = ("asr.log_mel", "asr.encoder", "asr.submit", "engine.step", "asr.step")


def labelled(obj: object, name: str, label: str) -> None:
    """Wraps obj.name so that each call shows up in the profile as `label`."""
    fn = getattr(obj, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    setattr(obj, name, wrapper)


def label_phases(system) -> None:
    worker = system.worker
    labelled(rollback, "raw_mels", "asr.log_mel")  # looked up in the module at each call
    labelled(worker.model.encoder, "encode_windows", "asr.encoder")
    labelled(worker.engine, "add", "asr.submit")
    labelled(worker.engine, "step", "engine.step")
    labelled(worker, "step", "asr.step")


def busy_share(prof: profile, wall_us: float) -> float:
    """The share of the wall time with at least one kernel or copy running (overlaps counted
    once). The device-side spans of record_function labels are not work: left out."""
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
        and not e.is_user_annotation
        and e.time_range.end > 0
    )
    busy, end = 0, -1
    for a, b in spans:
        if b <= end:
            continue
        busy += b - max(a, end)
        end = b
    return busy / wall_us if wall_us else 0.0


def phase_table(prof: profile) -> str:
    rows = {e.key: e for e in prof.key_averages() if e.key in PHASES}
    lines = [f"{'phase':<14} {'calls':>7} {'host ms':>10} {'ms/call':>9}"]
    for name in PHASES:
        e = rows.get(name)
        if e is not None:
            total = e.cpu_time_total / 1000
            lines.append(f"{name:<14} {e.count:>7} {total:>10.1f} {total / e.count:>9.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="qwen3-asr-0.6b")
    ap.add_argument("--model", type=Path, help="a checkpoint folder instead of random weights")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of live audio")
    ap.add_argument("--offline", type=int, metavar="C", help="profile C clips at once instead")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="folder for the Chrome trace")
    a = ap.parse_args()

    b = AsrBench(shape=a.shape, model=a.model, duration=a.duration, streams=(a.streams,))
    if a.offline:
        b = replace(b, concurrency=a.offline)
    torch.manual_seed(b.seed)
    signal = synthetic.speech_like(b.signal_seconds(), b.seed)
    system = load_system(b)

    def workload() -> dict:
        if a.offline:
            return asyncio.run(offline(system, b, signal, clip_offsets(b, signal)))
        return asyncio.run(capacity(system, b, signal, a.streams))

    try:
        asyncio.run(_warm_up(system, signal))
        row = workload()
        print("plain run:", {k: v for k, v in row.items() if not isinstance(v, list)})
        label_phases(system)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        # the model's work runs on the runtime thread, which exists before the profiler starts
        everywhere = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
        with profile(activities=activities, experimental_config=everywhere) as prof:
            t0 = time.perf_counter()
            row = workload()
            wall_us = (time.perf_counter() - t0) * 1e6
        print("profiled run:", {k: v for k, v in row.items() if not isinstance(v, list)})
    finally:
        system.close()

    print(f"\nruntime thread phases over {wall_us / 1e6:.1f} s of wall time:")
    print(phase_table(prof))
    if torch.cuda.is_available():
        print(f"\ndevice busy {100 * busy_share(prof, wall_us):.0f}% of the wall time")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.top))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        name = f"offline-{a.offline}" if a.offline else f"live-{a.streams}"
        prof.export_chrome_trace(str(a.out / f"asr-{name}.trace.json"))


if __name__ == "__main__":
    main()
