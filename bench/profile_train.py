"""Where a training step of the demo recognizer (train/) spends its time: a few steps of
`train.train_asr`'s own step on utterances from a manifest folder, then a few under
torch.profiler.

    python bench/profile_train.py --data .data/asr/heldout --batch-seconds 800 1600 3200

A fresh model in a preset (its tokenizer trained on the folder's transcripts) steps on batches
of `--batch-seconds` padded audio, the folder's utterances repeated as needed. For each batch
size prints the median step time, the audio seconds trained per second, the device's busy
share over the profiled steps (on CUDA), the phases of a step (loss forward, backward,
optimizer) and the top operators by host time and by device time. A device busy far under
100% means the host is the limit, and larger batches cost little more time a step.
`--compile` runs the losses under torch.compile (fewer, fused kernels: less host work a step).
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from train.data import batches, load_manifests, read_manifest
from train.feed import noise_levels
from train.model import Batcher, build_model, config_json, prepare
from train.tokenizer import write_tokenizer
from train.train_asr import make_optimizer, train_step

PHASES = ("train.losses", "train.backward", "train.optimizer")


def labelled(obj: object, name: str, label: str) -> None:
    """Wraps obj.name so that each call shows up in the profile as `label`."""
    fn = getattr(obj, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    setattr(obj, name, wrapper)


def busy_share(prof: profile, wall_us: float) -> float:
    """The share of the wall time with at least one kernel or copy running (overlaps counted
    once). The device-side spans of record_function labels are not work: left out. (The steps
    run no CUDA graphs, whose kernels the profiler would not list.)"""
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder with a .jsonl manifest")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-seconds", type=float, nargs="+", default=[800.0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per batch size")
    ap.add_argument("--profiled", type=int, default=3, help="profiled steps per batch size")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--compile", action="store_true", help="the losses under torch.compile (dynamic shapes)"
    )
    a = ap.parse_args()

    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    manifest = next(a.data.glob("*.jsonl"))
    utts = load_manifests([manifest])
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(Path(tmp), [r["text"] for r in read_manifest(manifest)])
    model = build_model(config_json(a.preset, tokenizer), a.device)
    batcher = Batcher(model, tokenizer)
    optimizer = make_optimizer(model, 1e-4)
    if a.compile:  # the first steps compile (the warm-up below); dynamic: no recompiles by size
        batcher.losses = torch.compile(batcher.losses, dynamic=True)
    labelled(batcher, "losses", "train.losses")
    labelled(torch.Tensor, "backward", "train.backward")
    labelled(optimizer, "step", "train.optimizer")
    total = sum(u.audio.size for u in utts) / 16000
    print(
        f"{len(utts)} utterances, {total:.0f} s; {a.preset} preset on {a.device}"
        + (", losses compiled" if a.compile else "")
    )

    for seconds in a.batch_seconds:
        rng = random.Random(0)
        pool = utts * max(1, round(3 * seconds / total))
        # the fullest batch of one epoch: the others are an epoch's remainders
        batch = max(batches(pool, seconds, rng, pool=len(pool)), key=lambda b: len(b))
        waves = [u.audio for u in batch]
        ready = prepare(tokenizer, waves, [u.text for u in batch], noise_levels(len(batch), rng))
        audio_s = sum(w.size for w in waves) / 16000

        times = []
        for _ in range(2 + a.steps):  # two warm-up steps
            sync(device)
            t0 = time.perf_counter()
            train_step(batcher, optimizer, ready, 0.3, device)
            sync(device)
            times.append(time.perf_counter() - t0)
        step = statistics.median(times[2:])
        print(
            f"\n== batch {seconds:.0f} s padded: {len(batch)} utterances, {audio_s:.0f} s of "
            f"audio; step {1000 * step:.0f} ms median, {audio_s / step:.0f} audio s/s"
        )

        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(a.profiled):
                train_step(batcher, optimizer, ready, 0.3, device)
            sync(device)
            wall_us = (time.perf_counter() - t0) * 1e6
        averages = prof.key_averages()
        for e in averages:
            if e.key in PHASES:
                print(f"{e.key:<16} {e.cpu_time_total / 1000 / a.profiled:8.1f} host ms/step")
        if device.type == "cuda":
            print(f"device busy {100 * busy_share(prof, wall_us):.0f}% of the wall time")
            print(averages.table(sort_by="self_cuda_time_total", row_limit=a.top))
        print(averages.table(sort_by="self_cpu_time_total", row_limit=a.top))


if __name__ == "__main__":
    main()
