"""`rtserve bench asr`: Qwen3-ASR streaming on the engine, against the official re-feed loop.

`--model` may also be a Fun-ASR-Nano folder (engine/bench/fun_asr_nano.py, which also writes
one in the released shape): the same workloads on its rollback worker, and as the baseline
funasr's FunASRNano (`bench/fun_asr_nano_baseline.py`, the same request file). Its steps
re-encode the whole segment (encoder_tokens are LFR frames) and its output has no header: run
it with `--header-tokens 0`.

Workloads (`--workloads`, default all but wire):
- steps: one stream, one long segment fed 2 s at a time; for the steps at `positions` seconds:
  audio tokens encoded, prompt tokens computed (the rest came from the prefix cache), prompt
  length, and the step's wall time (feed to partial). Work per step stays flat; only the text
  prefix grows.
- capacity (engine/bench/live.py, with mixed): N streams in process, each fed 100 ms of audio
  every 100 ms of wall time for `duration` seconds and committing a segment every
  `segment_seconds_live` (as VAD would; the first segment of each stream has a random length, and
  stream starts are spread over one step, so steps and commits do not all fall on the same
  instant), after an unmeasured 5 s run at the same N (compiles and allocations for its batch
  shapes). Partial latency runs from the wall time of the feed that closed a step (the one
  holding its last sample: the feed that made it due) to the arrival of its Partial on the event
  loop. Also: steps merged because the previous one ran late, final latency (commit to Final), the
  largest backlog (audio fed and not yet heard by the model; a step's 2 s is its floor), what was
  left when the drain ended, and the largest N whose p95 stays under 300 ms.
- mixed: ASR partial latency under chat load (issue 8's target: p95 at most 1.5x ASR alone).
  `mixed_streams` live streams as in capacity, run twice in the same process: alone, then while
  a chat model on the same runtime thread (random weights in the Qwen3 shape `chat_shape`,
  engine/bench/chat_load.py) keeps `chat_streams` requests of about `chat_prompt_len` prompt and
  `chat_output_len` output tokens generating, resubmitted as they finish. The loaded run starts
  once every chat stream has its first token. Reported: both runs' rows, the p50/p95/p99
  ratios, and the chat output tokens/s over the loaded run (feeding and drain). The chat model
  is loaded after the ASR engine sized its KV cache (on a GPU, 85% of the free memory): it gets
  the rest, so keep it small (Qwen3-0.6B: ~1.2 GB of weights and ~3 GB of KV at 32 streams).
- offline: `concurrency` clips of `clip_seconds`, each fed whole and committed at once, in
  `offline_repeats` passes: audio seconds transcribed per wall second, of the median pass (a
  pass takes under a second on the H200, and single passes ranged 2,746-3,697x).
- baseline: qwen-asr's transformers backend in a subprocess (`bench/qwen_asr_baseline.py`, run
  by `baseline_python`: it needs transformers 4.57.6, which this environment never has), on the
  same weights (a released-layout checkpoint written for it), the same audio and the same output
  lengths: the official algorithm re-run naively at the steps' positions (features, the whole
  encoder, a full prefill and the decode, nothing cached), and `transcribe`'s batched generate
  over the offline clips.
- wire: the server in a subprocess (`rtserve bench asr --serve`: the real app, sessions and
  protocol, with the fixed output lengths below) and `bench/loadgen.py` opening `wire_streams`
  WebSockets on /v1/stream from `procs` processes.

Output lengths. A random decoder never ends a transcript, so every step here decodes a fixed
number of tokens (`ignore_eos`), those of a transcript of `token_rate` tokens per second of
speech after a `header` (`language X<asr_text>`, 4 tokens): a step generates what its text prefix
lacks of `header + ceil(rate * audio seconds)`. The first steps (no prefix) generate
`header + ceil(rate * seconds)`; from the third on, the rolled-back 5 tokens and the new audio's
`ceil(rate * 2 s)`: 13 tokens at 4 tokens/s. The official loop on the same audio decodes the same
counts. (`FixedLengthWorker` does this through `AsrWorker._params`, the one hook it needs.)

The result (JSON; `summarize` prints its tables and writes it with a PNG): `model`, `hardware`,
`torch`, `attention_backend`, `settings`, `output_lengths`;
`steps`: {segment_seconds, first_step_ids, at: {"10": step, ...}, all: [step, ...]}, a step being
{at_s, encoder_tokens, prefill_tokens, prompt_tokens, audio_tokens, text_tokens, prefix_tokens,
generated_tokens, step_ms};
`capacity`: [{streams, p50_ms, p95_ms, p99_ms, final_p50_ms, final_p95_ms, final_p99_ms,
partials, merged_steps, finals, failed_segments, max_backlog_s, end_backlog_s, feeding_s}] and
`capacity_max_streams_p95_under_300ms`;
`mixed`: {streams, alone: capacity row, loaded: capacity row, p50_ratio, p95_ratio, p99_ratio,
p95_ratio_target, within_target, chat: {shape, streams, prompt_len, output_len, num_blocks,
attention_backend, decode_steps, graph_share, output_tokens, finished_requests, seconds,
output_tok_s}};
`offline`: {concurrency, clip_seconds, output_tokens_per_clip, seconds, audio_s_per_s (the
median pass's), runs_audio_s_per_s (each pass's)};
`baseline`: {versions, device, dtype, steps: [{at_s, ids, step_ms, features_ms, prompt_tokens,
audio_tokens, generated_tokens}] (the first at 2 s, then `positions`), offline: {as ours}} and
`first_step_ids_equal`; `wire`: bench/loadgen.py's JSON; a subprocess workload that failed is
{error}; `engine`: the runner's attention, graph sizes, decode and graph steps, prompt steps and
those replayed from graphs (`prompt_graph_steps`; none with `--no-prompt-graphs`), and the
encoder's batched calls run from CUDA graphs (`encoder_graph_calls`, `encoder_graph_replays`;
none with `--no-encoder-graphs`); `rows`: the tables' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.asr import AsrHandle, AsrModel, AsrWorker, build_qwen3_asr
from engine.asr_prompt import AUDIO_PAD
from engine.bench import fun_asr_nano, report, synthetic
from engine.bench.chat_load import ChatLoadSpec
from engine.bench.live import (
    SAMPLE_RATE,
    STEP,
    STEP_TIMEOUT_S,
    BenchError,
    idle,
    max_streams_under,
    mixed,
    warmed_capacity,
)
from engine.config import EngineConfig
from engine.engine import Engine
from engine.models.fun_asr_nano import FunASRNanoConfig
from engine.rollback import RollbackConfig, StepPlan
from engine.runtime import INTERACTIVE_STEPS, Runtime
from engine.sampling import SamplingParams
from engine.streaming import Final, Partial, SegmentFailed, StreamOptions
from kernels.attention import phases

WORKLOADS = ("steps", "capacity", "mixed", "offline", "wire", "baseline")
DEFAULT_WORKLOADS = ("steps", "capacity", "offline", "baseline")
REPO = Path(__file__).resolve().parents[2]
BASELINE_SCRIPT = REPO / "bench" / "qwen_asr_baseline.py"
NANO_BASELINE_SCRIPT = REPO / "bench" / "fun_asr_nano_baseline.py"  # funasr's FunASRNano
LOADGEN_SCRIPT = REPO / "bench" / "loadgen.py"
DEFAULT_BASELINE_PYTHON = str(REPO / ".venv-ref" / "bin" / "python")


# ---- fixed output lengths ----


@dataclass(frozen=True)
class OutputLengths:
    """Tokens of a transcript of `rate` tokens per second of speech after a `header`."""

    rate: float = 4.0
    header: int = 4

    def transcript(self, seconds: float) -> int:
        return self.header + math.ceil(round(self.rate * seconds, 6))

    def step(self, seconds: float, prefix_tokens: int) -> int:
        """What a step over `seconds` of audio generates after a prefix of `prefix_tokens`."""
        return max(1, self.transcript(seconds) - prefix_tokens)


class FixedLengthWorker(AsrWorker):
    """The product's worker, with every step decoding `OutputLengths` tokens (bench only)."""

    lengths: OutputLengths = OutputLengths()

    def _params(self, plan: StepPlan) -> SamplingParams:
        prefix = len(self.tokenizer.encode(plan.prefix)) if plan.prefix else 0
        n = self.lengths.step(plan.upto / SAMPLE_RATE, prefix)
        return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)


