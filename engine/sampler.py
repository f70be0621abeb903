"""Next tokens from logits, one row per request, each with its own sampling knobs."""

from __future__ import annotations

import torch

from engine.request import Request


def apply_repetition_penalty(logits: torch.Tensor, reqs: list[Request]) -> None:
    """HF semantics: a token already in the sequence has its logit divided by the penalty when
    positive and multiplied when negative."""
    for i, req in enumerate(reqs):
        penalty = req.params.repetition_penalty
        if penalty == 1.0:
            continue
        seen = torch.tensor(sorted(set(req.token_ids)), device=logits.device)
        scores = logits[i, seen]
        logits[i, seen] = torch.where(scores > 0, scores / penalty, scores * penalty)


def top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and top-p nucleus. top_k 0 = all."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, logits.shape[-1])[:, None]
    drop = rank >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the better tokens
    drop |= before >= top_p[:, None]  # the first token is always kept
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


@torch.inference_mode()
def sample(logits: torch.Tensor, reqs: list[Request]) -> list[int]:
    """logits: (S, vocab) float32, row i for reqs[i]."""
    if not reqs:
        return []
    apply_repetition_penalty(logits, reqs)
    greedy = logits.argmax(-1)
    rows = [i for i, r in enumerate(reqs) if not r.params.greedy]
    if not rows:
        return greedy.tolist()
    dev = logits.device
    sub = (
        logits[rows] / torch.tensor([reqs[i].params.temperature for i in rows], device=dev)[:, None]
    )
    top_k = torch.tensor([reqs[i].params.top_k for i in rows], device=dev)
    top_p = torch.tensor([reqs[i].params.top_p for i in rows], device=dev)
    probs = top_k_top_p(sub, top_k, top_p).softmax(-1)
    # exponential race: argmax(p / E), E ~ Exp(1), draws from p. One draw for the whole batch;
    # seeded rows then redraw from their own generator (one launch each, so only those).
    race = torch.empty_like(probs).exponential_()
    for j, i in enumerate(rows):
        if reqs[i].generator is not None:
            race[j].exponential_(generator=reqs[i].generator)
    picked = (probs / race).argmax(-1)
    out = greedy.clone()
    out[rows] = picked
    return out.tolist()
