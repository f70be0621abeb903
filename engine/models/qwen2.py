"""Qwen2 dense decoder (the LLM of FireRedASR2-LLM, Qwen2-7B-Instruct) on the paged engine.

Qwen2 is Qwen3's layer stack with biases on the q, k and v projections and no per-head RMSNorm
on q and k; engine/models/qwen3.py builds both from the config (`qk_norm`, `attention_bias`),
and Hugging Face's parameter names load as they are (Qwen3ForCausalLM). This module reads and
checks a Qwen2 config.
"""

from __future__ import annotations

from typing import Any

from engine.models.qwen3 import Qwen3Config


def qwen2_config(d: dict[str, Any]) -> Qwen3Config:
    """config.json of a Qwen2 checkpoint (model_type "qwen2")."""
    if d.get("model_type") != "qwen2":
        raise ValueError(f"not a Qwen2 config (model_type {d.get('model_type')!r})")
    if d.get("use_sliding_window"):
        raise ValueError("Qwen2 sliding-window attention is not supported")
    return Qwen3Config.from_dict(d)
