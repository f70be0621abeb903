"""Serving FunASR Paraformer models: stream handles on the event loop, the work on the runtime.

Two policies, one worker shape (engine/asr.py's): handle calls post commands to the worker's
inbox; on the runtime thread, each turn takes the inbox, then one step runs the model once for
every stream that has work, batched, and delivers transcript events to the handles' loops.

- *chunked* (`ChunkedWorker`, Paraformer-streaming): a segment's audio is cut into 600 ms chunks
  (9600 samples) as it arrives; each chunk goes through the online front end and one
  `Paraformer.stream_step` with the stream's caches (all streams with a chunk ready share one
  batched call). Text only grows: each chunk's tokens become text (funasr's per-chunk
  `sentence_postprocess`) appended to the segment's, so a `Partial` has `stable` = all the text
  so far and `unstable` = "". `commit()` runs what is left as the final chunk (a tail chunk under
  60 ms), flushing the CIF, then the `Final`; the segment's caches are dropped with it.
- *segment* (`SegmentWorker`, offline Paraformer): the open segment is decoded whole every
  `step_seconds` of new audio for a `Partial` (`stable` = "", since a later decode may change
  anything), and at `commit()` for the `Final`; streams that are due in the same step share one
  batched `Paraformer.recognize`. Other offline models (SenseVoice, engine/models/sensevoice.py)
  reuse it with their own `_decode`: per-stream options (`Stream.options`, given at
  `FunasrHandle(worker, options)`) go in, and each segment's text comes back with the language
  the model detected and its tags, which the `Final` carries.

Segments wait in order per stream: audio after a commit opens the next segment at once, while
the committed one still has chunks to run. Only a stream's oldest segment runs.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from audio import fbank
from engine.asr_prompt import language_name
from engine.funasr_loader import load_state_dict, read_folder
from engine.funasr_text import CharTokens
from engine.models.paraformer import FRAME_SAMPLES, ChunkConfig, Paraformer, ParaformerConfig
from engine.models.paraformer import StreamState as ModelState
from engine.runtime import Runtime
from engine.streaming import (
    Final,
    Partial,
    SegmentFailed,
    StreamOptions,
    TranscriptEvent,
    Word,
    WorkerHandle,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)  # compared by identity
class Segment:
    """Engine-thread state of one segment."""

    index: int
    pending: list[np.ndarray] = field(default_factory=list)  # audio not yet run (chunked: a
    # chunk's worth at most after each step; segment: all of the segment's audio)
    pending_size: int = 0
    received: int = 0  # samples fed
    consumed: int = 0  # samples the model has heard
    committed: bool = False
    text: str = ""
    revision: int = 0
    model_state: ModelState | None = None  # chunked: the model's caches
    frontend_state: Any = None  # chunked: the online front end's cache
    language: str | None = None  # segment: detected by the last decode (None: the worker's)
    tags: dict[str, str] | None = None  # segment: what the last decode tagged (SenseVoice)
    words: tuple[Word, ...] | None = None  # segment: the last decode's timed words

    def feed(self, x: np.ndarray) -> None:
        if x.size:
            self.pending.append(x)
            self.pending_size += x.size
        self.received += x.size

    def take(self, n: int) -> np.ndarray:
        """The first n pending samples (all when n exceeds them), removed from `pending`."""
        audio = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        head, rest = audio[:n], audio[n:]
        self.pending = [rest] if rest.size else []
        self.pending_size = rest.size
        return head

    def audio(self) -> np.ndarray:
        """All pending samples (kept)."""
        if len(self.pending) > 1:
            self.pending = [np.concatenate(self.pending)]
        return self.pending[0] if self.pending else np.zeros(0, np.float32)


@dataclass(eq=False)
class Stream:
    """Engine-thread state of one handle."""

    handle: FunasrHandle
    options: Any = None  # the model's per-stream decode options (segment policy), or None
    queue: list[Segment] = field(default_factory=list)  # unfinished segments, oldest first
    next_index: int = 0
    finishing: bool = False
    base: int = 0  # samples of finished segments (the handle's clock)

    @property
    def open(self) -> Segment | None:
        return self.queue[-1] if self.queue and not self.queue[-1].committed else None


class TextTokens(Protocol):
    """A token list or SentencePiece model: ids -> text (CharTokens, SentencePieceTokens)."""

    def text(self, ids: Iterable[int]) -> str: ...


class _Worker(ABC):
    """The inbox, the commands and the events; subclasses say when a segment is due and run
    the due ones (`_run`)."""

    interactive = True

    def __init__(
        self, model: torch.nn.Module, tokens: TextTokens, frontend: fbank.WavFrontend
    ) -> None:
        self.model: Any = model  # Paraformer; SegmentWorker also serves other offline models
        self.tokens: Any = tokens
        self.frontend = frontend
        self.device = next(model.parameters()).device
        self.language: str | None = None  # the code a Final carries
        # live streams in arrival order; a dict, so that each command finds its stream in
        # O(1) (a list scan per audio chunk was 15% of the thread at 1,000 streams)
        self.streams: dict[Stream, None] = {}
        self._inbox: list[tuple[FunasrHandle, str, object]] = []
        self._lock = threading.Lock()
        self.runtime: Runtime | None = None

    def post(self, handle: FunasrHandle, command: str, arg: object = None) -> None:
        with self._lock:
            self._inbox.append((handle, command, arg))
        if self.runtime is not None:
            self.runtime.notify()

    # ---- the worker, on the runtime thread ----

    def take_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for handle, command, arg in inbox:
            if command == "open":
                self.streams[arg] = None
                continue
            stream = handle._stream
            if stream in self.streams:
                getattr(self, f"_on_{command}")(stream, arg)

    def has_work(self) -> bool:
        return any(s.queue and self._due(s.queue[0]) for s in self.streams)

    def step(self) -> None:
        jobs = []
        for s in list(self.streams):
            seg = s.queue[0] if s.queue else None
            if seg is None or not self._due(seg):
                continue
            if seg.committed and seg.received == 0:  # nothing was fed: an empty final
                self._finalize(s, seg)
            else:
                jobs.append((s, seg))
        if jobs:
            self._run(jobs)

    def fail(self, error: Exception) -> None:
        for s in list(self.streams):
            for seg in s.queue:
                self._emit(s, SegmentFailed(seg.index, f"model error: {error}"))
                s.base += seg.received
            s.queue.clear()
            s.handle.consumed = s.base
            self._maybe_close(s)

    @abstractmethod
    def _due(self, seg: Segment) -> bool:
        """Whether the segment has a step to run now."""

    @abstractmethod
    def _run(self, jobs: list[tuple[Stream, Segment]]) -> None:
        """Run the due segments' steps, batched."""

    # ---- commands ----

    def _on_audio(self, s: Stream, x: np.ndarray) -> None:
        seg = s.open
        if seg is None:
            seg = Segment(s.next_index)
            s.next_index += 1
            s.queue.append(seg)
        seg.feed(x)

    def _on_commit(self, s: Stream, _: object) -> None:
        seg = s.open
        if seg is None:  # nothing fed: an empty segment, whose final keeps the numbering
            seg = Segment(s.next_index)
            s.next_index += 1
            s.queue.append(seg)
        seg.committed = True

    def _on_clear(self, s: Stream, _: object) -> None:
        seg = s.open
        if seg is None:
            s.next_index += 1  # the cleared segment's number is used up all the same
            return
        s.queue.remove(seg)
        s.base += seg.received
        self._update_consumed(s)

    def _on_finish(self, s: Stream, _: object) -> None:
        if s.open is not None:
            s.open.committed = True
        s.finishing = True
        self._maybe_close(s)

    def _on_cancel(self, s: Stream, _: object) -> None:
        del self.streams[s]
        s.queue.clear()
        s.handle._deliver(None)

    # ---- events ----

    def _partial(self, s: Stream, seg: Segment, stable: str, unstable: str) -> None:
        seg.revision += 1
        self._update_consumed(s)
        self._emit(s, Partial(seg.index, stable, unstable, seg.revision, s.base + seg.consumed))

    def _finalize(self, s: Stream, seg: Segment) -> None:
        s.queue.remove(seg)  # the state is dropped before anyone hears of the final
        s.base += seg.received
        self._update_consumed(s)
        language = seg.language or self.language
        self._emit(s, Final(seg.index, seg.text, language, seg.tags, seg.words))
        self._maybe_close(s)

    @staticmethod
    def _update_consumed(s: Stream) -> None:
        s.handle.consumed = s.base + (s.queue[0].consumed if s.queue else 0)

    def _maybe_close(self, s: Stream) -> None:
        if s.finishing and not s.queue and s in self.streams:
            del self.streams[s]
            s.handle._deliver(None)

    @staticmethod
    def _emit(s: Stream, event: TranscriptEvent) -> None:
        s.handle._deliver(event)


