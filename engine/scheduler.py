"""The scheduler: which requests compute how many tokens this step, within one token budget.

There are no prefill and decode phases: each running request wants `num_tokens -
num_computed_tokens` tokens (1 when decoding, more while its prompt is being computed), and the
budget is shared out decodes first, then prompt chunks, each in priority order. Prompts longer
than the budget or `max_prefill_chunk` are computed in chunks over several steps. When the KV
cache is full, the lowest-priority, most recently arrived request is preempted: its blocks are
freed and it recomputes later (its full blocks are often still in the prefix cache). A waiting
request of a higher priority class may preempt running ones of a lower class to get in.

While requests are decoding, prompt tokens are scheduled at most every `prefill_interval` steps
(1: every step). A step with prompt tokens cannot be replayed from a decode CUDA graph and costs
several decode steps, so holding prompts for a few steps and taking them together keeps most
steps graphed; a request waits at most `prefill_interval - 1` short steps for its first chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.block_manager import BlockManager, block_keys
from engine.config import EngineConfig
from engine.request import Request, Status


@dataclass
class Batch:
    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # KV block copies (src, dst) first
    preempted: list[Request] = field(default_factory=list)

    def add(self, req: Request, n: int, copies: list[tuple[int, int]]) -> None:
        self.requests.append(req)
        self.num_new_tokens.append(n)
        self.copies += copies

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.requests)


def _rank(req: Request) -> tuple:
    return (req.priority, req.arrival)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager, prefill_interval: int = 1):
        self.config = config
        self.blocks = blocks
        self.prefill_interval = prefill_interval
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.steps_without_prompts = 0  # steps since one that computed prompt tokens

    def add(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    def adopt(self, req: Request) -> None:
        """Take in a running request that already holds its blocks (a fork)."""
        req.status = Status.RUNNING
        self.running.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, req: Request, reason: str) -> None:
        """End a request (done, stopped, aborted): its blocks are freed now."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.blocks.free(req.block_table)
        req.status = Status.FINISHED
        req.finish_reason = reason

    # ---- one step ----

    def schedule(self) -> Batch:
        batch = Batch()
        budget = self.config.max_num_batched_tokens
        self._make_room_for_urgent(batch)
        urgent_preemptions = len(batch.preempted)
        prompts = self.prompts_due()
        # decodes first, then prompt chunks; each in priority order
        for req in sorted(self.running, key=lambda r: (self._wants(r) > 1, *_rank(r))):
            if req.status is not Status.RUNNING or budget == 0:
                continue
            if not prompts and self._wants(req) > 1:
                continue
            n = min(self._wants(req), budget, self.config.max_prefill_chunk)
            while (copies := self._grow(req, n)) is None:
                victim = self._victim(batch, req)
                if victim is None:
                    break
                self._preempt(victim, batch)
            if copies is None:
                self._preempt(req, batch)  # nothing left to take from: wait for room
                continue
            batch.add(req, n, copies)
            budget -= n
        if prompts and len(batch.preempted) == urgent_preemptions:  # none while short of blocks
            budget = self._admit(batch, budget)
        took_prompts = batch.num_tokens > len(batch)  # not decode-shaped: runs eagerly
        self.steps_without_prompts = 0 if took_prompts else self.steps_without_prompts + 1
        return batch

    def prompts_due(self) -> bool:
        """Whether the next step may take prompt tokens (see the module docstring)."""
        decoding = any(self._wants(r) == 1 for r in self.running)
        return not decoding or self.steps_without_prompts + 1 >= self.prefill_interval

    def _admit(self, batch: Batch, budget: int) -> int:
        for req in sorted(self.waiting, key=_rank):
            if budget == 0 or len(self.running) >= self.config.max_num_seqs:
                break
            cached = self._cached_prefix(req)
            computed = len(cached) * self.blocks.block_size
            n = min(req.num_tokens - computed, budget, self.config.max_prefill_chunk)
            if not self.blocks.allocate(req.block_table, computed + n, cached):
                break  # the next in line waits too: no overtaking by smaller requests
            req.num_computed_tokens = computed
            if not req.output_ids and not req.num_cached_tokens:
                req.num_cached_tokens = computed
            copies = self.blocks.prepare_write(req.block_table, computed, computed + n)
            self.waiting.remove(req)
            self.running.append(req)
            req.status = Status.RUNNING
            batch.add(req, n, copies)
            budget -= n
        return budget

    def after_step(self, batch: Batch) -> None:
        """The batch ran: advance each request and offer its full blocks to the prefix cache."""
        for req, n in zip(batch.requests, batch.num_new_tokens, strict=True):
            req.num_computed_tokens += n
            full = req.num_computed_tokens // self.blocks.block_size
            if self.config.enable_prefix_caching and full > req.num_published_blocks:
                done = req.num_published_blocks
                keys = self._keys(req, full)[done:]
                self.blocks.publish(req.block_table[done:full], keys)
                req.num_published_blocks = full

    # ---- helpers ----

    @staticmethod
    def _wants(req: Request) -> int:
        return req.num_tokens - req.num_computed_tokens

    def _grow(self, req: Request, n: int) -> list[tuple[int, int]] | None:
        """Slots for n more tokens (and private copies of shared blocks); None if out of blocks."""
        start = req.num_computed_tokens
        if not self.blocks.allocate(req.block_table, start + n):
            return None
        return self.blocks.prepare_write(req.block_table, start, start + n)

    def _victim(self, batch: Batch, keep: Request) -> Request | None:
        """The lowest-priority, latest running request not already in this batch."""
        candidates = [r for r in self.running if r is not keep and r not in batch.requests]
        return max(candidates, key=_rank, default=None)

    def _preempt(self, req: Request, batch: Batch) -> None:
        self.running.remove(req)
        self.blocks.free(req.block_table)
        req.num_computed_tokens = req.num_published_blocks = 0
        req.status = Status.WAITING
        self.waiting.insert(0, req)
        batch.preempted.append(req)

    def _make_room_for_urgent(self, batch: Batch) -> None:
        """A waiting request of a better class than some running ones takes their place."""
        if not self.waiting or not self.running:
            return
        urgent = min(self.waiting, key=_rank)
        need = -(-(urgent.num_tokens + 1) // self.blocks.block_size)
        while True:
            worst = max(self.running, key=_rank, default=None)
            if worst is None or worst.priority <= urgent.priority:
                return
            crowded = len(self.running) >= self.config.max_num_seqs
            if not crowded and self.blocks.num_free >= need:
                return
            self._preempt(worst, batch)

    def _cached_prefix(self, req: Request) -> list[int]:
        if not self.config.enable_prefix_caching:
            return []
        # at least one token is computed, so the last one's logits exist to sample from
        full = (req.num_tokens - 1) // self.blocks.block_size
        return self.blocks.cached_prefix(self._keys(req, full))

    def _keys(self, req: Request, n_blocks: int) -> list[int]:
        """Keys of the first n_blocks full blocks, extending the request's memo as needed."""
        have = len(req.block_keys)
        if n_blocks > have:
            bs = self.blocks.block_size
            extras = req.block_extras(bs, n_blocks)[have:]
            parent = req.block_keys[-1] if have else None
            tokens = req.token_ids[have * bs : n_blocks * bs]
            req.block_keys += block_keys(tokens, bs, extras, parent=parent)
        return req.block_keys[:n_blocks]
