"""A served chat model: a tokenizer and an engine running a causal LM."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.engine import Engine
from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from engine.runtime import Runtime
from engine.tokenizer import Tokenizer
from engine.weights import load_safetensors
from kernels.attention import backend


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def build_qwen3(path: Path, config: EngineConfig) -> Engine:
    """A Qwen3 checkpoint folder -> an engine with the model loaded on the configured device."""
    cfg = Qwen3Config.from_dict(read_config(path))
    default = torch.get_default_dtype()
    torch.set_default_dtype(config.dtype)  # build in the serving dtype: no float32 detour
    try:
        with torch.device(config.device):
            model = Qwen3ForCausalLM(cfg, backend(config.attention_backend, config.device))
    finally:
        torch.set_default_dtype(default)
    model.load_weights(load_safetensors(path, device=config.device))
    model.eval()
    return Engine(model, Tokenizer.from_folder(path), config)


@dataclass
class ChatModel:
    name: str
    engine: AsyncEngine
    kind: str = field(default="chat", init=False)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.engine.tokenizer


def load_qwen3(
    path: Path,
    name: str,
    performance_mode: str = "balanced",
    runtime: Runtime | None = None,
    **overrides,
) -> ChatModel:
    engine = build_qwen3(path, EngineConfig.for_mode(performance_mode, **overrides))
    return ChatModel(name, AsyncEngine(engine, runtime))
