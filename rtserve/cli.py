"""`rtserve` command line: `rtserve serve` runs the server, `rtserve bench` measures it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import get_args

from engine.loader import ModelLoadError, default_spec, load, parse_spec
from engine.rollback import RollbackConfig
from engine.runtime import shared_runtime
from rtserve.config import Limits, PerformanceMode, ServerConfig


def _limit_flags(p: argparse.ArgumentParser) -> None:
    d = Limits()
    g = p.add_argument_group("limits (README.md, Limits)")
    g.add_argument(
        "--max-sessions",
        type=int,
        default=d.max_sessions,
        help="concurrent WebSocket sessions (default %(default)s)",
    )
    g.add_argument(
        "--max-frame-bytes",
        type=int,
        default=d.max_frame_bytes,
        help="largest WebSocket message in bytes (default %(default)s)",
    )
    g.add_argument(
        "--max-buffered-seconds",
        type=float,
        default=d.max_buffered_seconds,
        help="audio a session may have waiting for the model (default %(default)s)",
    )
    g.add_argument(
        "--max-session-seconds",
        type=float,
        default=d.max_session_seconds,
        help="wall-clock length of a session (default %(default)s)",
    )
    g.add_argument(
        "--max-segment-seconds",
        type=float,
        default=d.max_segment_seconds,
        help="longest segment before the server commits it (default %(default)s)",
    )
    g.add_argument(
        "--max-lag-ms",
        type=int,
        default=d.max_lag_ms,
        help="how far the model may trail live audio (default %(default)s)",
    )


def _engine_flags(p: argparse.ArgumentParser) -> None:
    from kernels.attention import BACKENDS

    g = p.add_argument_group("engine")
    g.add_argument(
        "--attention-backend",
        choices=BACKENDS,
        default=None,
        help="force one attention backend (default: auto, the best available; logged at start)",
    )
    g.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="run decode steps eagerly instead of replaying them from CUDA graphs",
    )
    g.add_argument(
        "--no-encoder-graphs",
        dest="encoder_graphs",
        action="store_false",
        help="run the speech encoder eagerly (engine/encoder_graphs.py)",
    )
    g.add_argument(
        "--no-prompt-graphs",
        dest="prompt_graphs",
        action="store_false",
        help="run steps with prompt tokens eagerly (engine/prompt_graphs.py)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--ws-per-message-deflate",
        action="store_true",
        help="accept WebSocket compression when a client offers it (off: audio does not compress)",
    )
    s.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PATH|HUB_ID|NAME=PATH",
        help="a model to serve (repeatable); default: the embedded model",
    )
    s.add_argument("--api-key", default=None, help="require this key on every endpoint")
    s.add_argument("--performance-mode", choices=get_args(PerformanceMode), default="balanced")
    r = RollbackConfig()
    s.add_argument(
        "--asr-step-seconds",
        type=float,
        default=r.step_seconds,
        help="rollback streaming (Qwen3-ASR): seconds of audio per step (default %(default)s)",
    )
    s.add_argument(
        "--asr-rollback-tokens",
        type=int,
        default=r.unfixed_tokens,
        help="tokens of the previous output that a step may revise (default %(default)s)",
    )
    s.add_argument(
        "--asr-unfixed-steps",
        type=int,
        default=r.unfixed_chunks,
        help="first steps of a segment with no text prefix (default %(default)s)",
    )
    s.add_argument(
        "--asr-max-new-tokens",
        type=int,
        default=r.max_new_tokens,
        help="tokens a step may generate (default %(default)s)",
    )
    s.add_argument("--log-level", default="info")
    _engine_flags(s)
    _limit_flags(s)
    t = sub.add_parser("transcribe", help="transcribe audio files and print the transcript")
    t.add_argument("files", nargs="+", type=Path)
    t.add_argument(
        "--model", default=None, metavar="PATH|HUB_ID", help="default: the embedded model"
    )
    t.add_argument("--language", default=None)
    t.add_argument("--prompt", default=None, help="context: names, terms")
    t.add_argument(
        "--format", default="text", choices=["text", "json", "verbose_json", "srt", "vtt"]
    )
    t.add_argument(
        "--words",
        action="store_true",
        help="verbose_json: add the timed words (models that time them, e.g. FireRedASR2-AED)",
    )
    b = sub.add_parser("bench", help="benchmarks (results: README, docs/benchmarks.md)")
    work = b.add_subparsers(dest="workload", required=True)
    c = work.add_parser("chat", help="decode tokens/s and time to first token vs transformers")
    c.add_argument("--shape", default="qwen3-0.6b", help="random weights shaped like this model")
    c.add_argument("--model", type=Path, default=None, help="a checkpoint folder instead")
    c.add_argument("--batch-sizes", type=_ints, default=(1, 64, 256))
    c.add_argument("--prompt-len", type=int, default=128)
    c.add_argument("--output-len", type=int, default=128)
    c.add_argument("--ttft-lens", type=_ints, default=(1024, 8192))
    c.add_argument("--no-baseline", action="store_true", help="skip transformers")
    c.add_argument("--device", default=None)
    c.add_argument("--dtype", default=None)
    c.add_argument("--out", type=Path, default=Path("bench/results"))
    _engine_flags(c)
    k = work.add_parser("kernels", help="attention kernels: TB/s and TFLOP/s vs FA4 and limits")
    k.add_argument("--block-size", type=int, default=16, help="KV cache page, tokens")
    k.add_argument("--repeats", type=int, default=20)
    k.add_argument(
        "--decode-cases", type=_shapes, help="BxCONTEXT,... (default: the documented table)"
    )
    k.add_argument(
        "--prefill-cases",
        type=_shapes,
        help="BxLENGTH,...: small ones show each backend's per-call host cost",
    )
    k.add_argument("--out", type=Path, default=Path("bench/results"))
    _bench_asr_flags(work)
    return p


def _bench_asr_flags(work) -> None:
    from engine.bench.asr import DEFAULT_BASELINE_PYTHON, DEFAULT_WORKLOADS, WORKLOADS, AsrBench
    from engine.bench.chat import SHAPES as CHAT_SHAPES
    from engine.bench.synthetic import SHAPES

    r = work.add_parser("asr", help="ASR streaming: step work, capacity, mixed, offline, wire")
    r.add_argument(
        "--shape", default="qwen3-asr-0.6b", choices=sorted(SHAPES), help="random weights"
    )
    r.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a checkpoint folder instead: Qwen3-ASR, Fun-ASR-Nano, or FunASR's Paraformer("
        "-streaming) / SenseVoiceSmall (capacity, offline and funasr's baseline only)",
    )
    r.add_argument(
        "--second-pass",
        type=Path,
        default=None,
        help="two-pass capacity: --model is a Paraformer-streaming folder, this the offline "
        "Paraformer or SenseVoiceSmall folder of FunASR's 2pass mode",
    )
    r.add_argument(
        "--workloads",
        type=_names,
        default=",".join(DEFAULT_WORKLOADS),
        help=f"comma-separated, of {','.join(WORKLOADS)} (default %(default)s)",
    )
    r.add_argument("--segment-seconds", type=float, default=300.0, help="steps: segment length")
    r.add_argument("--positions", type=_floats, default=(10.0, 60.0, 300.0), help="steps shown")
    r.add_argument("--streams", type=_ints, default=(16, 32, 64, 128, 256), help="capacity")
    r.add_argument("--duration", type=float, default=30.0, help="capacity and wire, seconds")
    r.add_argument("--segment-seconds-live", type=float, default=20.0, help="commit cadence")
    r.add_argument(
        "--drain-seconds", type=float, default=10.0, help="capacity: wait for late partials"
    )
    r.add_argument("--mixed-streams", type=int, default=64, help="mixed: live ASR streams")
    r.add_argument(
        "--chat-shape",
        default="qwen3-0.6b",
        choices=sorted(CHAT_SHAPES),
        help="mixed: the chat model's random weights",
    )
    r.add_argument("--chat-streams", type=int, default=32, help="mixed: chat requests at once")
    r.add_argument("--chat-prompt-len", type=int, default=512, help="mixed: chat prompt tokens")
    r.add_argument("--chat-output-len", type=int, default=256, help="mixed: chat output tokens")
    r.add_argument("--concurrency", type=int, default=128, help="offline clips at once")
    r.add_argument(
        "--offline-repeats", type=int, default=3, help="offline: timed passes (the median counts)"
    )
    r.add_argument("--clip-seconds", type=float, default=20.0, help="offline clip length")
    r.add_argument("--token-rate", type=float, default=4.0, help="output tokens per second")
    r.add_argument("--header-tokens", type=int, default=4, help="`language X<asr_text>`")
    r.add_argument("--wire-streams", type=int, default=128, help="wire: WebSockets")
    r.add_argument("--procs", type=int, default=4, help="wire: load generator processes")
    r.add_argument(
        "--baseline-python",
        default=DEFAULT_BASELINE_PYTHON,
        help="an interpreter with qwen-asr and transformers 4.57.6, or with funasr 1.4.16 for "
        "FunASR folders (default %(default)s)",
    )
    r.add_argument("--baseline-repeats", type=int, default=3, help="baseline runs per step")
    r.add_argument(
        "--baseline-timeout",
        type=float,
        default=AsrBench.baseline_timeout,
        help="seconds the baseline subprocess may take; past them it is reported as failed and "
        "our results stand (default %(default)s)",
    )
    r.add_argument(
        "--baseline-streams",
        type=int,
        default=8,
        help="Paraformer-streaming: the offline clips funasr streams (one call per chunk each)",
    )
    r.add_argument("--performance-mode", choices=get_args(PerformanceMode), default="balanced")
    r.add_argument("--device", default=None)
    r.add_argument("--dtype", default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, default=Path("bench/results"))
    _engine_flags(r)
    r.add_argument(
        "--prefill-interval",
        type=int,
        default=AsrBench.prefill_interval,
        help="steps prompts wait while requests decode (default %(default)s, the engine's)",
    )
    r.add_argument(
        "--max-num-seqs",
        type=int,
        default=AsrBench.max_num_seqs,
        help="requests the engine runs at once (default %(default)s, the engine's)",
    )
    r.add_argument(
        "--interactive-steps",
        type=int,
        default=AsrBench.interactive_steps,
        help="runtime turns per chat step while speech has work (default %(default)s)",
    )
    s = r.add_argument_group("--serve: the wire workload's server (fixed output lengths)")
    s.add_argument("--serve", action="store_true", help="serve --model instead of benchmarking")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-sessions", type=int, default=Limits().max_sessions)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    """`8x4096,2x16384` -> ((8, 4096), (2, 16384))."""
    try:
        return tuple((int(b), int(n)) for b, n in (x.split("x") for x in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxN,... (like 8x4096), not {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def transcribe_files(a: argparse.Namespace) -> int:
    import asyncio

    from engine.streaming import StreamOptions
    from rtserve.metrics import Metrics
    from rtserve.transcribe import load_audio, render, transcribe

    logging.basicConfig(level="WARNING")
    try:
        spec = parse_spec(a.model) if a.model else default_spec()
        model = load(spec, runtime=shared_runtime())
    except ModelLoadError as e:
        print(f"rtserve: {e}", file=sys.stderr)
        return 2
    if model.kind != "asr":
        print(
            f"rtserve: {spec.source} is a {model.kind} model, not a speech model", file=sys.stderr
        )
        return 2
    if a.words and a.format != "verbose_json":
        print("rtserve: --words needs --format verbose_json", file=sys.stderr)
        return 2
    if a.words and not getattr(model, "word_timestamps", False):
        print(f"rtserve: {spec.source}: this model does not time its words", file=sys.stderr)
        return 2
    options = StreamOptions(a.language, a.prompt)
    status = 0
    for path in a.files:
        try:
            samples = load_audio(path.read_bytes())
            result = asyncio.run(transcribe(model, samples, Limits(), Metrics(), options))
        except Exception as e:  # one bad file does not stop the others
            print(f"rtserve: {path}: {e}", file=sys.stderr)
            status = 1
            continue
        body, _ = render(result, a.format, a.words)
        print(body.rstrip("\n"))
    return status


def bench(a: argparse.Namespace) -> int:
    if a.workload == "asr":
        return bench_asr(a)
    if a.workload == "kernels":
        from engine.bench import kernels

        cases = {"decode_cases": a.decode_cases, "prefill_cases": a.prefill_cases}
        b = kernels.KernelsBench(
            repeats=a.repeats,
            block_size=a.block_size,
            **{k: v for k, v in cases.items() if v is not None},
        )
        result = kernels.run(b)
        print(kernels.summarize(result, a.out, "kernels"))
        return 0
    from engine.bench import chat

    b = chat.ChatBench(
        shape=None if a.model else a.shape,
        model=a.model,
        batch_sizes=a.batch_sizes,
        prompt_len=a.prompt_len,
        output_len=a.output_len,
        ttft_lens=a.ttft_lens,
        baseline=not a.no_baseline,
        attention_backend=a.attention_backend,
        cuda_graphs=a.cuda_graphs,
    )
    if a.device:
        b.device = a.device
    if a.dtype:
        b.dtype = a.dtype
    result = chat.run(b)
    name = f"chat-{a.model.name if a.model else a.shape}"
    print(chat.summarize(result, a.out, name))
    return 0


def bench_asr(a: argparse.Namespace) -> int:
    from engine.bench import asr, funasr_asr, live

    if a.serve:
        return bench_asr_serve(a)
    b = asr.AsrBench(
        shape=None if a.model else a.shape,
        model=a.model,
        second_pass=a.second_pass,
        workloads=a.workloads,
        segment_seconds=a.segment_seconds,
        positions=a.positions,
        streams=a.streams,
        duration=a.duration,
        segment_seconds_live=a.segment_seconds_live,
        drain_seconds=a.drain_seconds,
        mixed_streams=a.mixed_streams,
        chat_shape=a.chat_shape,
        chat_streams=a.chat_streams,
        chat_prompt_len=a.chat_prompt_len,
        chat_output_len=a.chat_output_len,
        concurrency=a.concurrency,
        offline_repeats=a.offline_repeats,
        clip_seconds=a.clip_seconds,
        token_rate=a.token_rate,
        header_tokens=a.header_tokens,
        wire_streams=a.wire_streams,
        procs=a.procs,
        baseline_python=a.baseline_python,
        baseline_repeats=a.baseline_repeats,
        baseline_timeout=a.baseline_timeout,
        baseline_streams=a.baseline_streams,
        performance_mode=a.performance_mode,
        attention_backend=a.attention_backend,
        cuda_graphs=a.cuda_graphs,
        encoder_graphs=a.encoder_graphs,
        prompt_graphs=a.prompt_graphs,
        prefill_interval=a.prefill_interval,
        max_num_seqs=a.max_num_seqs,
        interactive_steps=a.interactive_steps,
        seed=a.seed,
    )
    if a.device:
        b.device = a.device
    if a.dtype:
        b.dtype = a.dtype
    funasr = a.model is not None and funasr_asr.is_funasr(a.model)
    if funasr:  # Paraformer and SenseVoice serve in float32 unless told otherwise (CIF thresholds)
        b.dtype = a.dtype or "float32"
    bench = funasr_asr if funasr else asr
    try:
        result = bench.run(b)
    except live.BenchError as e:
        print(f"rtserve: {e}", file=sys.stderr)
        return 2
    print(bench.summarize(result, a.out, f"asr-{b.name}"))
    return 0


def bench_asr_serve(a: argparse.Namespace) -> int:
    """The server of the wire workload: `rtserve serve` on one Qwen3-ASR checkpoint, with every
    step decoding the bench's fixed number of tokens (a random model never emits EOS)."""
    import torch
    import uvicorn

    from engine.bench.asr import OutputLengths, load_fixed
    from rtserve.app import build_app
    from rtserve.server import Server

    if a.model is None:
        print("rtserve: bench asr --serve needs --model", file=sys.stderr)
        return 2
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        port=a.port,
        models=(str(a.model),),
        performance_mode=a.performance_mode,
        limits=Limits(max_sessions=a.max_sessions),
    )
    overrides = {
        "attention_backend": a.attention_backend,
        "cuda_graphs": a.cuda_graphs,
        "encoder_graphs": a.encoder_graphs,
        "prompt_graphs": a.prompt_graphs,
        "prefill_interval": a.prefill_interval,
        "max_num_seqs": a.max_num_seqs,
    }
    if a.device:
        overrides["device"] = a.device
    if a.dtype:
        overrides["dtype"] = getattr(torch, a.dtype)
    lengths = OutputLengths(a.token_rate, a.header_tokens)
    model = load_fixed(
        a.model, a.model.name, lengths, shared_runtime(), a.performance_mode, **overrides
    )
    app = build_app(Server(config, {model.name: model}))
    uvicorn.run(app, **config.uvicorn_options(), log_level="warning")
    return 0


