"""Beam search for decoder-only requests on the engine, as Hugging Face transformers' `generate`
does it (4.57 `_beam_search`, greedy beams, early_stopping False, no logits processors), many
searches batched in one engine.

Each live beam is an engine request. Every engine step gives each beam's next-token log-probs;
per search, the 2 * beams best continuations of (beam score + log-prob) are ranked; those that
end (the end token, or the length limit) and rank in the first `beams` enter the finished list
(best `beams` kept, scored by their sum: length penalty 0), the best `beams` that do not end
are the next live beams. A beam that continues k ways forks k - 1 times (Engine.fork: its KV
blocks are shared by reference count and copied on write, so beams of one prompt hold one copy
of it); a beam nobody continues is aborted. A search stops when every continuation ends, or
when its `beams` finished hypotheses all score at least its best live beam. The answer is the
best finished hypothesis, its end token included.

It drives the engine's scheduler and runner itself (Engine.step samples one token per request;
beams need the log-probs), so the engine must run nothing else meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.engine import Engine
from engine.request import InjectedEmbeds, Request
from engine.sampling import SamplingParams

DEAD = -1.0e9


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    embeds: Sequence[InjectedEmbeds]
    max_new_tokens: int


@dataclass
class _Search:
    beams: list[tuple[Request, float]]  # live beams, best first
    max_new: int
    finished: list[tuple[float, list[int]]] = field(default_factory=list)  # best first
    steps: int = 0
    done: bool = False
    pending: dict[str, torch.Tensor] = field(default_factory=dict)  # this step's logits


def beam_search(
    engine: Engine, prompts: Sequence[Prompt], num_beams: int, eos: int
) -> list[list[int]]:
    """The best hypothesis (generated ids) of each prompt."""
    searches = []
    for p in prompts:
        params = SamplingParams(
            temperature=0.0, max_tokens=p.max_new_tokens + 1, ignore_eos=True, detokenize=False
        )
        req = engine.add(p.ids, params, embeds=p.embeds)
        searches.append(_Search([(req, 0.0)], max(p.max_new_tokens, 1)))
    with torch.inference_mode():
        while not all(s.done for s in searches):
            batch = engine.scheduler.schedule()
            if not batch:
                raise RuntimeError("beam search: the engine scheduled nothing")
            logits, sampled = engine.runner.run(batch)
            engine.scheduler.after_step(batch)
            row = {req.id: i for i, req in enumerate(sampled)}
            for s in searches:
                if s.done:
                    continue
                for req, _ in s.beams:
                    if req.id in row:
                        s.pending[req.id] = logits[row[req.id]]
                if len(s.pending) == len(s.beams):
                    _advance(engine, s, num_beams, eos)
    return [s.finished[0][1] for s in searches]


def _advance(engine: Engine, s: _Search, num_beams: int, eos: int) -> None:
    reqs = [req for req, _ in s.beams]
    logits = torch.stack([s.pending.pop(req.id) for req in reqs]).float()
    scores = torch.tensor([score for _, score in s.beams], device=logits.device)
    vocab = logits.shape[1]
    total = (torch.log_softmax(logits, dim=-1) + scores[:, None]).flatten()
    top, index = total.topk(min(2 * num_beams, total.numel()))
    top, index = top.tolist(), index.tolist()
    at_limit = s.steps + 1 >= s.max_new
    candidates = [(v, i // vocab, i % vocab) for v, i in zip(top, index, strict=True)]
    ends = [at_limit or token == eos for _, _, token in candidates]
    for j, (v, b, token) in enumerate(candidates[:num_beams]):
        if ends[j]:
            s.finished.append((v, reqs[b].output_ids + [token]))
    s.finished = sorted(s.finished, key=lambda f: -f[0])[:num_beams]
    live = [c for c, end in zip(candidates, ends, strict=True) if not end][:num_beams]
    s.steps += 1
    best_live = live[0][0] if live else DEAD
    full = len(s.finished) == num_beams and best_live <= s.finished[-1][0]
    if not live or full:
        s.done = True
        for req in reqs:
            engine.abort(req.id)
        return
    # forks first (a child copies its parent's tokens), then the new tokens
    children: list[Request] = []
    taken: set[int] = set()
    for _, b, _ in live:
        parent = reqs[b]
        if b in taken:
            children.append(engine.fork(parent.id, parent.params))
        else:
            children.append(parent)
            taken.add(b)
    for b, req in enumerate(reqs):
        if b not in taken:
            engine.abort(req.id)
    for req, (_, _, token) in zip(children, live, strict=True):
        req.output_ids.append(token)
    s.beams = [(req, v) for req, (v, _, _) in zip(children, live, strict=True)]
