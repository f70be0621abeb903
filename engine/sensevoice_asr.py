"""SenseVoiceSmall served on the segment policy (engine/chunked.py): each stream's language and
text-normalisation queries, one batched `recognize` for the streams due, rich tags split off."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audio import fbank
from engine.asr_prompt import CODES
from engine.chunked import (
    Decoded,
    FunasrHandle,
    Segment,
    SegmentWorker,
    Stream,
    build_frontend,
)
from engine.funasr_loader import load_state_dict, read_folder
from engine.models.sensevoice import (
    LANGUAGE_QUERIES,
    SenseVoiceConfig,
    SenseVoiceSmall,
    parse_rich,
    query_ids,
)
from engine.runtime import Runtime
from engine.sentencepiece_tokenizer import SentencePieceTokens
from engine.streaming import StreamOptions


def language_query(language: str | None) -> str:
    """A stream's `language` option -> a query: None or "auto" -> "auto"; a code of
    `LANGUAGE_QUERIES` or a language name ("Chinese", "cantonese", ...) -> its code."""
    s = (language or "").strip().lower()
    if s in ("", "auto"):
        return "auto"
    code = s if s in LANGUAGE_QUERIES else CODES.get(s)
    if code not in LANGUAGE_QUERIES:
        raise ValueError(f"language {language!r} is not supported by this model")
    return code


@dataclass(frozen=True)
class QueryOptions:
    """What a stream asks the model: the language query and text normalisation."""

    language: str = "auto"  # a key of LANGUAGE_QUERIES
    use_itn: bool = False

    def __post_init__(self) -> None:
        query_ids(self.language, self.use_itn)  # refused here, not in a batch with others


class SenseVoiceWorker(SegmentWorker):
    """The segment policy (engine/chunked.py) with SenseVoice's decode: each stream's queries,
    one batched `recognize` for the due streams, the rich tags split off the text."""

    def __init__(
        self,
        model: SenseVoiceSmall,
        tokens: SentencePieceTokens,
        frontend: fbank.WavFrontend,
        step_seconds: float | None = 2.0,
        defaults: QueryOptions = QueryOptions(),
    ) -> None:
        super().__init__(model, tokens, frontend, step_seconds)
        self.defaults = defaults  # for streams opened without options
        self.language = None  # a Final's language: detected, else the stream's forced one

    def _finalize(self, s: Stream, seg: Segment) -> None:
        forced = (s.options or self.defaults).language
        if seg.language is None and forced != "auto":
            seg.language = forced  # nothing decoded, or no language tag
        super()._finalize(s, seg)

    def _decode(self, feats: Tensor, frames: Tensor, streams: list[Stream]) -> list[Decoded]:
        options = [s.options or self.defaults for s in streams]
        result = self.model.recognize(
            feats, frames, [o.language for o in options], [o.use_itn for o in options]
        )
        out = []
        for ids in result.ids:
            rich = parse_rich(self.tokens.text(ids))
            detected = rich.language if rich.language != "nospeech" else None
            out.append(Decoded(rich.text, detected, rich.tags()))
        return out


@dataclass
class SenseVoiceServed:
    """A served SenseVoiceSmall (engine/streaming.py's AsrModel).

    Per stream: `StreamOptions.language` (None: the model's default, auto unless the model was
    loaded with one) picks the language query; `use_itn` comes from `open_stream(...,
    use_itn=)`, else from `StreamOptions.use_itn`, else the model's default. The prompt is
    ignored."""

    name: str
    worker: SenseVoiceWorker
    language: str = "auto"  # default language query
    use_itn: bool = False  # default text normalisation
    kind: str = field(default="asr", init=False)

    def query_options(self, options: StreamOptions, use_itn: bool | None = None) -> QueryOptions:
        language = language_query(options.language) if options.language else self.language
        if use_itn is None:
            use_itn = options.use_itn
        return QueryOptions(language, self.use_itn if use_itn is None else bool(use_itn))

    def validate(self, options: StreamOptions) -> None:
        """Raises ValueError for a language SenseVoice has no query for."""
        self.query_options(options)

    def open_stream(self, options: StreamOptions, use_itn: bool | None = None) -> FunasrHandle:
        return FunasrHandle(self.worker, self.query_options(options, use_itn))


def build_sensevoice(
    path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[SenseVoiceSmall, SentencePieceTokens, fbank.WavFrontend]:
    """The model, its SentencePiece tokens and its front end, from a FunASR folder."""
    folder = read_folder(path)
    if folder.bpe_model is None:
        raise FileNotFoundError(f"{path}: no SentencePiece model (tokenizer_conf.bpemodel)")
    tokens = SentencePieceTokens.from_file(folder.bpe_model)
    state = load_state_dict(folder.weights)
    head = state.get("ctc.ctc_lo.weight")
    if head is None:
        raise ValueError(f"{path}: model.pt has no ctc.ctc_lo.weight")
    if head.shape[0] != len(tokens):
        raise ValueError(f"{path}: {len(tokens)} pieces but the CTC head has {head.shape[0]}")
    cfg = SenseVoiceConfig.from_funasr(folder.config, len(tokens))
    with torch.device(device):
        model = SenseVoiceSmall(cfg)
    model.load_weights(state)
    model.to(dtype).eval()
    return model, tokens, build_frontend(folder.config.get("frontend_conf") or {}, folder.cmvn)


def load_sensevoice(
    path: Path,
    name: str,
    performance_mode: str = "balanced",
    runtime: Runtime | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    step_seconds: float | None = 2.0,
    language: str | None = None,
    use_itn: bool = False,
    **_: Any,
) -> SenseVoiceServed:
    """The served model on the segment policy. `language` (None: auto) and `use_itn` are the
    defaults of streams that do not set their own. float32 unless told otherwise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokens, frontend = build_sensevoice(path, device, dtype or torch.float32)
    defaults = QueryOptions(language_query(language), use_itn)
    worker = SenseVoiceWorker(model, tokens, frontend, step_seconds, defaults)
    worker.runtime = runtime or Runtime(name=f"asr-{name}")
    worker.runtime.add(worker)
    return SenseVoiceServed(name, worker, defaults.language, defaults.use_itn)