def config_from_args(a: argparse.Namespace) -> ServerConfig:
    limits = Limits(
        max_sessions=a.max_sessions,
        max_frame_bytes=a.max_frame_bytes,
        max_buffered_seconds=a.max_buffered_seconds,
        max_session_seconds=a.max_session_seconds,
        max_segment_seconds=a.max_segment_seconds,
        max_lag_ms=a.max_lag_ms,
    )
    rollback = RollbackConfig(
        step_seconds=a.asr_step_seconds,
        unfixed_chunks=a.asr_unfixed_steps,
        unfixed_tokens=a.asr_rollback_tokens,
        max_new_tokens=a.asr_max_new_tokens,
    )
    return ServerConfig(
        rollback=rollback,
        host=a.host,
        port=a.port,
        models=tuple(a.model),
        api_key=a.api_key,
        performance_mode=a.performance_mode,
        limits=limits,
        attention_backend=a.attention_backend,
        cuda_graphs=a.cuda_graphs,
        encoder_graphs=a.encoder_graphs,
        prompt_graphs=a.prompt_graphs,
        ws_per_message_deflate=a.ws_per_message_deflate,
    )


def load_models(config: ServerConfig) -> dict:
    specs = [parse_spec(m) for m in config.models] or [default_spec()]
    models = {}
    for spec in specs:
        if spec.served_name in models:
            raise ModelLoadError(f"two models are named {spec.served_name!r}: use NAME=PATH")
        models[spec.served_name] = load(
            spec,
            performance_mode=config.performance_mode,
            runtime=shared_runtime(),
            rollback=config.rollback,
            attention_backend=config.attention_backend,
            cuda_graphs=config.cuda_graphs,
            encoder_graphs=config.encoder_graphs,
            prompt_graphs=config.prompt_graphs,
        )
    return models


def serve(config: ServerConfig, log_level: str) -> int:
    import uvicorn

    from rtserve.app import build_app
    from rtserve.server import Server

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        models = load_models(config)
    except ModelLoadError as e:
        hint = "" if config.models else " (no --model given, so the embedded default was tried)"
        print(f"rtserve: cannot start: {e}{hint}", file=sys.stderr)
        return 2
    app = build_app(Server(config, models))
    uvicorn.run(app, **config.uvicorn_options(), log_level=log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command == "serve":
        return serve(config_from_args(a), a.log_level)
    if a.command == "transcribe":
        return transcribe_files(a)
    return bench(a)


if __name__ == "__main__":
    sys.exit(main())
