"""Read checkpoint tensors: safetensors, one file or sharded with an index, as HF saves them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: shards named in {INDEX} are missing: {missing}")
        return files
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"{folder}: no safetensors weights")
    return found


def load_safetensors(folder: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for f in safetensors_files(folder):
        weights.update(load_file(f, device=device))
    return weights
