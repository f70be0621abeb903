"""Model families: one module each. A family says whether a folder is one of its checkpoints
(`detect`) and builds the served model from it (`load`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., Any]  # (path, served_name, **engine_options) -> served model


def model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def config_yaml_model(path: Path) -> str | None:
    """config.yaml's `model:` (the model class of a FunASR folder), or None."""
    from engine.funasr_loader import funasr_model

    return funasr_model(path)


def _load_qwen3(path: Path, name: str, rollback: Any = None, **options: Any) -> Any:
    from engine.chat import load_qwen3

    return load_qwen3(path, name, **options)


def _load_qwen3_asr(path: Path, name: str, **options: Any) -> Any:
    from engine.asr import load_qwen3_asr

    return load_qwen3_asr(path, name, **options)


def _load_paraformer(path: Path, name: str, rollback: Any = None, **options: Any) -> Any:
    from engine.chunked import load_paraformer

    return load_paraformer(path, name, **options)


def _load_sensevoice(path: Path, name: str, rollback: Any = None, **options: Any) -> Any:
    from engine.sensevoice_asr import load_sensevoice

    return load_sensevoice(path, name, **options)


def _load_fun_asr_nano(path: Path, name: str, **options: Any) -> Any:
    from engine.fun_asr_nano_asr import load_fun_asr_nano

    return load_fun_asr_nano(path, name, **options)


def _is_fireredasr2(path: Path) -> bool:
    from engine.fireredasr2_asr import is_fireredasr2

    return is_fireredasr2(path)


def _load_fireredasr2(path: Path, name: str, rollback: Any = None, **options: Any) -> Any:
    from engine.fireredasr2_asr import load_fireredasr2

    return load_fireredasr2(path, name, **options)


FAMILIES: list[Family] = [
    Family("qwen3", lambda p: model_type(p) == "qwen3", _load_qwen3),
    Family("qwen3_asr", lambda p: model_type(p) == "qwen3_asr", _load_qwen3_asr),
    Family(
        "paraformer",
        lambda p: config_yaml_model(p) in ("Paraformer", "ParaformerStreaming"),
        _load_paraformer,
    ),
    Family("sensevoice", lambda p: config_yaml_model(p) == "SenseVoiceSmall", _load_sensevoice),
    Family(
        "fun_asr_nano",
        lambda p: config_yaml_model(p) == "FunASRNano" or model_type(p) == "fun_asr_nano",
        _load_fun_asr_nano,
    ),
    Family("fireredasr2", _is_fireredasr2, _load_fireredasr2),
]