def fixed_length_model(
    model, tokenizer, config: EngineConfig, lengths: OutputLengths, runtime: Runtime, name: str
) -> AsrModel:
    """A served ASR model (engine/asr.py's AsrModel) on a FixedLengthWorker."""
    engine = Engine(model.decoder, tokenizer, config)
    worker = FixedLengthWorker(model, tokenizer, engine, RollbackConfig())
    worker.lengths = lengths
    worker.runtime = runtime
    runtime.add(worker)
    return AsrModel(name, worker, model.config.languages)


def load_fixed(
    path: Path, name: str, lengths: OutputLengths, runtime: Runtime, mode: str, **overrides
) -> Any:
    """A checkpoint folder as `load_qwen3_asr` (or `load_fun_asr_nano`) loads it, on fixed
    output lengths."""
    config = EngineConfig.for_mode(mode, **overrides)
    if fun_asr_nano.is_fun_asr_nano(Path(path)):
        return fun_asr_nano.load_fixed(Path(path), name, lengths, runtime, config)
    model, tokenizer = build_qwen3_asr(Path(path), config)
    return fixed_length_model(model, tokenizer, config, lengths, runtime, name)


# ---- settings ----


@dataclass
class AsrBench:
    shape: str | None = "qwen3-asr-0.6b"
    model: Path | None = None  # a checkpoint folder instead of random weights
    second_pass: Path | None = None  # FunASR two-pass: the offline folder beside `model`
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    segment_seconds: float = 300.0  # steps
    positions: tuple[float, ...] = (10.0, 60.0, 300.0)  # steps reported, seconds into the segment
    streams: tuple[int, ...] = (16, 32, 64, 128, 256)  # capacity
    duration: float = 30.0  # capacity and wire
    segment_seconds_live: float = 20.0  # capacity and wire
    drain_seconds: float = 10.0  # capacity: the most the last steps are waited for
    mixed_streams: int = 64  # mixed: live ASR streams, alone and under chat load
    chat_shape: str = "qwen3-0.6b"  # mixed: the chat model's random-weight shape
    chat_streams: int = 32  # mixed: chat requests generating at any time
    chat_prompt_len: int = 512
    chat_output_len: int = 256
    concurrency: int = 128  # offline
    clip_seconds: float = 20.0  # offline
    offline_repeats: int = 3  # offline: timed passes, the median reported
    token_rate: float = 4.0
    header_tokens: int = 4
    wire_streams: int = 128
    procs: int = 4
    baseline_python: str = DEFAULT_BASELINE_PYTHON
    baseline_repeats: int = 3
    baseline_streams: int = 8  # Paraformer-streaming: streams funasr's streaming generate runs
    baseline_timeout: float = 3600.0
    performance_mode: str = "balanced"
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: str = "bfloat16" if torch.cuda.is_available() else "float32"
    attention_backend: str | None = None
    cuda_graphs: bool = True
    encoder_graphs: bool = EngineConfig.encoder_graphs  # Qwen3-ASR's encoder calls from graphs
    prompt_graphs: bool = EngineConfig.prompt_graphs  # prompt steps from graphs (ASR and chat)
    prefill_interval: int = EngineConfig.prefill_interval  # steps prompts wait while decoding
    max_num_seqs: int = EngineConfig.max_num_seqs  # requests running at once
    interactive_steps: int = INTERACTIVE_STEPS  # runtime turns per chat step while speech works
    seed: int = 0

    @property
    def lengths(self) -> OutputLengths:
        return OutputLengths(self.token_rate, self.header_tokens)

    @property
    def chat(self) -> ChatLoadSpec:
        return ChatLoadSpec(
            self.chat_shape, self.chat_streams, self.chat_prompt_len, self.chat_output_len
        )

    @property
    def name(self) -> str:
        return self.model.name if self.model else str(self.shape)

    def step_positions(self) -> list[float]:
        """`positions` inside the segment, each on a step boundary."""
        last = int(self.segment_seconds * SAMPLE_RATE) // STEP * STEP / SAMPLE_RATE
        return [p for p in self.positions if p <= last and p * SAMPLE_RATE % STEP == 0]

    def signal_seconds(self) -> float:
        """Length of the one synthetic signal every workload reads from."""
        live = self.duration + self.segment_seconds_live
        return max(self.segment_seconds, self.clip_seconds * 2, live) + 10.0


