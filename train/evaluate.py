"""Held-out WER of an exported model through the production path: loader, engine, streaming worker.

    .venv/bin/python -m train.evaluate models/default --heldout .data/asr/heldout --mode both

`offline` feeds each utterance whole and commits it: one decode over all of its audio.
`streaming` feeds it in 2 s steps and waits for each partial before the next, so every rollback
step (re-decode of the growing audio with the previous text minus its last 5 tokens as the
prefix) runs as it does live; the final transcript is scored. Utterances run concurrently
(--concurrency), batched by the engine as a server batches its sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import torch

from engine.loader import ModelSpec, load
from engine.rollback import RollbackConfig
from engine.runtime import Runtime
from engine.streaming import Final, StreamOptions
from train.data import Utterance, load_manifests
from train.texts import is_demo
from train.wer import wer


async def transcribe(model, audio: np.ndarray, streaming: bool) -> str:
    """One utterance through a stream handle; the text of its final."""
    handle = model.open_stream(StreamOptions())
    events = aiter(handle)
    step = model.worker.config.step_samples
    if streaming:
        for at in range(0, audio.size - step + 1, step):  # each full step yields a partial
            handle.feed(audio[at : at + step])
            await anext(events)
        handle.feed(audio[audio.size - audio.size % step :] if audio.size % step else audio[:0])
    else:
        handle.feed(audio)
    handle.commit()
    handle.finish()
    text = ""
    async for event in events:
        if isinstance(event, Final):
            text = event.text
    return text


def after_speech(seconds: float, dbfs: float | None = None, seed: int = 0) -> np.ndarray:
    """What follows each utterance: digital silence, or white noise at `dbfs` RMS."""
    n = round(seconds * 16000)
    if dbfs is None:
        return np.zeros(n, np.float32)
    noise = np.random.default_rng(seed).standard_normal(n) * 10 ** (dbfs / 20)
    return noise.astype(np.float32)


async def evaluate(
    model, utts: list[Utterance], streaming: bool, concurrency: int, tail: np.ndarray | None = None
) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def one(u: Utterance) -> tuple[str, str]:
        async with gate:
            x = u.audio if tail is None else np.concatenate([u.audio, tail])
            return u.text, await transcribe(model, x, streaming)

    return list(await asyncio.gather(*(one(u) for u in utts)))


def load_model(path: Path, device: str, runtime: Runtime):
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return load(ModelSpec(str(path)), device=device, dtype=dtype, runtime=runtime)


def by_kind(pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """WER of the demo phrases and of the word sequences apart: the sequences give the decoder
    no context, so they are the harder part."""
    kinds = {"demo phrases": [], "word sequences": []}
    for ref, hyp in pairs:
        kinds["demo phrases" if is_demo(ref) else "word sequences"].append((ref, hyp))
    return {k: {"wer": wer(v), "utterances": len(v)} for k, v in kinds.items() if v}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--heldout", type=Path, required=True, help="folder with heldout.jsonl")
    ap.add_argument("--mode", choices=["offline", "streaming", "both"], default="both")
    ap.add_argument("--limit", type=int, help="first N utterances")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument(
        "--silence",
        type=float,
        default=0.0,
        help="seconds of digital silence after each utterance, as a client that pauses",
    )
    ap.add_argument(
        "--silence-dbfs",
        type=float,
        help="the pause as white noise at this level (e.g. -60) instead of digital silence",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--show", type=int, default=5, help="print the first N transcripts")
    ap.add_argument("--json", type=Path, help="write the scores and transcripts here")
    a = ap.parse_args(argv)
    utts = load_manifests([a.heldout / "heldout.jsonl"], a.limit)
    hours = sum(u.audio.size for u in utts) / 16000 / 3600
    runtime = Runtime(name="evaluate")
    model = load_model(a.model, a.device, runtime)
    if not isinstance(model.worker.config, RollbackConfig):
        raise SystemExit(f"{a.model}: not a Qwen3-ASR model")
    results = {}
    tail = after_speech(a.silence, a.silence_dbfs)
    try:
        for mode in ["offline", "streaming"] if a.mode == "both" else [a.mode]:
            t0 = time.time()
            pairs = asyncio.run(evaluate(model, utts, mode == "streaming", a.concurrency, tail))
            seconds = time.time() - t0
            score, kinds = wer(pairs), by_kind(pairs)
            results[mode] = {
                "wer": score,
                "by_kind": kinds,
                "seconds": seconds,
                "pairs": pairs,
            }
            parts = ", ".join(
                f"{k} {100 * v['wer']:.1f}% ({v['utterances']})" for k, v in kinds.items()
            )
            print(
                f"{mode}: WER {100 * score:.2f}% on {len(pairs)} utterances "
                f"({hours * 60:.1f} min of audio) in {seconds:.1f} s; {parts}",
                flush=True,
            )
            for ref, hyp in pairs[: a.show]:
                print(f"  ref: {ref}\n  hyp: {hyp}")
    finally:
        runtime.shutdown()
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
