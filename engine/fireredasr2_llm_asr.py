"""FireRedASR2-LLM served on the segment policy (engine/chunked.py's SegmentWorker): the due
segments share one batched encoder + adapter call, then each becomes an engine request (the
decode prompt with its speech frames injected at the `<speech>` positions) on one paged-KV
engine, and all of them decode together (continuous batching) to their `<|im_end|>`, at most one
token per speech frame (the package's max_new_tokens).

Decoding is the package's: a 3-beam search by default (engine/llm_beam_search.py: beams are
forked requests sharing KV blocks), greedy with `beam_size=1`. Segments are at most 30 s (the
released model's limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audio.kaldi_cmvn import FireRedFrontend
from engine.chunked import Decoded, FunasrHandle, SegmentWorker, Stream
from engine.config import EngineConfig
from engine.engine import Engine
from engine.llm_beam_search import Prompt, beam_search
from engine.models.fireredasr2_llm import FireRedLlm, build_fireredasr2_llm, prompt_ids
from engine.request import InjectedEmbeds
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from engine.streaming import StreamOptions
from engine.tokenizer import Tokenizer
from kernels.attention import backend

LLM_MAX_SEGMENT_SECONDS = 30.0
EOS_TOKEN = "<|im_end|>"


class FireRedLlmWorker(SegmentWorker):
    def __init__(
        self,
        model: FireRedLlm,
        engine: Engine,
        frontend: FireRedFrontend,
        step_seconds: float | None = 2.0,
        beam_size: int = 3,
    ) -> None:
        super().__init__(model, engine.tokenizer, frontend, step_seconds)  # type: ignore[arg-type]
        self.beam_size = beam_size
        self.engine = engine
        self.tokenizer: Tokenizer = engine.tokenizer
        self.eos = self.tokenizer.token_to_id(EOS_TOKEN)

    def _decode(self, feats: Tensor, frames: Tensor, streams: list[Stream]) -> list[Decoded]:
        speech, lengths = self.model.speech(feats, frames)
        prompts = []
        for b, n in enumerate(lengths.tolist()):
            ids, at = prompt_ids(self.tokenizer, n)
            embeds = [InjectedEmbeds(at, speech[b, :n])] if n else []
            prompts.append(Prompt(ids, embeds, max(n, 1)))
        if self.beam_size > 1:
            outputs = beam_search(self.engine, prompts, self.beam_size, self.eos)
        else:
            outputs = self._greedy(prompts)
        return [Decoded(self.text(ids)) for ids in outputs]

    def _greedy(self, prompts: list[Prompt]) -> list[list[int]]:
        requests = []
        for p in prompts:
            params = SamplingParams(
                temperature=0.0, max_tokens=p.max_new_tokens, stop_token_ids=(self.eos,),
                ignore_eos=True, detokenize=False,
            )  # fmt: skip
            requests.append(self.engine.add(p.ids, params, embeds=p.embeds))
        while self.engine.has_work():
            self.engine.step()
        return [r.output_ids for r in requests]

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).lower()


@dataclass
class FireRedLlmServed:
    """A served FireRedASR2-LLM (engine/streaming.py's AsrModel); language and prompt ignored."""

    name: str
    worker: FireRedLlmWorker
    max_segment_seconds: float = LLM_MAX_SEGMENT_SECONDS  # the session commits at this length
    kind: str = field(default="asr", init=False)

    def validate(self, options: StreamOptions) -> None:
        """Any language is accepted (the model has no language query)."""

    def open_stream(self, options: StreamOptions) -> FunasrHandle:
        return FunasrHandle(self.worker)


def load_fireredasr2_llm(
    path: Path,
    name: str,
    performance_mode: str = "balanced",
    runtime: Runtime | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    step_seconds: float | None = 2.0,
    attention_backend: str | None = None,
    max_segment_seconds: float = LLM_MAX_SEGMENT_SECONDS,
    beam_size: int = 3,
    **_: Any,
) -> FireRedLlmServed:
    """The encoder and adapter stay float32 (as the package runs them); the LLM runs in
    `dtype` (default: bfloat16 on CUDA, as the package loads it; float32 on CPU). `beam_size`:
    the package's default 3; 1 is greedy."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides: dict[str, Any] = {"device": device} | ({"dtype": dtype} if dtype else {})
    config = EngineConfig.for_mode(performance_mode, **overrides)
    model, tokenizer = build_fireredasr2_llm(
        path, backend(attention_backend, device), device=device
    )
    model.decoder.to(config.dtype)
    engine = Engine(model.decoder, tokenizer, config)
    frontend = FireRedFrontend.from_file(Path(path) / "cmvn.ark")
    worker = FireRedLlmWorker(model, engine, frontend, step_seconds, beam_size)
    worker.runtime = runtime or Runtime(name=f"asr-{name}")
    worker.runtime.add(worker)
    return FireRedLlmServed(name, worker, max_segment_seconds)
