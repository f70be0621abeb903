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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
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
    return p


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


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
        body, _ = render(result, a.format)
        print(body.rstrip("\n"))
    return status


def bench(a: argparse.Namespace) -> int:
    from engine.bench import chat

    b = chat.ChatBench(
        shape=None if a.model else a.shape,
        model=a.model,
        batch_sizes=a.batch_sizes,
        prompt_len=a.prompt_len,
        output_len=a.output_len,
        ttft_lens=a.ttft_lens,
        baseline=not a.no_baseline,
    )
    if a.device:
        b.device = a.device
    if a.dtype:
        b.dtype = a.dtype
    result = chat.run(b)
    name = f"chat-{a.model.name if a.model else a.shape}"
    print(chat.summarize(result, a.out, name))
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
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        ws_max_size=config.limits.max_frame_bytes,
        log_level=log_level,
    )
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