def settings(b: AsrBench) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(b).items()}


# ---- the model under test ----


@dataclass
class System:
    """The model under test, in this process, and where its checkpoint folder is."""

    model: AsrModel
    runtime: Runtime
    engine_config: EngineConfig  # what its engine was built with (the chat load's base)
    config: dict[str, Any]  # its config.json
    source: Path | None  # the folder it was loaded from; None: random weights, in memory

    @property
    def worker(self) -> FixedLengthWorker:
        return self.model.worker

    def checkpoint(self, folder: Path) -> Path:
        """A folder qwen-asr and `rtserve serve` load: the source, or the random model saved."""
        if self.source is not None:
            return self.source
        path = Path(folder) / "checkpoint"
        if not (path / "model.safetensors").is_file():
            synthetic.save_checkpoint(self.worker.model, self.config, path)
        return path

    def close(self) -> None:
        self.runtime.shutdown()
        self.model = self.runtime = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_system(b: AsrBench) -> System:
    dtype = getattr(torch, b.dtype)
    config = EngineConfig.for_mode(
        b.performance_mode,
        device=b.device,
        dtype=dtype,
        attention_backend=b.attention_backend,
        cuda_graphs=b.cuda_graphs,
        encoder_graphs=b.encoder_graphs,
        prompt_graphs=b.prompt_graphs,
        prefill_interval=b.prefill_interval,
        max_num_seqs=b.max_num_seqs,
    )
    runtime = Runtime(name="bench-asr", interactive_steps=b.interactive_steps)
    if b.model is not None and fun_asr_nano.is_fun_asr_nano(b.model):
        served = fun_asr_nano.load_fixed(b.model, "bench", b.lengths, runtime, config)
        return System(served, runtime, config, {}, b.model)
    if b.model is not None:
        model, tokenizer = build_qwen3_asr(b.model, config)
        config_json = json.loads((b.model / "config.json").read_text())
    else:
        model, tokenizer, config_json = synthetic.build_model(
            b.shape, b.device, dtype, b.seed, b.attention_backend
        )
    served = fixed_length_model(model, tokenizer, config, b.lengths, runtime, "bench")
    return System(served, runtime, config, config_json, b.model)