class ChunkedWorker(_Worker):
    """Paraformer-streaming: 600 ms chunks with look-back caches (see the module docstring)."""

    def __init__(self, model: Paraformer, tokens: CharTokens, frontend: fbank.WavFrontend) -> None:
        super().__init__(model, tokens, frontend)
        self.stride = model.chunk.stride_samples
        self.trace: list[dict[str, Any]] | None = None  # per chunk, when a list (tests)

    def _due(self, seg: Segment) -> bool:
        return seg.pending_size >= self.stride or seg.committed

    @torch.inference_mode()
    def _run(self, jobs: list[tuple[Stream, Segment]]) -> None:
        states, feats, final = [], [], []
        for _, seg in jobs:
            if seg.model_state is None:
                seg.model_state = self.model.new_stream(self.device)
                seg.frontend_state = self.frontend.stream()
            last = seg.pending_size < self.stride  # committed, and under a chunk left
            x = seg.take(self.stride)
            seg.consumed += x.size
            if last and x.size < FRAME_SAMPLES:
                f = None  # tail chunk: the carried frames alone
            else:
                f = seg.frontend_state.accept(torch.from_numpy(x), is_final=last)
                if f.shape[0] == 0 and last:  # (a full chunk always has frames)
                    f = None
            states.append(seg.model_state)
            feats.append(f)
            final.append(last)
        outputs = self.model.stream_step(states, feats, final)
        for (s, seg), out, last in zip(jobs, outputs, final, strict=True):
            seg.text += self.tokens.text(out.ids)
            if self.trace is not None:
                self.trace.append(
                    {
                        "segment": seg.index,
                        "ids": out.ids,
                        "final": last,
                        "encoder_frames": out.encoder_frames,
                        "attended_keys": out.attended_keys,
                        "batch": len(jobs),
                        "cache_elements": sum(t.numel() for t in seg.model_state.tensors()),
                    }
                )
            if last:
                self._finalize(s, seg)
            else:
                self._partial(s, seg, seg.text, "")


