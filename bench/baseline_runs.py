"""What the streaming baselines of `rtserve bench asr` share (bench/qwen_asr_baseline.py,
bench/fun_asr_nano_baseline.py): the steps and offline runs over a `Baseline` with `step(audio,
prefix, new_tokens)` and `offline(clips, new_tokens)`, and the device sync around timings.
Imported from the scripts' own folder: it needs only numpy and torch."""

from __future__ import annotations

import statistics
import sys
from typing import Any

import numpy as np
import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_steps(base: Any, audio: np.ndarray, steps: list[dict], repeats: int) -> list[dict]:
    first = steps[0]
    base.step(audio[: first["upto"]], first["prefix"], first["new_tokens"])  # warm-up
    out = []
    for s in steps:
        runs = [
            base.step(audio[: s["upto"]], s["prefix"], s["new_tokens"])
            for _ in range(max(1, repeats))
        ]
        row = runs[0] | {"step_ms": statistics.median(r["step_ms"] for r in runs)}
        row["features_ms"] = statistics.median(r["features_ms"] for r in runs)
        out.append({"at_s": s["at_s"]} | row)
        print(f"baseline step at {s['at_s']:g} s: {row['step_ms']:.1f} ms", file=sys.stderr)
    return out


def run_offline(base: Any, audio: np.ndarray, spec: dict) -> dict:
    n = spec["clip_samples"]
    clips = [audio[o : o + n] for o in spec["offsets"]]
    base.offline(clips[:2], 2)  # warm-up
    r = base.offline(clips, spec["new_tokens"])
    seconds = len(clips) * n / 16000
    return {
        "concurrency": len(clips),
        "clip_seconds": n / 16000,
        "output_tokens_per_clip": r["generated_tokens"],
        "seconds": r["seconds"],
        "audio_s_per_s": seconds / r["seconds"],
    }
