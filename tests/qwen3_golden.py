"""The Qwen3 golden fixtures (HF transformers outputs), and engines on the tiny checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.chat import build_qwen3
from engine.config import EngineConfig
from engine.engine import Engine
from engine.request import InjectedEmbeds
from engine.sampling import SamplingParams
from tests.tiny_models import FIXTURES
from tests.tiny_models import build_qwen3 as build_checkpoint

GOLDEN = FIXTURES / "qwen3"
DELTA = 1e-3  # greedy tokens must agree while the reference's top-2 margin is at least this
CPU = EngineConfig(device="cpu", dtype=torch.float32, block_size=4, num_blocks=256)


@cache
def golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@cache
def golden_tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden.safetensors")


def checkpoint(name: str, root: Path, shards: int = 1) -> Path:
    build = golden()["checkpoints"][name]["build"]
    folder = root / f"{name}-{shards}"
    if not folder.exists():
        build_checkpoint(
            folder,
            seed=build["seed"],
            tie_word_embeddings=build["tie_word_embeddings"],
            shards=shards,
        )
    return folder


def engine(path: Path, **overrides) -> Engine:
    return build_qwen3(path, replace(CPU, **overrides))


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@torch.inference_mode()
def prompt_logits(eng: Engine, ids: list[int], embeds: list[InjectedEmbeds] = ()) -> torch.Tensor:
    """Teacher-forced logits at every prompt position, through the engine's paged KV path."""
    req = eng.add(ids, greedy(1), embeds=embeds)
    batch = eng.scheduler.schedule()
    assert batch.requests == [req] and batch.num_new_tokens == [len(ids)]
    hidden = eng.runner.forward(eng.runner.prepare(batch))
    eng.abort(req.id)
    return eng.model.logits(hidden)


def agree_until_margin(ours: list[int], ref: list[int], margins: list[float]) -> bool:
    """Greedy tokens match at every step until the reference's margin drops below DELTA."""
    for a, b, m in zip(ours, ref, margins, strict=False):
        if m < DELTA:
            return True
        if a != b:
            return False
    return len(ours) >= len(ref)