@dataclass(frozen=True)
class Decoded:
    """One segment's decode (segment policy): its text, and what the model said about it."""

    text: str
    language: str | None = None  # detected by the model; None: the worker's `language`
    tags: dict[str, str] | None = None  # e.g. SenseVoice's {"emotion": "NEUTRAL", ...}
    words: tuple[Word, ...] | None = None  # timed words, from models that give them


class SegmentWorker(_Worker):
    """Offline models: the open segment decoded whole every `step_seconds`, and at commit.
    `_decode` is Paraformer's; SenseVoice overrides it."""

    def __init__(
        self,
        model: Paraformer,
        tokens: CharTokens,
        frontend: fbank.WavFrontend,
        step_seconds: float | None = 2.0,
    ) -> None:
        super().__init__(model, tokens, frontend)
        self.step_samples = int(step_seconds * 16000) if step_seconds else None

    def _due(self, seg: Segment) -> bool:
        if seg.committed:
            return True
        return self.step_samples is not None and seg.received - seg.consumed >= self.step_samples

    @torch.inference_mode()
    def _run(self, jobs: list[tuple[Stream, Segment]]) -> None:
        audio = [torch.from_numpy(seg.audio()) for _, seg in jobs]
        samples = torch.tensor([a.numel() for a in audio], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True).to(self.device)
        feats, frames = self.frontend(padded, samples)  # (B, T, 560), on the model's device
        decoded = [Decoded("")] * len(jobs)
        run = (frames > 0).nonzero().flatten().tolist()
        if run:
            streams = [jobs[i][0] for i in run]
            for i, d in zip(run, self._decode(feats[run], frames[run], streams), strict=True):
                decoded[i] = d
        for (s, seg), d in zip(jobs, decoded, strict=True):
            seg.consumed = seg.received
            seg.text, seg.language, seg.tags, seg.words = d.text, d.language, d.tags, d.words
            if seg.committed:
                self._finalize(s, seg)
            else:
                self._partial(s, seg, "", d.text)

    def _decode(
        self, feats: torch.Tensor, frames: torch.Tensor, streams: list[Stream]
    ) -> list[Decoded]:
        """One batched decode of the due segments: feats (B, T, F), frames (B,) all > 0, and
        the streams they belong to -> one `Decoded` each."""
        result = self.model.recognize(feats, frames)
        return [Decoded(self.tokens.text(ids)) for ids in result.ids]


