"""What a request asks of generation: sampling knobs, stops and lengths."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = all tokens
    repetition_penalty: float = 1.0  # HF semantics: >1 discourages tokens already in the sequence
    seed: int | None = None  # per-request generator: the same seed gives the same tokens
    max_tokens: int = 256
    stop: tuple[str, ...] = ()  # output ends before the first of these strings
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    # False: token ids only, no incremental text (callers that decode the whole output at its
    # end, such as the speech workers): saves a tokenizer call per request per step
    detokenize: bool = True
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings need detokenize")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
