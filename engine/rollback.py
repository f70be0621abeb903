"""The rollback streaming policy (Qwen3-ASR): the official algorithm, made cheap.

The official method re-feeds all audio of the open segment every 2 s and prompts the decoder with
the previous output minus its last 5 tokens (no prefix for the first 2 steps). We keep its
outputs and cut its cost:
- log-mel frames and encoder windows are computed once: an 8 s AuT window whose frames are final
  (beyond the STFT's reach of the end of the audio) is encoded once and cached, and re-encoded
  only if the clamp floor (utterance max - 8) moved in a way that changes its features;
- the decoder prompt is [chat head, audio pads, tail, text prefix]; each cached window's pads
  carry a fixed digest, so the prefix cache serves their KV and a step computes only the open
  window, the tail and the text prefix.

One departure, for the transcript contract: the official prefix can shrink when a step adds
fewer tokens than it rolls back; ours never shrinks, so text once fixed stays fixed (stable).
Steps fall on multiples of the step length, as the official chunks do; a step that could not
run in time is merged into the next one.

`RollbackSegment` is the model-independent half (the audio of the open segment, the step
cadence, the text prefix and what is stable); `Segment` adds Qwen3-ASR's audio side and output
format. Fun-ASR-Nano's segment (engine/fun_asr_nano_asr.py) is another subclass.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from audio.features import DYNAMIC_RANGE, HOP, N_FFT, log_mel
from engine.asr_prompt import Prompt, parse_output, rollback, text_of_prefix
from engine.models.qwen3_asr import audio_tokens
from engine.request import InjectedEmbeds
from engine.tokenizer import Tokenizer

SAMPLE_RATE = 16_000
CONTEXT_FRAMES = 3  # audio before (and after) a slice, so that its frames equal the whole's
# Log-mel slices (8 s windows at most) computed in one call on a GPU, where each call is a
# dozen small kernels and a read-back; on a CPU one at a time (measured: batches leave the cache
# and cost 1.5x per slice)
MEL_BATCH_CUDA = 64


@dataclass(frozen=True)
class RollbackConfig:
    step_seconds: float = 2.0  # the official chunk
    unfixed_chunks: int = 2  # steps without a text prefix
    unfixed_tokens: int = 5  # tokens rolled back from the previous output
    max_new_tokens: int = 256  # per step

    @property
    def step_samples(self) -> int:
        return int(round(self.step_seconds * SAMPLE_RATE))


@dataclass
class Window:
    tokens: torch.Tensor  # (n, d) encoder output
    floor: float  # the clamp floor its features used
    raw_min: float  # smallest unclamped log-mel value in it
    raw_max: float
    digest: bytes  # identity for the prefix cache, fixed while cached


class RawMel(NamedTuple):
    x: torch.Tensor  # (n_mels, frames): unclamped log-mel
    min: float
    max: float


@dataclass
class StepPlan:
    """One step: the audio it covers, the windows to encode, the text prefix."""

    upto: int
    final: bool
    prefix: str
    floor: float
    windows: int  # windows in all
    encode: dict[int, RawMel] = field(default_factory=dict)  # window -> its unclamped log-mel


def final_windows(upto: int, window_frames: int) -> int:
    """Windows whose last frame lies wholly inside the audio: later audio cannot change them."""
    last_frame_end = lambda w: ((w + 1) * window_frames - 1) * HOP + N_FFT // 2  # noqa: E731
    w = 0
    while last_frame_end(w) <= upto:
        w += 1
    return w


def raw_mels(
    jobs: list[tuple[np.ndarray, int, int, int]], device: torch.device, batch: int | None = None
) -> list[RawMel]:
    """Unclamped log-mel frames [f0, f1) of each job's audio cut at `upto`, as a log-mel of
    all of it would have them (each slice takes CONTEXT_FRAMES of audio either side), with
    each one's extremes. jobs: (audio, f0, f1, upto). `batch` slices (default: MEL_BATCH_CUDA
    on a GPU, 1 on a CPU) run as one padded batch, their extremes read back at once."""
    n = batch or (MEL_BATCH_CUDA if device.type == "cuda" else 1)
    return [m for i in range(0, len(jobs), n) for m in _raw_mels(jobs[i : i + n], device)]


def _raw_mels(jobs: list[tuple[np.ndarray, int, int, int]], device: torch.device) -> list[RawMel]:
    starts = [max(0, f0 - CONTEXT_FRAMES) for _, f0, _, _ in jobs]
    ends = [min(upto, (f1 + CONTEXT_FRAMES) * HOP) for _, _, f1, upto in jobs]
    lengths = [e - s0 * HOP for s0, e in zip(starts, ends, strict=True)]
    # On a GPU the batch is built in page-locked memory, which the copy reads directly; from
    # pageable memory it is staged through a driver buffer (4.7% of the offline profile's
    # device time went to such copies, docs/benchmarks.md).
    cuda = device.type == "cuda"
    batch = torch.empty((len(jobs), max(lengths)), dtype=torch.float32, pin_memory=cuda)
    x = batch.numpy()
    for i, ((audio, *_), s0, e) in enumerate(zip(jobs, starts, ends, strict=True)):
        n = e - s0 * HOP
        x[i, :n] = audio[s0 * HOP : e]
        x[i, n:] = 0.0
    mel = log_mel(batch.to(device, non_blocking=cuda), torch.tensor(lengths))  # (B, n_mels, T)
    t = torch.arange(mel.shape[2])
    lo = torch.tensor([f0 - s0 for (_, f0, _, _), s0 in zip(jobs, starts, strict=True)])
    hi = torch.tensor([f1 - s0 for (_, _, f1, _), s0 in zip(jobs, starts, strict=True)])
    valid = ((t >= lo[:, None]) & (t < hi[:, None]))[:, None].to(device)  # (B, 1, T)
    extremes = torch.stack(
        [
            torch.where(valid, mel, torch.inf).amin(dim=(1, 2)),
            torch.where(valid, mel, -torch.inf).amax(dim=(1, 2)),
        ],
        1,
    ).tolist()
    return [
        RawMel(mel[i, :, a:b], *extremes[i])
        for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True))
    ]


class RollbackSegment(ABC):
    """The text side of the rollback policy for one open segment: its audio, the step cadence,
    the last output and the text prefix of the next step. Subclasses say how an output reads
    (`parse`) and which part of a prefix is transcript (`stable_text`)."""

    def __init__(self, tokenizer: Tokenizer, config: RollbackConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        # the segment's audio: a buffer that grows by doubling, so that feeding 100 ms at a time
        # costs the chunk, not a copy of everything before it (minutes, at 512 streams)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._size = 0
        self._step = config.step_samples
        self.stepped = 0  # samples the last step covered
        self.chunk_id = 0  # steps done, as the official state counts them
        self.raw = ""  # the last output
        self.prefix = ""  # the text prefix of the next step (never shrinks)
        # the stream's bookkeeping of this segment
        self.index = 0  # its number in the stream
        self.committed = False  # no more audio: its final step is next
        self.revision = 0  # partial updates sent

    @property
    def audio(self) -> np.ndarray:
        """The samples fed so far (a view: valid until the next feed)."""
        return self._buffer[: self._size]

    def feed(self, x: np.ndarray) -> None:
        end = self._size + x.size
        if end > self._buffer.size:
            grown = np.empty(max(end, 2 * self._buffer.size, SAMPLE_RATE), dtype=np.float32)
            grown[: self._size] = self._buffer[: self._size]
            self._buffer = grown
        self._buffer[self._size : end] = x
        self._size = end

    def due(self) -> int:
        """Samples the next partial step covers; 0 when less than a step is new. (The worker asks
        every stream each turn it has no request running: kept to integer arithmetic.)"""
        ready = (self._size - self.stepped) // self._step
        return self.stepped + ready * self._step if ready else 0

    def _prefix(self, final: bool) -> str:
        if self.chunk_id < self.config.unfixed_chunks:
            return ""
        if not final:
            return self.prefix
        # the official finish rolls back without the split-character rule; never behind ours
        cut = rollback(self.tokenizer, self.raw, self.config.unfixed_tokens, final=True)
        return cut if len(cut) > len(self.prefix) else self.prefix

    def result(self, plan: StepPlan, text: str) -> tuple[str, str, str]:
        """A step's generated text -> (language, transcript, its stable part)."""
        self.raw = plan.prefix + text
        self.stepped = plan.upto
        self.chunk_id += 1
        language, transcript = self.parse(self.raw)
        if self.chunk_id >= self.config.unfixed_chunks:
            nxt = rollback(self.tokenizer, self.raw, self.config.unfixed_tokens)
            if len(nxt) > len(self.prefix):  # never shrinks: what was fixed stays fixed
                self.prefix = nxt
        stable = self.stable_text(self.prefix)
        return language, transcript, stable if transcript.startswith(stable) else ""

    def parsed(self) -> tuple[str, str]:
        return self.parse(self.raw)

    @classmethod
    def plans(cls, items: list[tuple[RollbackSegment, int, bool]]) -> list[Any]:
        """The `plan(upto, final)` of each (segment, upto, final), the step covering its audio
        up to `upto` (a subclass's plan type); a subclass may batch their work."""
        return [seg.plan(upto, final) for seg, upto, final in items]

    @abstractmethod
    def parse(self, raw: str) -> tuple[str, str]:
        """An output (prefix + generated text) -> (language, transcript)."""

    @abstractmethod
    def stable_text(self, prefix: str) -> str:
        """The transcript part of a rollback prefix (what the next step cannot change)."""


