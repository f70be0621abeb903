"""Read FunASR model folders: config.yaml, configuration.json, model.pt, am.mvn, tokens, seg_dict.

A FunASR folder (a ModelScope / Hugging Face snapshot such as funasr/paraformer-zh) holds
- `config.yaml`: the model class (`model: Paraformer`) and its parts' settings;
- `configuration.json` (optional): `file_path_metas` naming the other files, e.g.
  `{"init_param": "model.pt", "config": "config.yaml", "tokenizer_conf": {"token_list":
  "tokens.json", "seg_dict_file": "seg_dict"}, "frontend_conf": {"cmvn_file": "am.mvn"}}`;
- `model.pt`: a torch state dict (possibly wrapped in `state_dict` / `model_state_dict` /
  `model`, keys possibly prefixed `module.`), read with `weights_only=True`;
- `am.mvn`: the CMVN (Kaldi nnet text), read by audio/fbank.py;
- `tokens.json` (or `tokens.txt`): the token list; `seg_dict`: word -> pieces, for encoding
  text only (hotwords); decoding never needs it;
- or, for SentencePiece models (SenseVoiceSmall), the `.bpe.model` that configuration.json names
  as `tokenizer_conf.bpemodel` (`chn_jpn_yue_eng_ko_spectok.bpe.model`), or `bpe.model`.

Where configuration.json names no file, the conventional names are looked up, as funasr does;
for the SentencePiece model, a folder's only `*.bpe.model` is taken too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml


@dataclass(frozen=True)
class FunasrFolder:
    path: Path
    config: dict[str, Any]  # config.yaml
    model: str  # config.yaml's `model:`, e.g. "Paraformer"
    weights: Path  # model.pt
    tokens: Path | None  # tokens.json / tokens.txt
    cmvn: Path | None  # am.mvn
    seg_dict: Path | None
    bpe_model: Path | None  # tokenizer_conf.bpemodel: a SentencePiece model
    metas: dict[str, Any]  # configuration.json's file_path_metas ({} without one)


def _metas(path: Path) -> dict[str, Any]:
    try:
        conf = json.loads((path / "configuration.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    metas = conf.get("file_path_metas") if isinstance(conf, dict) else None
    return metas if isinstance(metas, dict) else {}


def _named(path: Path, name: object) -> Path | None:
    return path / name if isinstance(name, str) and (path / name).is_file() else None


def _first(path: Path, *names: object) -> Path | None:
    for name in names:
        found = _named(path, name)
        if found is not None:
            return found
    return None


def config_path(path: Path) -> Path | None:
    """The folder's config.yaml (or the file configuration.json names)."""
    return _first(path, _metas(path).get("config"), "config.yaml")


def funasr_model(path: Path) -> str | None:
    """config.yaml's `model:` (the FunASR model class), or None when the folder has none."""
    config = config_path(path)
    if config is None:
        return None
    try:
        doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


def read_folder(path: Path) -> FunasrFolder:
    """Find and parse a FunASR folder's files (the weights are read by `load_state_dict`)."""
    metas = _metas(path)
    config_file = config_path(path)
    if config_file is None:
        raise FileNotFoundError(f"{path}: no config.yaml")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise ValueError(f"{config_file}: no `model:` entry")
    weights = _first(path, metas.get("init_param"), "model.pt")
    if weights is None:
        raise FileNotFoundError(f"{path}: no model.pt")
    tokenizer = metas.get("tokenizer_conf") or {}
    frontend = metas.get("frontend_conf") or {}
    return FunasrFolder(
        path=path,
        config=config,
        model=config["model"],
        weights=weights,
        tokens=_first(path, tokenizer.get("token_list"), "tokens.json", "tokens.txt"),
        cmvn=_first(path, frontend.get("cmvn_file"), "am.mvn"),
        seg_dict=_first(
            path, tokenizer.get("seg_dict_file"), tokenizer.get("seg_dict"), "seg_dict"
        ),
        bpe_model=_first(path, tokenizer.get("bpemodel"), "bpe.model") or _only_bpe(path),
        metas=metas,
    )


def _only_bpe(path: Path) -> Path | None:
    found = sorted(p for p in path.glob("*.bpe.model") if p.is_file())
    return found[0] if len(found) == 1 else None


def load_state_dict(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """model.pt -> {FunASR key: tensor}, unwrapped as funasr's load_pretrained_model does."""
    state = torch.load(str(path), map_location=device, weights_only=True)
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def named_path(
    folder: FunasrFolder, section: str, key: str, default: str | None = None
) -> Path | None:
    """A file or folder that config.yaml's `section.key` names (e.g. `llm_conf.init_param_path`
    -> Qwen3-0.6B/), found as funasr finds it: configuration.json's file_path_metas entry
    (relative to the folder), else config.yaml's value (relative to the folder unless
    absolute), else `default` in the folder; None when none of them exists."""
    metas = folder.metas.get(section)
    conf = folder.config.get(section)
    candidates = [
        metas.get(key) if isinstance(metas, dict) else None,
        conf.get(key) if isinstance(conf, dict) else None,
        default,
    ]
    for name in candidates:
        if isinstance(name, str) and name:
            path = folder.path / name  # an absolute name stays absolute
            if path.exists():
                return path
    return None
