"""`rtserve bench asr --model DIR` on FunASR's Paraformer, Paraformer-streaming and
SenseVoiceSmall folders, against funasr's AutoModel in the same run (issues 9 and 10).

These models run outside the paged engine (engine/chunked.py's workers on the runtime thread), so
of engine/bench/asr.py's workloads three apply (the others are skipped and listed):
- capacity: asr.py's, unchanged: N live streams fed 100 ms every 100 ms, partial latency from
  the feed that made a step due to its Partial. Paraformer-streaming steps every 600 ms chunk
  (the chunked policy); Paraformer and SenseVoice re-decode the open segment every 2 s (the
  segment policy).
- offline: `concurrency` clips of `clip_seconds`, each fed whole and committed at once, in
  `offline_repeats` passes; audio seconds per second (the median pass) and each clip's final
  text. On Paraformer-streaming this is the chunked path at full speed: every stream's 600 ms
  chunks in batched steps.
- baseline: bench/funasr_baseline.py in a subprocess (`--baseline-python`: an interpreter with
  funasr 1.4.16) on the same folder, audio and clips: `generate` over all clips in one batch for
  Paraformer and SenseVoice; for Paraformer-streaming, funasr's streaming `generate` per 600 ms
  chunk with each stream's cache, streams taking turns, on the first `baseline_streams` clips
  (`--baseline-streams`, 8: funasr runs one chunk of one stream per call, so all 128 clips
  would take many minutes; its per-call time, and so the real-time streams it could keep,
  does not depend on how many streams take turns). `texts_equal` counts the clips whose
  final text is funasr's (SenseVoice's with the rich tags split off, as our worker does); in
  float32 every clip should match.

Two-pass (`--second-pass DIR`: `--model` is the Paraformer-streaming folder, DIR the offline
Paraformer or SenseVoiceSmall one, as `rtserve serve` pairs them for FunASR's 2pass mode):
capacity only, streams of engine/two_pass.py's model whose partials are the online pass's and
whose finals are the offline pass's; both workers share the runtime thread.

Random weights in the released shapes: `python -m engine.bench.funasr_shapes SHAPE DIR`.
These families serve in float32 unless told otherwise (the CIF's fire decisions are threshold
crossings), so the CLI benches them in float32 unless `--dtype` says otherwise. funasr gets
the same dtype through autocast (bench/funasr_baseline.py); its offline Paraformer fails under
bf16 autocast (the CIF mixes dtypes), which the result reports as the baseline's error, and in
bf16 CIF and argmax decisions may flip, so compare texts in float32.

The result: asr.py's fields (`capacity`, `capacity_max_streams_p95_under_300ms`, `offline`,
`baseline`: {versions, device, dtype, model, offline | streaming} or {error}), plus `family`,
`skipped_workloads`, `texts_equal`: {equal, clips} and `rows`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.bench import asr, live, report, synthetic
from engine.chunked import load_paraformer
from engine.models import config_yaml_model
from engine.models.paraformer import ChunkConfig
from engine.models.sensevoice import parse_rich
from engine.runtime import Runtime
from engine.sensevoice_asr import load_sensevoice
from engine.streaming import StreamOptions
from engine.two_pass import TwoPassModel

FAMILIES = ("Paraformer", "ParaformerStreaming", "SenseVoiceSmall")
WORKLOADS = ("capacity", "offline", "baseline")
BASELINE_SCRIPT = asr.REPO / "bench" / "funasr_baseline.py"
SAMPLE_RATE = live.SAMPLE_RATE


def is_funasr(path: Path) -> bool:
    """Whether a folder holds one of FAMILIES (config.yaml's `model:`)."""
    return config_yaml_model(Path(path)) in FAMILIES


@dataclass
class Workers:
    """Several workers seen as one, for the live workloads' waits (`streams`, `has_work`)."""

    workers: tuple[Any, ...]

    @property
    def streams(self) -> list[Any]:
        return [s for w in self.workers for s in w.streams]

    def has_work(self) -> bool:
        return any(w.has_work() for w in self.workers)


@dataclass
class FunasrSystem:
    """The served model under test (asr.py's workloads read `model` and `worker`)."""

    model: Any  # engine/chunked.py's FunasrAsrModel or engine/sensevoice_asr.py's SenseVoiceServed
    runtime: Runtime
    family: str

    @property
    def worker(self) -> Any:
        if isinstance(self.model, TwoPassModel):
            return Workers((self.model.online.worker, self.model.offline.worker))
        return self.model.worker

    def close(self) -> None:
        self.runtime.shutdown()
        self.model = self.runtime = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_system(b: asr.AsrBench) -> FunasrSystem:
    """The folder served as `rtserve serve` serves it, on the bench's device and dtype."""
    runtime = Runtime(name="bench-asr", interactive_steps=b.interactive_steps)
    family, model = _load(Path(b.model), b, runtime)
    if b.second_pass is not None:
        if family != "ParaformerStreaming":
            raise live.BenchError(f"--second-pass needs a Paraformer-streaming --model: {family}")
        second, offline = _load(Path(b.second_pass), b, runtime)
        if second not in ("Paraformer", "SenseVoiceSmall"):
            raise live.BenchError(f"--second-pass: {second} is not an offline model")
        family, model = f"{family}+{second}", TwoPassModel(model, offline)
    return FunasrSystem(model, runtime, family)


def _load(path: Path, b: asr.AsrBench, runtime: Runtime) -> tuple[str, Any]:
    family = config_yaml_model(path)
    dtype = getattr(torch, b.dtype)
    if family == "SenseVoiceSmall":
        return family, load_sensevoice(path, "bench", b.performance_mode, runtime, b.device, dtype)
    return family, load_paraformer(path, "bench", b.performance_mode, runtime, b.device, dtype)


def run(b: asr.AsrBench) -> dict[str, Any]:
    applicable = ("capacity",) if b.second_pass is not None else WORKLOADS
    workloads = [w for w in applicable if w in b.workloads]
    torch.manual_seed(b.seed)
    signal = synthetic.speech_like(b.signal_seconds(), b.seed)
    progress = asr.Progress(1 + len(b.streams) * ("capacity" in workloads) + 2)
    progress.tick("loading the model")
    system = load_system(b)
    result: dict[str, Any] = {
        "workload": "asr",
        "model": b.name,
        "family": system.family,
        "hardware": report.hardware(),
        "torch": torch.__version__,
        "settings": asr.settings(b),
        "skipped_workloads": sorted(set(b.workloads) - set(applicable)),
    }
    offsets = asr.clip_offsets(b, signal)
    texts: list[str] = []
    try:
        asyncio.run(_warm_up(system, signal))
        if "capacity" in workloads:
            result["capacity"] = []
            for n in b.streams:
                progress.tick(f"capacity: {n} streams")
                result["capacity"].append(asyncio.run(live.warmed_capacity(system, b, signal, n)))
            result["capacity_max_streams_p95_under_300ms"] = live.max_streams_under(
                result["capacity"]
            )
        if "offline" in workloads:
            progress.tick(f"offline: {b.concurrency} clips")
            result["offline"], texts = asyncio.run(offline(system, b, signal, offsets))
    finally:
        family = system.family
        system.close()  # the baseline needs the device memory
    if "baseline" in workloads:
        progress.tick("baseline (subprocess)")
        result["baseline"] = _baseline_or_error(b, family, signal, offsets)
        if texts and "error" not in result["baseline"]:
            result["texts_equal"] = compare_texts(family, texts, baseline_texts(result["baseline"]))
    progress.finish()
    result["rows"] = rows(result)
    return result


async def _warm_up(system: FunasrSystem, signal: np.ndarray) -> None:
    """One 4 s segment fed in 100 ms pieces and committed: kernels and allocator warm."""
    handle = system.model.open_stream(StreamOptions())
    try:
        for k in range(40):
            handle.feed(signal[k * live.CHUNK : (k + 1) * live.CHUNK])
        handle.commit()
        await asyncio.wait_for(asr.first_final(handle), live.STEP_TIMEOUT_S)
    finally:
        handle.cancel()
    await live.idle(system.worker)


async def offline(
    system: FunasrSystem, b: asr.AsrBench, signal: np.ndarray, offsets: list[int]
) -> tuple[dict[str, Any], list[str]]:
    """Every clip fed whole and committed at once, `offline_repeats` times (engine/bench/asr.py's
    `timed_passes`): (row, each clip's final text)."""
    row, finals = await asr.timed_passes(system, b, signal, offsets)
    return row, [f.text for f in finals]


# ---- baseline ----


def baseline_request(
    b: asr.AsrBench, family: str, audio: Path, offsets: list[int]
) -> dict[str, Any]:
    """The request bench/funasr_baseline.py reads: the offline clips, run its way."""
    clips = {"clip_samples": int(b.clip_seconds * SAMPLE_RATE), "offsets": offsets}
    request: dict[str, Any] = {
        "checkpoint": str(b.model),
        "audio": str(audio),
        "device": b.device,
        "dtype": b.dtype,
    }
    if family == "ParaformerStreaming":
        clips["offsets"] = offsets[: b.baseline_streams]
        return request | {"streaming": clips | {"chunk_samples": ChunkConfig().stride_samples}}
    return request | {"offline": clips | {"batch_size": len(offsets)}}


def run_baseline(
    b: asr.AsrBench, family: str, signal: np.ndarray, offsets: list[int], tmp: Path
) -> dict[str, Any]:
    audio = tmp / "audio.npy"
    np.save(audio, signal)
    path = tmp / "funasr-request.json"
    path.write_text(json.dumps(baseline_request(b, family, audio, offsets)))
    return asr.run_baseline_request(b.baseline_python, path, b.baseline_timeout, BASELINE_SCRIPT)


def _baseline_or_error(
    b: asr.AsrBench, family: str, signal: np.ndarray, offsets: list[int]
) -> dict[str, Any]:
    """The baseline's answer; its failure is reported, not fatal (ours stand)."""
    try:
        with tempfile.TemporaryDirectory(prefix="rtserve-bench-funasr-") as tmp:
            return run_baseline(b, family, signal, offsets, Path(tmp))
    except (live.BenchError, subprocess.TimeoutExpired, ValueError, OSError) as e:
        sys.stderr.write(f"\nthe funasr baseline failed: {e}\n")
        return {"error": str(e)}


def baseline_texts(baseline: dict[str, Any]) -> list[str]:
    return (baseline.get("offline") or baseline.get("streaming") or {}).get("texts", [])


def compare_texts(family: str, ours: list[str], theirs: list[str]) -> dict[str, int]:
    """How many of the clips funasr decoded have its text (SenseVoice's: with its tags split
    off, as our worker's Final carries them); funasr may have run the first clips only."""
    if family == "SenseVoiceSmall":
        theirs = [parse_rich(t).text for t in theirs]
    equal = sum(a == b for a, b in zip(ours, theirs, strict=False))
    return {"equal": equal, "clips": min(len(ours), len(theirs))}


# ---- results ----


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """asr.py's capacity and offline rows, then funasr's throughput (and per-call latency)."""
    base = result.get("baseline") or {}
    theirs = base.get("offline") or base.get("streaming")
    out = asr.rows({k: v for k, v in result.items() if k != "baseline"})
    for row in out:
        if row["workload"] == "offline" and theirs:
            row["vs_baseline"] = row["audio_s_per_s"] / theirs["audio_s_per_s"]
    if theirs:
        how = "streaming" if "streaming" in base else "offline"
        row = {"workload": f"funasr {how}", "at": f"C={len(theirs['texts'])}"}
        row["audio_s_per_s"] = theirs["audio_s_per_s"]
        if how == "streaming":  # per generate call (one chunk of one stream)
            row |= {f"p{q}_ms": theirs[f"call_p{q}_ms"] for q in (50, 95, 99)}
            row["rt_streams"] = theirs["real_time_streams"]
        out.append(row)
    return out


def summarize(result: dict[str, Any], out: Path, name: str) -> str:
    """asr.py's tables, JSON and plot, and how many texts match funasr's."""
    text = asr.summarize(result, out, name)
    if "texts_equal" in result:
        t = result["texts_equal"]
        text += f"\n\nfinal texts equal to funasr's: {t['equal']} of {t['clips']} clips"
    if result.get("skipped_workloads"):
        text += f"\nnot applicable to {result['family']}: {', '.join(result['skipped_workloads'])}"
    return text
