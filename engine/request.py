"""A generation request and its life: waiting -> running (-> preempted -> waiting) -> finished."""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field

import torch

from engine.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# Priority classes: lower runs first. Interactive streams (ASR partials) keep their latency under
# chat load because they are scheduled, and kept, before batch work.
INTERACTIVE, DEFAULT, BATCH = 0, 1, 2


@dataclass
class InjectedEmbeds:
    """Input embeddings that replace the token embeddings at positions [start, start + n)."""

    start: int
    values: torch.Tensor  # (n, hidden)
    digest: bytes = b""  # of the values: part of the prefix-cache key of the blocks they touch

    def __post_init__(self) -> None:
        if not self.digest:
            data = self.values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
            self.digest = hashlib.blake2b(data, digest_size=16).digest()

    @property
    def end(self) -> int:
        return self.start + self.values.shape[0]


@dataclass
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: int = DEFAULT
    embeds: list[InjectedEmbeds] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # of the prompt, found in the prefix cache at first schedule
    block_table: list[int] = field(default_factory=list)
    block_keys: list[int] = field(default_factory=list)  # keys of its full blocks, as computed
    num_published_blocks: int = 0  # of block_table, offered to the prefix cache
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    generator: torch.Generator | None = None
    # Room for per-request encoder output that a decoder cross-attends to, computed once
    # (encoder-decoder models keep their cross-attention K/V here, outside the paged cache).
    encoder_states: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def block_extras(self, block_size: int, num_blocks: int) -> list[bytes | None]:
        """Per full block: the digest of the injected embeddings overlapping it (None if none)."""
        extras: list[bytes | None] = []
        for i in range(num_blocks):
            lo, hi = i * block_size, (i + 1) * block_size
            parts = [
                e.digest + (e.start - lo).to_bytes(8, "little", signed=True)
                for e in self.embeds
                if e.start < hi and e.end > lo
            ]
            extras.append(b"".join(parts) or None)
        return extras