def encoder_graphs(system: System) -> dict[str, int]:
    """How many of the encoder's batched calls ran from CUDA graphs (none without them)."""
    graphs = getattr(system.worker, "encoder_graphs", None)
    if graphs is None:
        return {"encoder_graph_calls": 0, "encoder_graph_replays": 0}
    return {"encoder_graph_calls": graphs.calls, "encoder_graph_replays": graphs.replays}


# ---- run ----


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done = max(total, 1), 0

    def tick(self, label: str) -> None:
        report.progress(min(self.done, self.total - 1), self.total, label)
        self.done += 1

    def finish(self) -> None:
        report.progress(self.total, self.total, "done")


def run(b: AsrBench) -> dict[str, Any]:
    workloads = [w for w in WORKLOADS if w in b.workloads]
    unknown = set(b.workloads) - set(WORKLOADS)
    if unknown:
        raise BenchError(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    if "baseline" in workloads and "steps" not in workloads:
        workloads.insert(0, "steps")  # the baseline re-runs the steps' prompts
    if "steps" in workloads and b.segment_seconds * SAMPLE_RATE < STEP:
        raise BenchError("--segment-seconds must hold at least one 2 s step")
    _check_baseline(b, workloads)
    torch.manual_seed(b.seed)
    signal = synthetic.speech_like(b.signal_seconds(), b.seed)
    n_steps = int(b.segment_seconds * SAMPLE_RATE) // STEP
    units = {"steps": n_steps, "capacity": len(b.streams), "mixed": 2}
    units |= {"offline": 1, "baseline": 1, "wire": 1}
    progress = Progress(1 + sum(units[w] for w in workloads))
    progress.tick("loading the model")
    system = load_system(b)
    result: dict[str, Any] = {
        "workload": "asr",
        "model": b.name,
        "hardware": report.hardware(),
        "torch": torch.__version__,
        "attention_backend": phases(system.worker.engine.runner.attention),
        "settings": settings(b),
        "output_lengths": output_lengths_doc(b.lengths),
    }
    with tempfile.TemporaryDirectory(prefix="rtserve-bench-asr-") as tmp:
        try:
            asyncio.run(_warm_up(system, signal))
            plan = _in_process(system, b, signal, workloads, result, progress)
            result["engine"] = system.worker.engine.runner.describe() | encoder_graphs(system)
            if "baseline" in workloads or "wire" in workloads:
                checkpoint = system.checkpoint(Path(tmp))
        finally:
            system.close()  # the subprocesses below need the device memory
        if "baseline" in workloads:
            progress.tick("baseline (subprocess)")
            result["baseline"] = _subprocess(run_baseline, b, checkpoint, signal, plan, Path(tmp))
            if "steps" in result["baseline"]:
                ours = result["steps"]["first_step_ids"]
                result["first_step_ids_equal"] = ours == result["baseline"]["steps"][0]["ids"]
        if "wire" in workloads:
            progress.tick(f"wire: {b.wire_streams} WebSockets")
            result["wire"] = _subprocess(run_wire, b, checkpoint, Path(tmp))
    progress.finish()
    result["rows"] = rows(result)
    return result


def _subprocess(workload, *args) -> dict[str, Any]:
    """A workload run in subprocesses; its failure is reported, not fatal: the in-process
    results stand."""
    try:
        return workload(*args)
    except (BenchError, subprocess.TimeoutExpired, ValueError) as e:
        sys.stderr.write(f"\n{workload.__name__} failed: {e}\n")
        return {"error": str(e)}


def _in_process(
    system: System,
    b: AsrBench,
    signal: np.ndarray,
    workloads: list[str],
    result: dict[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    """The workloads that run on this process's engine; returns what the baseline re-runs."""
    plan: dict[str, Any] = {}
    if "steps" in workloads:
        result["steps"], plan["steps"] = asyncio.run(steps(system, b, signal, progress))
    if "capacity" in workloads:
        result["capacity"] = []
        for n in b.streams:
            progress.tick(f"capacity: {n} streams")
            result["capacity"].append(asyncio.run(warmed_capacity(system, b, signal, n)))
        result["capacity_max_streams_p95_under_300ms"] = max_streams_under(result["capacity"])
    if "mixed" in workloads:
        result["mixed"] = asyncio.run(mixed(system, b, signal, progress))
    offsets = clip_offsets(b, signal)
    plan["offline"] = {
        "concurrency": b.concurrency,
        "clip_samples": int(b.clip_seconds * SAMPLE_RATE),
        "offsets": offsets,
        "new_tokens": b.lengths.transcript(b.clip_seconds),
    }
    if "offline" in workloads:
        progress.tick(f"offline: {b.concurrency} clips")
        result["offline"] = asyncio.run(offline(system, b, signal, offsets))
    return plan


def output_lengths_doc(lengths: OutputLengths) -> dict[str, Any]:
    rollback = RollbackConfig().unfixed_tokens
    return {
        "rule": "a step generates header + ceil(rate * audio_seconds) minus its prefix's tokens "
        "(ignore_eos): header + ceil(rate * s) without a prefix, then rollback + "
        "ceil(rate * 2 s)",
        "token_rate": lengths.rate,
        "header_tokens": lengths.header,
        "rollback_tokens": rollback,
        "steady_step_tokens": rollback + math.ceil(lengths.rate * STEP / SAMPLE_RATE),
    }


async def _warm_up(system: System, signal: np.ndarray, steps: int = 10) -> None:
    """A 20 s segment fed step by step, then committed: kernels, allocator and caches warm for
    the shapes of the first steps, before anything is timed."""
    handle = system.model.open_stream(StreamOptions())
    events = aiter(handle)
    try:
        for k in range(steps):
            handle.feed(signal[k * STEP : (k + 1) * STEP])
            event = await asyncio.wait_for(anext(events), STEP_TIMEOUT_S)
            if not isinstance(event, Partial):
                raise BenchError(f"warm-up step {k + 1}: {event}")
        handle.commit()
        await first_final(handle)
    finally:
        handle.cancel()
    await idle(system.worker)


# ---- steps ----


async def steps(
    system: System, b: AsrBench, signal: np.ndarray, progress: Progress | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One stream, one segment fed 2 s at a time: (summary, the steps the baseline re-runs)."""
    worker = system.worker
    n = int(b.segment_seconds * SAMPLE_RATE) // STEP * STEP
    worker.trace = trace = []
    walls = []
    handle = system.model.open_stream(StreamOptions())
    events = aiter(handle)
    try:
        for upto in range(STEP, n + 1, STEP):
            if progress:
                progress.tick(f"steps: {upto // SAMPLE_RATE} s")
            t0 = time.perf_counter()
            handle.feed(signal[upto - STEP : upto])
            event = await asyncio.wait_for(anext(events), STEP_TIMEOUT_S)
            walls.append(time.perf_counter() - t0)
            if not isinstance(event, Partial):
                raise BenchError(f"step at {upto / SAMPLE_RATE:g} s: {event}")
    finally:
        handle.cancel()
        worker.trace = None
    await idle(worker)
    all_steps = [_step_row(t, wall, worker) for t, wall in zip(trace, walls, strict=True)]
    at = {p: all_steps[int(p * SAMPLE_RATE) // STEP - 1] for p in b.step_positions()}
    summary = {
        "segment_seconds": n / SAMPLE_RATE,
        "at": {f"{p:g}": row for p, row in at.items()},
        "all": all_steps,
        "first_step_ids": trace[0].generated_ids,
    }
    rerun = [{"at_s": STEP / SAMPLE_RATE, **_rerun(trace[0])}]
    rerun += [{"at_s": p, **_rerun(trace[int(p * SAMPLE_RATE) // STEP - 1])} for p in at]
    return summary, rerun


def _audio_tokens(t, worker: AsrWorker) -> int:
    """The audio rows of a step's prompt (Fun-ASR-Nano's trace counts LFR frames encoded:
    its config says how many rows they make)."""
    cfg = worker.model.config
    if isinstance(cfg, FunASRNanoConfig):
        return cfg.audio_tokens(t.encoder_tokens)
    return t.prompt_ids.count(worker.tokenizer.token_to_id(AUDIO_PAD))


def _step_row(t, wall: float, worker: AsrWorker) -> dict[str, Any]:
    audio = _audio_tokens(t, worker)
    return {
        "at_s": t.upto / SAMPLE_RATE,
        "encoder_tokens": t.encoder_tokens,
        "prefill_tokens": t.prefill_tokens,
        "prompt_tokens": len(t.prompt_ids),
        "audio_tokens": audio,
        "text_tokens": len(t.prompt_ids) - audio,
        "prefix_tokens": len(worker.tokenizer.encode(t.prefix)) if t.prefix else 0,
        "generated_tokens": len(t.generated_ids),
        "step_ms": 1000 * wall,
    }


def _rerun(t) -> dict[str, Any]:
    return {"upto": t.upto, "prefix": t.prefix, "new_tokens": len(t.generated_ids)}


# ---- offline ----


def clip_offsets(b: AsrBench, signal: np.ndarray) -> list[int]:
    rng = np.random.RandomState(b.seed + 1)
    clip = int(b.clip_seconds * SAMPLE_RATE)
    return [int(x) for x in rng.randint(0, signal.size - clip, b.concurrency)]


async def run_clips(
    system: Any, b: AsrBench, signal: np.ndarray, offsets: list[int]
) -> tuple[list[Final], float]:
    """Every clip fed whole and committed at once: their finals, and the wall time until the
    last one (any served speech model's system: `model` and `worker`)."""
    clip = int(b.clip_seconds * SAMPLE_RATE)
    t0 = time.perf_counter()
    handles = []
    for off in offsets:
        handle = system.model.open_stream(StreamOptions())
        handle.feed(signal[off : off + clip])
        handle.commit()
        handles.append(handle)
    finals = await asyncio.gather(*(first_final(h) for h in handles))
    wall = time.perf_counter() - t0
    for h in handles:
        h.cancel()
    await idle(system.worker)
    return list(finals), wall


async def offline(
    system: System, b: AsrBench, signal: np.ndarray, offsets: list[int]
) -> dict[str, Any]:
    """The clips through `timed_passes`; audio seconds per wall second."""
    row, _ = await timed_passes(system, b, signal, offsets)
    return row | {"output_tokens_per_clip": b.lengths.transcript(b.clip_seconds)}


async def timed_passes(
    system: Any, b: AsrBench, signal: np.ndarray, offsets: list[int]
) -> tuple[dict[str, Any], list[Final]]:
    """`offline_repeats` passes of `run_clips`: the row of the median pass, with every pass's
    audio seconds per wall second, and the last pass's finals."""
    audio_s = len(offsets) * int(b.clip_seconds * SAMPLE_RATE) / SAMPLE_RATE
    walls, finals = [], []
    for _ in range(max(b.offline_repeats, 1)):
        finals, wall = await run_clips(system, b, signal, offsets)
        walls.append(wall)
    wall = float(np.median(walls))
    row = {
        "concurrency": len(offsets),
        "clip_seconds": b.clip_seconds,
        "seconds": wall,
        "audio_s_per_s": audio_s / wall,
        "runs_audio_s_per_s": [audio_s / w for w in walls],
    }
    return row, finals


async def first_final(handle: AsrHandle) -> Final:
    async for event in handle:
        if isinstance(event, Final):
            return event
        if isinstance(event, SegmentFailed):
            raise BenchError(f"a segment failed: {event.message}")
    raise BenchError("the stream ended before its final")


# ---- baseline (subprocess) ----


def _check_baseline(b: AsrBench, workloads: list[str]) -> None:
    if "baseline" not in workloads:
        return
    python = shutil.which(b.baseline_python) or b.baseline_python
    if not Path(python).is_file():
        raise BenchError(
            f"the baseline interpreter {b.baseline_python!r} does not exist: make the reference "
            "environment (bash tests/fixtures/make_ref_env.sh), pass --baseline-python, or leave "
            "baseline out of --workloads"
        )


def run_baseline(
    b: AsrBench, checkpoint: Path, signal: np.ndarray, plan: dict[str, Any], tmp: Path
) -> dict[str, Any]:
    """qwen-asr's transformers backend on the same weights, audio and lengths (a subprocess)."""
    audio = tmp / "audio.npy"
    np.save(audio, signal)
    request = {
        "checkpoint": str(checkpoint),
        "audio": str(audio),
        "device": b.device,
        "dtype": b.dtype,
        "repeats": b.baseline_repeats,
        "steps": plan["steps"],
        "offline": plan["offline"],
    }
    path = tmp / "baseline-request.json"
    path.write_text(json.dumps(request))
    nano = fun_asr_nano.is_fun_asr_nano(checkpoint)
    script = NANO_BASELINE_SCRIPT if nano else BASELINE_SCRIPT
    return run_baseline_request(b.baseline_python, path, b.baseline_timeout, script)


def run_baseline_request(
    python: str, request: Path, timeout: float, script: Path = BASELINE_SCRIPT
) -> dict[str, Any]:
    """Runs a baseline script (bench/qwen_asr_baseline.py, bench/fun_asr_nano_baseline.py) on
    a request file; its JSON answer."""
    cmd = [python, str(script), str(request)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise BenchError(
            f"the baseline ({' '.join(cmd)}) failed with exit code {proc.returncode}:\n"
            + proc.stderr[-4000:]
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- wire (subprocesses) ----


def run_wire(b: AsrBench, checkpoint: Path, tmp: Path) -> dict[str, Any]:
    """The server on a free port, and the load generator's processes against it."""
    port = free_port()
    log = (tmp / "server.log").open("w")
    cmd = [sys.executable, "-m", "rtserve", "bench", "asr", "--serve", "--model", str(checkpoint)]
    cmd += ["--port", str(port), "--max-sessions", str(b.wire_streams + 8)]
    cmd += ["--token-rate", str(b.token_rate), "--header-tokens", str(b.header_tokens)]
    cmd += ["--device", b.device, "--dtype", b.dtype, "--performance-mode", b.performance_mode]
    cmd += engine_flags(b)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for_health(port, server, tmp / "server.log")
        load = [sys.executable, str(LOADGEN_SCRIPT), "--url", f"ws://127.0.0.1:{port}/v1/stream"]
        load += ["--streams", str(b.wire_streams), "--procs", str(b.procs)]
        load += ["--duration", str(b.duration), "--segment-seconds", str(b.segment_seconds_live)]
        load += ["--seed", str(b.seed), "--json"]
        proc = subprocess.run(load, capture_output=True, text=True, timeout=b.duration + 600)
        if proc.returncode != 0:
            raise BenchError(f"the load generator failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_flags(b: AsrBench) -> list[str]:
    """The engine settings of this run as `rtserve bench asr` flags, for the wire's server."""
    flags = ["--prefill-interval", str(b.prefill_interval), "--max-num-seqs", str(b.max_num_seqs)]
    flags += ["--attention-backend", b.attention_backend] if b.attention_backend else []
    flags += [] if b.cuda_graphs else ["--no-cuda-graphs"]
    flags += [] if b.encoder_graphs else ["--no-encoder-graphs"]
    return flags + ([] if b.prompt_graphs else ["--no-prompt-graphs"])


def wait_for_health(port: int, server: subprocess.Popen, log: Path, timeout=900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"the server exited ({server.returncode}):\n{log.read_text()[-4000:]}")
        url = f"http://127.0.0.1:{port}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise BenchError(f"the server did not answer /health in {timeout:g} s")


# ---- results ----

STEP_COLUMNS = ["workload", "at", "enc_tok", "prefill_tok", "prompt_tok", "out_tok", "step_ms"]
STEP_COLUMNS += ["rt_streams", "vs_baseline"]
LOAD_COLUMNS = ["workload", "at", "p50_ms", "p95_ms", "p99_ms", "lag_s", "audio_s_per_s"]
LOAD_COLUMNS += ["errors", "vs_baseline", "chat_tok_s", "p95_x_alone", "rt_streams"]


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows: per-step work, then load (vs_baseline: how many times better)."""
    base = result.get("baseline") or {}
    base_steps = {f"{s['at_s']:g}": s for s in base.get("steps", [])[1:]}
    out = []
    for at, s in (result.get("steps") or {}).get("at", {}).items():
        row = _steps_row("steps", at, s["encoder_tokens"], s["prefill_tokens"], s)
        ref = base_steps.get(at)
        if ref:
            row["vs_baseline"] = ref["step_ms"] / s["step_ms"]
        out.append(row)
    for at, s in base_steps.items():
        out.append(_steps_row("baseline steps", at, s["audio_tokens"], s["prompt_tokens"], s))
    for c in result.get("capacity", []):
        out.append(_load_row("capacity", f"N={c['streams']}", c) | {"lag_s": c["max_backlog_s"]})
    if "mixed" in result:
        out += _mixed_rows(result["mixed"])
    offline_ref = base.get("offline")
    if "offline" in result:
        o = result["offline"]
        row = {"workload": "offline", "at": f"C={o['concurrency']}"}
        row["audio_s_per_s"] = o["audio_s_per_s"]
        if offline_ref:
            row["vs_baseline"] = o["audio_s_per_s"] / offline_ref["audio_s_per_s"]
        out.append(row)
    if offline_ref:
        at = f"C={offline_ref['concurrency']}"
        out.append(
            {"workload": "baseline offline", "at": at}
            | {"audio_s_per_s": offline_ref["audio_s_per_s"]}
        )
    if "p50_ms" in result.get("wire", {}):
        w = result["wire"]
        row = _load_row("wire", f"N={w['streams']}", w) | {"errors": w["errors"]}
        out.append(row | {"lag_s": w.get("max_lag_ms", 0) / 1000})
    return out


def _mixed_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """ASR alone, then under chat load (with the chat's tokens/s and the p95 ratio)."""
    at = f"N={m['streams']}"
    alone = _load_row("mixed alone", at, m["alone"]) | {"lag_s": m["alone"]["max_backlog_s"]}
    loaded = _load_row("mixed +chat", f"{at} chat={m['chat']['streams']}", m["loaded"])
    loaded |= {"lag_s": m["loaded"]["max_backlog_s"], "chat_tok_s": m["chat"]["output_tok_s"]}
    return [alone, loaded | {"p95_x_alone": m["p95_ratio"]}]


def _steps_row(workload: str, at: str, enc: int, prefill: int, s: dict) -> dict[str, Any]:
    return {
        "workload": workload,
        "at": f"{at} s",
        "enc_tok": enc,
        "prefill_tok": prefill,
        "prompt_tok": s["prompt_tokens"],
        "out_tok": s["generated_tokens"],
        "step_ms": s["step_ms"],
        "rt_streams": 1000 * STEP / SAMPLE_RATE / s["step_ms"],
    }


def _load_row(workload: str, at: str, r: dict[str, Any]) -> dict[str, Any]:
    row = {"workload": workload, "at": at}
    return row | {k: r.get(k) for k in ("p50_ms", "p95_ms", "p99_ms")}


def summarize(result: dict[str, Any], out: Path, name: str) -> str:
    """The tables (stdout), and the JSON and PNG written to `out`."""
    path = report.write(out, name, result)
    png = path.with_suffix(".png")
    plotted = report.plot_lines(png, f"{name} ({result['hardware']})", _panels(result))
    table_rows = result["rows"]
    steps_rows = [r for r in table_rows if "steps" in r["workload"]]
    load_rows = [r for r in table_rows if "steps" not in r["workload"]]
    parts = []
    if steps_rows:
        parts.append(report.table(steps_rows, STEP_COLUMNS))
    if load_rows:  # the columns some row fills (workloads fill different ones)
        columns = [c for c in LOAD_COLUMNS if any(r.get(c) is not None for r in load_rows)]
        parts.append(report.table(load_rows, columns))
    if "capacity" in result:
        n = result["capacity_max_streams_p95_under_300ms"]
        parts.append(f"capacity: largest N with p95 partial latency < 300 ms: {n}")
    if "mixed" in result:
        m = result["mixed"]
        verdict = "within" if m["within_target"] else "misses"
        parts.append(
            f"mixed: p95 partial latency under chat load = {_x(m['p95_ratio'])} ASR alone "
            f"({verdict} the {m['p95_ratio_target']:g}x target); chat "
            f"{m['chat']['output_tok_s']:.0f} output tokens/s over {m['chat']['streams']} streams"
        )
    if "first_step_ids_equal" in result:
        parts.append(f"first step ids equal to the baseline's: {result['first_step_ids_equal']}")
    for workload in ("baseline", "wire"):
        if "error" in result.get(workload, {}):
            parts.append(f"{workload} failed: {result[workload]['error']}")
    parts.append(f"JSON: {path}" + (f"\nplot: {png}" if plotted else ""))
    return "\n\n".join(parts)


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _panels(result: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    cap = result.get("capacity") or []
    if cap:
        xs = [c["streams"] for c in cap]
        series = {f"p{q}": (xs, [c[f"p{q}_ms"] for c in cap]) for q in (50, 95, 99)}
        if "p50_ms" in result.get("wire", {}):
            w = result["wire"]
            for q in (50, 95, 99):
                series[f"wire p{q}"] = ([w["streams"]], [w[f"p{q}_ms"]])
        panels.append(
            {
                "title": "partial latency vs streams",
                "xlabel": "streams",
                "ylabel": "ms",
                "series": series,
                "logx": True,
                "logy": True,
            }
        )
    steps_all = (result.get("steps") or {}).get("all") or []
    if steps_all:
        xs = [s["at_s"] for s in steps_all]
        keys = ("encoder_tokens", "prefill_tokens", "prompt_tokens")
        series = {k.split("_")[0]: (xs, [s[k] for s in steps_all]) for k in keys}
        panels.append(
            {
                "title": "step work vs position",
                "xlabel": "seconds into the segment",
                "ylabel": "tokens",
                "series": series,
            }
        )
        times = {"ours": (xs, [s["step_ms"] for s in steps_all])}
        base = (result.get("baseline") or {}).get("steps", [])[1:]
        if base:
            times["baseline"] = ([s["at_s"] for s in base], [s["step_ms"] for s in base])
        panels.append(
            {
                "title": "step time vs position",
                "xlabel": "seconds into the segment",
                "ylabel": "ms",
                "series": times,
                "logy": True,
            }
        )
    return panels
