"""The engine core: requests in, one step at a time, tokens and text out. Synchronous; see
async_engine.py for the loop that runs it off the event loop."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.model_runner import ModelRunner, kv_block_bytes
from engine.request import DEFAULT, InjectedEmbeds, Request
from engine.sampler import sample
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the engine will not run (too long, bad ids, bad embeddings)."""


@dataclass
class Output:
    request_id: str
    token_ids: list[int]  # new this step
    text: str  # new this step
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    stop: str | None = None  # the stop string that ended it, if one did


class Engine:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer | None,  # None: token ids only, no text (benchmarks)
        config: EngineConfig,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        cfg = model.config
        self.max_model_len = min(
            config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings
        )
        fuse = getattr(model, "fuse_projections", None)
        if fuse is not None:  # before the runner captures graphs of the forward
            fuse()
        num_blocks = config.num_blocks or self._blocks_that_fit()
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.runner = ModelRunner(model, config, num_blocks, self.max_model_len)
        graphed = self.runner.graphs is not None
        self.scheduler = Scheduler(config, self.blocks, config.prefill_interval if graphed else 1)
        self.requests: dict[str, Request] = {}
        self.detoks: dict[str, IncrementalDetokenizer | None] = {}
        self.eos_ids = set(tokenizer.eos_token_ids) if tokenizer else set()
        log.info("engine: %d KV blocks of %d tokens", num_blocks, config.block_size)

    def _blocks_that_fit(self) -> int:
        per_block = kv_block_bytes(self.model.config, self.config)
        if self.config.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info()
            budget = int(free * self.config.kv_cache_fraction)
        else:
            budget = self.config.cpu_kv_cache_bytes
        return max(budget // per_block, 1)

    # ---- requests ----

    def add(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = DEFAULT,
        embeds: Sequence[InjectedEmbeds] = (),
    ) -> Request:
        req = Request(
            request_id or uuid.uuid4().hex, list(prompt_ids), params, priority, list(embeds)
        )
        self.validate(req)
        if params.seed is not None:
            req.generator = torch.Generator(self.config.device).manual_seed(params.seed)
        self.requests[req.id] = req
        self.detoks[req.id] = self._detokenizer(req.prompt_ids, params)
        self.scheduler.add(req)
        return req

    def _detokenizer(
        self, prefix: Sequence[int], params: SamplingParams
    ) -> IncrementalDetokenizer | None:
        if self.tokenizer is None or not params.detokenize:
            return None
        return IncrementalDetokenizer(
            self.tokenizer, prefix, params.skip_special_tokens, params.stop
        )

    def validate(self, req: Request) -> None:
        n = len(req.prompt_ids)
        if req.id in self.requests:
            raise RequestError(f"request id {req.id!r} is already running")
        if n == 0:
            raise RequestError("the prompt is empty")
        if n >= self.max_model_len:
            raise RequestError(
                f"the prompt has {n} tokens; this model takes {self.max_model_len - 1}"
            )
        vocab = self.model.config.vocab_size
        if min(req.prompt_ids) < 0 or max(req.prompt_ids) >= vocab:
            raise RequestError(f"token ids must be in [0, {vocab})")
        need, have = -(-(n + 1) // self.config.block_size), self.blocks.num_blocks
        if need > have:
            raise RequestError(f"the prompt needs {need} KV blocks; the cache has {have}")
        hidden = self.model.config.hidden_size
        for e in req.embeds:
            if e.values.ndim != 2 or e.values.shape[1] != hidden:
                raise RequestError(f"injected embeddings must be (n, {hidden})")
            if e.start < 0 or e.end > n:
                raise RequestError("injected embeddings must lie inside the prompt")

    def fork(self, request_id: str, params: SamplingParams, child_id: str | None = None) -> Request:
        """A running request's twin (beam search, n > 1): it shares every KV block by reference;
        the first write to a shared block copies it (copy-on-write), so neither sees the other's
        tokens. The child continues from the parent's tokens with its own sampling."""
        parent = self.requests.get(request_id)
        if parent is None or parent not in self.scheduler.running:
            raise RequestError(f"request {request_id!r} is not running")
        child = Request(
            child_id or uuid.uuid4().hex,
            list(parent.prompt_ids),
            params,
            parent.priority,
            list(parent.embeds),
            output_ids=list(parent.output_ids),
            num_computed_tokens=parent.num_computed_tokens,
            num_cached_tokens=parent.num_cached_tokens,
            block_table=self.blocks.fork(parent.block_table),
            block_keys=list(parent.block_keys),
            num_published_blocks=parent.num_published_blocks,
        )
        self.validate(child)
        if params.seed is not None:
            child.generator = torch.Generator(self.config.device).manual_seed(params.seed)
        self.requests[child.id] = child
        self.detoks[child.id] = self._detokenizer(child.token_ids, params)
        self.scheduler.adopt(child)
        return child

    def abort(self, request_id: str) -> None:
        """Stop a request now; its KV blocks are freed at once."""
        req = self.requests.pop(request_id, None)
        self.detoks.pop(request_id, None)
        if req is not None and not req.finished:
            self.scheduler.finish(req, "abort")

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- one step ----

    def step(self) -> list[Output]:
        batch = self.scheduler.schedule()
        if not batch:
            return []
        try:
            logits, sampling = self.runner.run(batch)
            tokens = sample(logits, sampling)
        except Exception:  # a bad batch must not take the engine down: fail its requests
            log.exception("engine step failed; failing %d requests", len(batch))
            return [self._finish(req, "error") for req in batch.requests]
        self.scheduler.after_step(batch)
        return [self._append(req, tok) for req, tok in zip(sampling, tokens, strict=True)]

    def _append(self, req: Request, token: int) -> Output:
        req.output_ids.append(token)
        detok = self.detoks[req.id]
        text = detok.push([token]) if detok else ""
        stopped = detok is not None and detok.stopped is not None
        p = req.params
        reason = None
        if stopped or token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids):
            reason = "stop"
        elif len(req.output_ids) >= p.max_tokens or req.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is None:
            return self._output(req, [token], text)
        if detok is not None and not stopped:
            text += detok.flush()
        out = self._finish(req, reason, [token], text)
        out.stop = detok.stopped if stopped else None
        return out

    def _finish(self, req: Request, reason: str, tokens=(), text: str = "") -> Output:
        self.scheduler.finish(req, reason)
        self.requests.pop(req.id, None)
        self.detoks.pop(req.id, None)
        return self._output(req, list(tokens), text)

    @staticmethod
    def _output(req: Request, tokens: list[int], text: str) -> Output:
        return Output(
            request_id=req.id,
            token_ids=tokens,
            text=text,
            finished=req.finished,
            finish_reason=req.finish_reason,
            num_prompt_tokens=len(req.prompt_ids),
            num_cached_tokens=req.num_cached_tokens,
            num_output_tokens=len(req.output_ids),
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
        """Run prompts to completion (tests, benchmarks): their output token ids, in order."""
        reqs = [self.add(p, params) for p in prompts]
        while self.has_work():
            self.step()
        return [r.output_ids for r in reqs]