class Segment(RollbackSegment):
    """The open segment of one Qwen3-ASR stream: its audio, caches and text state."""

    def __init__(
        self,
        prompt: Prompt,
        tokenizer: Tokenizer,
        forced: str | None,
        config: RollbackConfig,
        window_frames: int,
        device: torch.device,
    ) -> None:
        super().__init__(tokenizer, config)
        self.prompt = prompt
        self.forced = forced
        self.window_frames = window_frames
        self.device = device
        self.windows: dict[int, Window] = {}

    def parse(self, raw: str) -> tuple[str, str]:
        return parse_output(raw, self.forced)

    def stable_text(self, prefix: str) -> str:
        return text_of_prefix(prefix, self.forced)

    # ---- planning ----

    def plan(self, upto: int, final: bool) -> StepPlan:
        return self.plans([(self, upto, final)])[0]

    @classmethod
    def plans(cls, items: list[tuple[Segment, int, bool]]) -> list[StepPlan]:
        """`plan` of many segments. The log-mel frames each needs first (new final windows,
        the open ones) are computed for all of them together (`raw_mels`: batched on a GPU,
        where one segment's alone costs a dozen small kernels and two or three host syncs)."""
        jobs = [(seg, f0, f1, upto) for seg, upto, _ in items for f0, f1 in seg._ranges(upto)]
        device = items[0][0].device if items else torch.device("cpu")
        mels = iter(raw_mels([(seg.audio, f0, f1, upto) for seg, f0, f1, upto in jobs], device))
        known: dict[int, dict[tuple[int, int], RawMel]] = {}
        for seg, f0, f1, _ in jobs:
            known.setdefault(id(seg), {})[f0, f1] = next(mels)
        return [seg._plan(upto, final, known.get(id(seg), {})) for seg, upto, final in items]

    def _ranges(self, upto: int) -> list[tuple[int, int]]:
        """Frame ranges a step to `upto` needs before it can set the clamp floor: the final
        windows not cached yet, and the open ones (the last cut at the end of the audio)."""
        wf = self.window_frames
        frames, done = upto // HOP, final_windows(upto, wf)
        total = -(-frames // wf)
        fresh = [(w * wf, (w + 1) * wf) for w in range(done) if w not in self.windows]
        return fresh + [(w * wf, min((w + 1) * wf, frames)) for w in range(done, total)]

    def _plan(self, upto: int, final: bool, mels: dict[tuple[int, int], RawMel]) -> StepPlan:
        wf = self.window_frames
        frames = upto // HOP
        done = final_windows(upto, wf)
        total = -(-frames // wf)
        peak = max([w.raw_max for k, w in self.windows.items() if k < done] + [-np.inf])
        peak = max([peak] + [m.max for m in mels.values()])
        floor = peak - DYNAMIC_RANGE
        plan = StepPlan(upto, final, self._prefix(final), floor, total)
        for w in range(done):
            cached = self.windows.get(w)
            if cached and (cached.floor == floor or cached.raw_min >= max(floor, cached.floor)):
                continue  # no value of it is clamped differently: same features, same tokens
            m = mels.get((w * wf, (w + 1) * wf))
            if m is None:  # cached, but the floor moved: its frames again (rare)
                m = raw_mels([(self.audio, w * wf, (w + 1) * wf, upto)], self.device)[0]
            plan.encode[w] = m
        for w in range(done, total):
            plan.encode[w] = mels[w * wf, min((w + 1) * wf, frames)]
        return plan

    def features(self, raw: torch.Tensor, floor: float) -> torch.Tensor:
        return (torch.clamp(raw, min=floor) + 4.0) / 4.0

    # ---- the request ----

    def request(
        self, plan: StepPlan, encoded: dict[int, torch.Tensor]
    ) -> tuple[list[int], list[InjectedEmbeds]]:
        """Cache the windows that are final; the decoder prompt and its audio embeddings."""
        done = final_windows(plan.upto, self.window_frames)
        at = self.prompt.audio_start()
        embeds = []
        for w in range(plan.windows):
            if w in encoded:
                _, raw_min, raw_max = plan.encode[w]
                digest = secrets.token_bytes(16)
                if w < done:
                    self.windows[w] = Window(encoded[w], plan.floor, raw_min, raw_max, digest)
                tokens = encoded[w]
            else:
                tokens, digest = self.windows[w].tokens, self.windows[w].digest
            embeds.append(InjectedEmbeds(at, tokens, digest))
            at += tokens.shape[0]
        n = at - self.prompt.audio_start()
        assert n == audio_tokens(plan.upto // HOP), (n, plan.upto)
        return self.prompt.ids(self.tokenizer, n, plan.prefix), embeds
