"""Beam search of an attention decoder (FireRedASR2-AED's), batched across segments.

The search of fireredasr2's `TransformerDecoder.batch_beam_search`, with each segment getting
what it would get decoded alone:
- every segment starts with `beam` rows of <sos>, scores [0, -1e10, ...] (one live beam);
- each step, per row: log_softmax(logits / softmax_smoothing), the <eos> column times
  eos_penalty, its top `beam`; a finished row (its last token <eos>) offers only <eos> at 0
  (and -1e10 for the rest); per segment the best `beam` of the beam x beam candidates (sums of
  scores) survive, in order; each token's confidence is exp(its step score);
- a segment stops when all its rows are finished or after `max_len` steps (0: its encoder
  length); the fireredasr2 code stops a batch when the whole batch is done and runs up to the
  longest item's length, so a segment cut by its own length there may run longer in a batch;
  here each segment stops by itself;
- at the end, scores / ((5 + n) / 6) ** length_penalty (n: the tokens before <eos>, <sos>
  included; GNMT's penalty), the best first; a hypothesis is its tokens between <sos> and <eos>,
  and its confidence the mean of those tokens' confidences.
Finished segments leave the batch (their rows and cross-attention keys dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.models.fireredasr2 import TransformerDecoder

DEAD = -1e10  # the score of a row that is no beam (yet): the package's "-INF"


@dataclass(frozen=True)
class BeamSettings:
    """FireRedAsr2Config's decoding defaults."""

    beam_size: int = 3
    softmax_smoothing: float = 1.25
    length_penalty: float = 0.6
    eos_penalty: float = 1.0
    max_len: int = 0  # steps at most; 0: the segment's encoder frames

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.eos_penalty <= 0 or self.softmax_smoothing <= 0:
            raise ValueError(f"invalid beam settings {self}")


@dataclass(frozen=True)
class Hypothesis:
    ids: list[int]  # without <sos> and <eos>
    confidence: float  # mean per-token confidence (nan when there are no tokens)
    score: float  # length-penalised log score


@torch.inference_mode()
def beam_search(
    decoder: TransformerDecoder,
    enc: Tensor,
    lengths: Tensor,
    settings: BeamSettings = BeamSettings(),
    nbest: int = 1,
) -> list[list[Hypothesis]]:
    """enc (S, T', d) encoder output, lengths (S,) -> the n best hypotheses of each segment."""
    cfg = decoder.cfg
    B, S, device = settings.beam_size, enc.shape[0], enc.device
    own = [int(n) for n in lengths.tolist()]
    max_len = [settings.max_len] * S if settings.max_len > 0 else own
    state = decoder.start(enc, lengths, B)
    live = torch.arange(S, device=device)  # the segments still searching, in row order
    scores = torch.full((S, B), DEAD, device=device)
    scores[:, 0] = 0.0
    ys = torch.full((S, B, 1), cfg.sos_id, dtype=torch.long, device=device)
    conf = torch.zeros(S, B, 1, device=device)
    finished = torch.zeros(S, B, dtype=torch.bool, device=device)
    out: list[list[Hypothesis]] = [[] for _ in range(S)]
    dead_row = torch.full((B,), DEAD, device=device)
    dead_row[0] = 0.0
    step = 0
    while live.numel():
        n = live.numel()
        logits, state = decoder(ys[:, :, -1].reshape(n * B, 1), state)
        logp = torch.log_softmax(logits[:, -1].float() / settings.softmax_smoothing, dim=-1)
        if settings.eos_penalty != 1.0:
            logp[:, cfg.eos_id] *= settings.eos_penalty
        top, top_ids = logp.topk(B, dim=-1)  # (n B, B)
        done = finished.reshape(n * B, 1)
        top = torch.where(done, dead_row, top)
        top_ids = torch.where(done, cfg.eos_id, top_ids)
        cand = (scores.reshape(n * B, 1) + top).reshape(n, B * B)
        scores, pick = cand.topk(B, dim=-1)  # (n, B)
        origin = pick // B + B * torch.arange(n, device=device)[:, None]  # rows
        token = top_ids.reshape(n, B * B).gather(1, pick)
        step_conf = top.reshape(n, B * B).gather(1, pick).exp()
        rows = origin.flatten()
        ys = torch.cat([ys.reshape(n * B, -1)[rows].reshape(n, B, -1), token[..., None]], dim=2)
        conf = torch.cat([conf.reshape(n * B, -1)[rows].reshape(n, B, -1), step_conf[..., None]], 2)
        finished = token == cfg.eos_id
        step += 1
        stop = finished.all(dim=1).tolist()
        stop = [s or step >= max_len[int(i)] for s, i in zip(stop, live.tolist(), strict=True)]
        if any(stop):
            for j in [j for j, s in enumerate(stop) if s]:
                out[int(live[j])] = _finish(ys[j], conf[j], scores[j], cfg.eos_id, settings, nbest)
            keep = torch.tensor([not s for s in stop], device=device)
            kept = keep.nonzero().flatten()
            rows = (kept[:, None] * B + torch.arange(B, device=device)).flatten()
            live, scores, ys, conf, finished = (
                live[kept],
                scores[kept],
                ys[kept],
                conf[kept],
                finished[kept],
            )
            state = state.select(origin.flatten()[rows], kept)
        else:
            state = state.select(rows)
    return out


def _finish(
    ys: Tensor, conf: Tensor, scores: Tensor, eos: int, settings: BeamSettings, nbest: int
) -> list[Hypothesis]:
    """One segment's beams (B, t) -> its n best hypotheses."""
    lengths = (ys != eos).sum(dim=1)  # <sos> and the tokens
    if settings.length_penalty > 0.0:
        scores = scores / torch.pow((5 + lengths.float()) / 6.0, settings.length_penalty)
    best, order = scores.topk(min(nbest, scores.numel()))
    hyps = []
    for score, b in zip(best.tolist(), order.tolist(), strict=True):
        n = int(lengths[b])
        c = conf[b, 1:n]
        confidence = float(c.mean()) if c.numel() else math.nan
        hyps.append(Hypothesis(ys[b, 1:n].tolist(), confidence, float(score)))
    return hyps
