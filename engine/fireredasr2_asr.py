"""FireRedASR2-AED served on the segment policy (engine/chunked.py's SegmentWorker): VAD
segments, partials by re-decoding the open segment every `step_seconds`, finals at commits; the
segments due in a step share one batched encoder call and one beam search on the engine
(engine/aed_engine_search.py: beams are forked requests sharing KV blocks, cross-attention keys
computed once per segment), each segment getting what it would get alone. Finals carry the
words with their times, from CTC forced alignment as the package's `return_timestamp` gives
them (engine/ctc_timestamps.py).

Segments are at most `max_segment_seconds` long (60 s by default: the released AED's limit,
beyond which it may hallucinate); the session commits a segment that reaches it, as if the
speaker had paused (rtserve/session.py reads the served model's `max_segment_seconds`).

The folder is the released FireRedTeam/FireRedASR2-AED layout: `model.pth.tar` (a torch.save of
{"args": argparse.Namespace, "model_state_dict": ...}, read with weights_only=True, the
Namespace allowed), `cmvn.ark`, `dict.txt` (and `train_bpe1000.model`, for encoding only).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audio.kaldi_cmvn import FireRedFrontend
from engine.aed_beam_search import BeamSettings
from engine.aed_engine_search import aed_engine, engine_beam_search
from engine.chunked import Decoded, FunasrHandle, SegmentWorker, Stream
from engine.ctc_timestamps import END_MS, FRAME_MS, token_timestamps
from engine.engine import Engine
from engine.fireredasr2_tokens import FireRedTokens
from engine.models.fireredasr2 import FireRedAed, FireRedConfig
from engine.runtime import Runtime
from engine.streaming import StreamOptions, Word

AED_MAX_SEGMENT_SECONDS = 60.0
REQUIRED_FILES = ("model.pth.tar", "cmvn.ark", "dict.txt")


def is_fireredasr2(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES)


def is_llm_variant(path: Path) -> bool:
    return (path / "asr_encoder.pth.tar").is_file()


def read_checkpoint(path: Path) -> tuple[argparse.Namespace, dict[str, Tensor]]:
    """(args, state dict) of a model.pth.tar / asr_encoder.pth.tar, without unpickling
    anything but tensors and the argparse Namespace."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        doc = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(doc, dict) or not isinstance(doc.get("args"), argparse.Namespace):
        raise ValueError(f"{path}: not a FireRedASR checkpoint (no argparse `args`)")
    return doc["args"], doc.get("model_state_dict") or {}


class FireRedWorker(SegmentWorker):
    """The segment policy with FireRedASR2-AED's decode: batched encoder, batched beam search."""

    def __init__(
        self,
        model: FireRedAed,
        tokens: FireRedTokens,
        frontend: FireRedFrontend,
        step_seconds: float | None = 2.0,
        settings: BeamSettings | None = None,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(model, tokens, frontend, step_seconds)  # type: ignore[arg-type]
        self.settings = settings or BeamSettings()
        self.engine = engine or aed_engine(model)

    def _decode(self, feats: Tensor, frames: Tensor, streams: list[Stream]) -> list[Decoded]:
        dtype = self.model.ctc_lo.weight.dtype
        enc, lengths = self.model.encoder(feats.to(dtype), frames)
        hyps = engine_beam_search(self.engine, enc, lengths, self.settings)
        log_probs = self.model.ctc_log_probs(enc)  # (S, T', V)
        out = []
        for i, (h, s) in enumerate(zip(hyps, streams, strict=True)):
            ids, words = h[0].ids, None
            if s.queue[0].committed:  # the final: its words are timed (partials go untimed)
                # the end of the last 25 ms fbank window (within 10 ms of the audio's end)
                duration = (int(frames[i]) - 1) * FRAME_MS / 1000 + END_MS / 1000
                lp = log_probs[i, : int(lengths[i])]
                stamps = token_timestamps(lp, ids, duration, self.tokens)
                words = tuple(Word(text, start, end) for text, start, end in stamps)
            out.append(Decoded(self.tokens.text(ids), words=words))
        return out


@dataclass
class FireRedServed:
    """A served FireRedASR2-AED (engine/streaming.py's AsrModel). It transcribes Mandarin,
    Chinese dialects and English without being told; the language and prompt are ignored."""

    name: str
    worker: FireRedWorker
    max_segment_seconds: float = AED_MAX_SEGMENT_SECONDS  # the session commits at this length
    kind: str = field(default="asr", init=False)
    word_timestamps: bool = field(default=True, init=False)  # finals carry CTC-aligned words

    def validate(self, options: StreamOptions) -> None:
        """Any language is accepted (the model has no language query)."""

    def open_stream(self, options: StreamOptions) -> FunasrHandle:
        return FunasrHandle(self.worker)


def build_fireredasr2(
    path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[FireRedAed, FireRedTokens, FireRedFrontend]:
    """The AED model, its tokens and its front end, from a FireRedASR2-AED folder."""
    path = Path(path)
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: no {', '.join(missing)}")
    args, state = read_checkpoint(path / "model.pth.tar")
    cfg = FireRedConfig.from_args(args)
    tokens = FireRedTokens.from_file(path / "dict.txt")
    if len(tokens) != cfg.odim:
        raise ValueError(f"{path}: dict.txt has {len(tokens)} tokens, the model {cfg.odim}")
    with torch.device(device):
        model = FireRedAed(cfg)
    model.load_weights(state)
    model.to(dtype).eval()
    return model, tokens, FireRedFrontend.from_file(path / "cmvn.ark")


def load_fireredasr2(
    path: Path,
    name: str,
    performance_mode: str = "balanced",
    runtime: Runtime | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    step_seconds: float | None = 2.0,
    beam: BeamSettings | None = None,
    max_segment_seconds: float | None = None,
    attention_backend: str | None = None,
    **_: Any,
) -> FireRedServed:
    """The served AED on the segment policy, float32 unless told otherwise; an LLM-variant
    folder (asr_encoder.pth.tar) loads as engine/fireredasr2_llm_asr.py's model."""
    if is_llm_variant(path):
        from engine.fireredasr2_llm_asr import load_fireredasr2_llm

        options = {"performance_mode": performance_mode, "runtime": runtime, "device": device}
        options |= {"dtype": dtype, "step_seconds": step_seconds, **_}
        options["attention_backend"] = attention_backend
        if max_segment_seconds:
            options["max_segment_seconds"] = max_segment_seconds
        return load_fireredasr2_llm(path, name, **options)  # type: ignore[return-value]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokens, frontend = build_fireredasr2(path, device, dtype or torch.float32)
    engine = aed_engine(model, performance_mode, attention_backend)
    worker = FireRedWorker(model, tokens, frontend, step_seconds, beam, engine)
    worker.runtime = runtime or Runtime(name=f"asr-{name}")
    worker.runtime.add(worker)
    return FireRedServed(name, worker, max_segment_seconds or AED_MAX_SEGMENT_SECONDS)
