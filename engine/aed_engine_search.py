"""FireRedASR2-AED beam search on the engine: the search of engine/aed_beam_search.py (the
package's, each segment as if alone), with every live beam an engine request on the paged
decoder (engine/models/fireredasr2_paged.py), many segments' beams in one engine step.

Per segment: one request [<sos>]; the cross-attention keys and values of all segments are
computed once, before the first step. Each step, per live beam: log_softmax(logits /
softmax_smoothing), the <eos> column times eos_penalty, its top `beam` added to its score; a
finished beam offers only itself (its score, unchanged). The best `beam` candidates survive: a
live beam continued k ways forks k - 1 times (Engine.fork: KV blocks shared by reference count,
copied on write); a candidate ending in <eos> becomes a finished beam and leaves the engine;
a beam nobody continues is aborted. A segment stops when all its beams are finished or after
`max_len` steps (0: its encoder length); then scores / ((5 + n) / 6) ** length_penalty (n: <sos>
and the tokens), the best first.

It drives the engine's scheduler and runner itself, so the engine must run nothing else
meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from engine.aed_beam_search import BeamSettings, Hypothesis
from engine.config import EngineConfig
from engine.engine import Engine
from engine.models.fireredasr2 import FireRedAed
from engine.models.fireredasr2_paged import PagedFireRedDecoder
from engine.request import Request
from engine.sampling import SamplingParams
from kernels.attention import backend


def aed_engine(
    model: FireRedAed,
    performance_mode: str = "balanced",
    attention_backend: str | None = None,
    **overrides: object,
) -> Engine:
    """An engine over the model's decoder, on its device and in its dtype (`overrides`: more
    EngineConfig fields). No prefix caching: a decoder block's keys depend on the segment's
    audio, not only on its tokens. No CUDA graphs: a replayed step would skip the
    cross-attention context of `set_rows`."""
    p = next(model.parameters())
    device = str(p.device)
    config = EngineConfig.for_mode(
        performance_mode, device=device, dtype=p.dtype, enable_prefix_caching=False, **overrides
    )
    if "cuda_graphs" in {f.name for f in fields(config)}:
        config = replace(config, cuda_graphs=False)
    return Engine(
        PagedFireRedDecoder(model.decoder, backend(attention_backend, device)), None, config
    )


@dataclass
class _Beam:
    ids: list[int]  # tokens after <sos>
    confidences: list[float]
    score: float
    request: Request | None  # None: finished (its last token is <eos>)


@dataclass
class _Segment:
    index: int
    beams: list[_Beam]
    max_len: int
    steps: int = 0
    result: list[Hypothesis] | None = None
    pending: dict[str, Tensor] = field(default_factory=dict)


@torch.inference_mode()
def engine_beam_search(
    engine: Engine,
    enc: Tensor,
    lengths: Tensor,
    settings: BeamSettings | None = None,
    nbest: int = 1,
) -> list[list[Hypothesis]]:
    """enc (S, T', d) encoder output, lengths (S,) -> the n best hypotheses of each segment
    (settings None: the package's defaults)."""
    settings = settings or BeamSettings()
    model: PagedFireRedDecoder = engine.model
    cfg = model.decoder.cfg
    model.start(enc, lengths)
    params = SamplingParams(
        temperature=0.0, max_tokens=cfg.pe_maxlen - 2, ignore_eos=True, detokenize=False
    )
    segment_of: dict[str, int] = {}
    segments = []
    for i, n in enumerate(lengths.tolist()):
        req = engine.add([cfg.sos_id], params)
        segment_of[req.id] = i
        max_len = settings.max_len if settings.max_len > 0 else int(n)
        segments.append(_Segment(i, [_Beam([], [], 0.0, req)], max_len))
    while any(s.result is None for s in segments):
        batch = engine.scheduler.schedule()
        if not batch:
            raise RuntimeError("beam search: the engine scheduled nothing")
        model.set_rows(batch.requests, batch.num_new_tokens, segment_of)
        logits, sampled = engine.runner.run(batch)
        engine.scheduler.after_step(batch)
        row = {req.id: i for i, req in enumerate(sampled)}
        for s in segments:
            live = [b.request for b in s.beams if b.request is not None]
            for req in live:
                if req.id in row:
                    s.pending[req.id] = logits[row[req.id]]
            if s.result is None and len(s.pending) == len(live):
                _advance(engine, s, settings, nbest, segment_of)
    return [s.result for s in segments]


def _advance(
    engine: Engine, s: _Segment, settings: BeamSettings, nbest: int, segment_of: dict
) -> None:
    cfg = engine.model.decoder.cfg
    B = settings.beam_size
    live = [b for b in s.beams if b.request is not None]
    logits = torch.stack([s.pending.pop(b.request.id) for b in live]).float()
    logp = torch.log_softmax(logits / settings.softmax_smoothing, dim=-1)
    if settings.eos_penalty != 1.0:
        logp[:, cfg.eos_id] *= settings.eos_penalty
    top, top_ids = logp.topk(B, dim=-1)
    # candidates (score, beam, token, step score) in the package's order: beams in order, each
    # live beam's top B, a finished beam once
    candidates = []
    j = 0
    for b, beam in enumerate(s.beams):
        if beam.request is None:
            candidates.append((beam.score, b, cfg.eos_id, 0.0))
            continue
        for v, t in zip(top[j].tolist(), top_ids[j].tolist(), strict=True):
            candidates.append((beam.score + v, b, t, v))
        j += 1
    scores = torch.tensor([c[0] for c in candidates])
    chosen = [candidates[i] for i in scores.topk(min(B, len(candidates))).indices.tolist()]
    s.steps += 1
    new_beams: list[_Beam] = []
    continued: set[int] = set()
    for score, b, token, v in chosen:
        parent = s.beams[b]
        if parent.request is None:
            new_beams.append(parent)
        elif token == cfg.eos_id:
            new_beams.append(_Beam(parent.ids, parent.confidences, score, None))
        else:
            if b in continued:
                child = engine.fork(parent.request.id, parent.request.params)
                segment_of[child.id] = s.index
            else:
                child = parent.request
                continued.add(b)
            beam = _Beam(parent.ids + [token], parent.confidences + [math.exp(v)], score, child)
            new_beams.append(beam)
    for b, beam in enumerate(s.beams):
        if beam.request is not None and b not in continued:
            engine.abort(beam.request.id)
    for beam in new_beams:
        if beam.request is not None:
            beam.request.output_ids.append(beam.ids[-1])
    s.beams = new_beams
    if all(b.request is None for b in s.beams) or s.steps >= s.max_len:
        for b in s.beams:
            if b.request is not None:
                engine.abort(b.request.id)
        s.result = _best(s.beams, settings, nbest)


def _best(beams: list[_Beam], settings: BeamSettings, nbest: int) -> list[Hypothesis]:
    ranked = []
    for beam in beams:
        score = beam.score
        if settings.length_penalty > 0.0:
            n = torch.tensor(1.0 + len(beam.ids))
            score = float(score / torch.pow((5 + n) / 6.0, settings.length_penalty))
        c = beam.confidences
        ranked.append(Hypothesis(beam.ids, sum(c) / len(c) if c else math.nan, score))
    return sorted(ranked, key=lambda h: -h.score)[:nbest]
