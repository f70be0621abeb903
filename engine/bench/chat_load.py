"""Chat load for `rtserve bench asr`'s mixed workload: a chat model on the ASR model's runtime
thread, kept busy by a fixed number of requests that are resubmitted as they finish.

The model is random weights in a Qwen3 shape (engine/bench/chat.py's SHAPES). Prompts are random
ids of about `prompt_len` tokens and every request decodes about `output_len` tokens
(`ignore_eos`): lengths are drawn from [3/4, 5/4] of the nominal ones, and each stream's first
request stops after a random share of `output_len`, so requests finish (and their successors
prefill) spread over time rather than in waves. The KV pool holds exactly what `streams`
requests of the longest lengths need, so loading the chat model next to an ASR engine costs
its weights and a few GiB, not a memory-sized cache.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.async_engine import AsyncEngine
from engine.bench.chat import COMMON, SHAPES
from engine.config import EngineConfig
from engine.engine import Engine
from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from kernels.attention import backend, phases


@dataclass(frozen=True)
class ChatLoadSpec:
    shape: str = "qwen3-0.6b"
    streams: int = 32  # requests generating at any time
    prompt_len: int = 512
    output_len: int = 256

    @property
    def max_prompt(self) -> int:
        return self.prompt_len * 5 // 4

    @property
    def max_output(self) -> int:
        return max(self.output_len * 5 // 4, 1)

    def num_blocks(self, block_size: int) -> int:
        """The KV blocks of `streams` requests at the longest lengths, plus one spare each."""
        per_request = math.ceil((self.max_prompt + self.max_output) / block_size) + 1
        return self.streams * per_request


class ChatLoad:
    """`spec.streams` chat requests generating without pause on `runtime`'s thread."""

    def __init__(self, spec: ChatLoadSpec, runtime: Runtime, config: EngineConfig, seed: int):
        if spec.shape not in SHAPES:
            raise ValueError(f"unknown chat shape {spec.shape!r}; one of {sorted(SHAPES)}")
        self.spec = spec
        cfg = Qwen3Config.from_dict({**COMMON, **SHAPES[spec.shape]})
        self.vocab = cfg.vocab_size
        config = replace(
            config,
            num_blocks=spec.num_blocks(config.block_size),
            max_num_seqs=spec.streams,
            # random prompts never share a block: the prefix cache would only cost lookups
            enable_prefix_caching=False,
        )
        self.engine = AsyncEngine(Engine(_random_model(cfg, config), None, config), runtime)
        self.rng = np.random.RandomState(seed)
        self.tokens = 0  # output tokens delivered so far
        self.finished = 0  # requests completed
        self.first_tokens = 0  # streams whose first request has produced a token
        self._tasks: list[asyncio.Task] = []

    def describe(self) -> dict:
        runner = self.engine.engine.runner
        return {
            "shape": self.spec.shape,
            "streams": self.spec.streams,
            "prompt_len": self.spec.prompt_len,
            "output_len": self.spec.output_len,
            "num_blocks": self.engine.engine.config.num_blocks,
            "attention_backend": phases(runner.attention),
            "decode_steps": runner.decode_steps,
            "graph_share": runner.graph_steps / max(runner.decode_steps, 1),
        }

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._stream()) for _ in range(self.spec.streams)]

    async def running(self, timeout: float) -> None:
        """Until every stream has a token (the first prefills are behind us)."""
        deadline = time.perf_counter() + timeout
        while self.first_tokens < self.spec.streams:
            self.check()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"chat load: {self.first_tokens} streams started")
            await asyncio.sleep(0.01)

    async def stop(self, timeout: float = 60.0) -> None:
        """Cancel every request, wait until the engine has dropped them, leave the runtime."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        deadline = time.perf_counter() + timeout
        while self.engine.engine.requests and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        self.engine.shutdown()

    def check(self) -> None:
        """Raise what a chat stream raised (a failed request ends the bench, not just the load)."""
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()

    def _lengths(self, first: bool) -> tuple[int, int]:
        s = self.spec
        prompt = int(self.rng.randint(max(s.prompt_len * 3 // 4, 1), s.max_prompt + 1))
        output = int(self.rng.randint(max(s.output_len * 3 // 4, 1), s.max_output + 1))
        if first:  # stagger the first wave's ends
            output = int(self.rng.randint(1, output + 1))
        return prompt, output

    async def _stream(self) -> None:
        first = True
        while True:
            prompt_len, output_len = self._lengths(first)
            prompt = self.rng.randint(0, self.vocab, prompt_len).tolist()
            params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
            async for out in self.engine.generate(prompt, params):
                if first and out.token_ids:
                    self.first_tokens += 1
                    first = False
                self.tokens += len(out.token_ids)
            self.finished += 1


def _random_model(cfg: Qwen3Config, config: EngineConfig) -> Qwen3ForCausalLM:
    """A Qwen3 with its initial random weights, built in the serving dtype on the device."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(config.dtype)
    try:
        with torch.device(config.device):
            model = Qwen3ForCausalLM(cfg, backend(config.attention_backend, config.device))
    finally:
        torch.set_default_dtype(default)
    return model.eval()