class FunasrHandle(WorkerHandle):
    """The event-loop side of a FunASR model's stream (engine/streaming.py's WorkerHandle)."""

    def __init__(self, worker: _Worker, options: Any = None) -> None:
        super().__init__(worker, lambda handle: Stream(handle, options))


@dataclass
class FunasrAsrModel:
    """A served Paraformer (engine/streaming.py's AsrModel)."""

    name: str
    worker: _Worker
    language: str  # the one language the model transcribes, e.g. "zh"
    kind: str = field(default="asr", init=False)

    def validate(self, options: StreamOptions) -> None:
        """The language may be left out or be the model's; the prompt (hotwords) is ignored."""
        if options.language:
            language_name(options.language, (language_name(self.language),))

    def open_stream(self, options: StreamOptions) -> FunasrHandle:
        self.validate(options)
        return FunasrHandle(self.worker)


def build_paraformer(
    path: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk: ChunkConfig | None = None,
) -> tuple[Paraformer, CharTokens, fbank.WavFrontend]:
    """The model, its token list and its front end, from a FunASR folder."""
    folder = read_folder(path)
    if folder.tokens is None:
        raise FileNotFoundError(f"{path}: no tokens.json or tokens.txt")
    tokens = CharTokens.from_file(folder.tokens)
    state = load_state_dict(folder.weights)
    vocab = state["decoder.output_layer.weight"].shape[0] if state else len(tokens)
    if vocab != len(tokens):
        raise ValueError(f"{path}: {len(tokens)} tokens but the output layer has {vocab}")
    cfg = ParaformerConfig.from_funasr(folder.config, vocab)
    with torch.device(device):
        model = Paraformer(cfg, chunk)
    model.load_weights(state)
    model.to(dtype).eval()
    return model, tokens, build_frontend(folder.config.get("frontend_conf") or {}, folder.cmvn)


def build_frontend(conf: dict[str, Any], cmvn: Path | None) -> fbank.WavFrontend:
    """audio/fbank.py's WavFrontend for a config.yaml `frontend_conf` (dither is always 0: the
    features are deterministic; funasr's default of 1.0 adds noise)."""
    fixed = {"fs": 16000, "window": "hamming", "frame_length": 25, "frame_shift": 10}
    for key, value in fixed.items():
        if conf.get(key, value) != value:
            raise ValueError(f"frontend_conf {key}: {conf[key]!r} is not supported ({value!r})")
    shape = {
        "n_mels": conf.get("n_mels", 80),
        "lfr_m": conf.get("lfr_m", 1),
        "lfr_n": conf.get("lfr_n", 1),
    }
    if cmvn is None:
        return fbank.WavFrontend(**shape)
    return fbank.WavFrontend.from_mvn_file(cmvn, **shape)


def load_paraformer(
    path: Path,
    name: str,
    performance_mode: str = "balanced",
    runtime: Runtime | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    step_seconds: float | None = 2.0,
    chunk: ChunkConfig | None = None,
    language: str | None = None,
    **_: Any,
) -> FunasrAsrModel:
    """The served model: Paraformer-streaming on the chunked policy, Paraformer on the segment
    policy. float32 unless told otherwise (the CIF's fire decisions are threshold crossings)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokens, frontend = build_paraformer(path, device, dtype or torch.float32, chunk)
    if model.config.streaming:
        worker: _Worker = ChunkedWorker(model, tokens, frontend)
    else:
        worker = SegmentWorker(model, tokens, frontend, step_seconds)
    worker.language = language or ("zh" if tokens.has_cjk() else "en")
    worker.runtime = runtime or Runtime(name=f"asr-{name}")
    worker.runtime.add(worker)
    return FunasrAsrModel(name, worker, worker.language)
