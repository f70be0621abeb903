"""Model families: one module each. A family says whether a folder is one of its checkpoints
(`detect`) and builds the served model from it (`load`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., Any]  # (path, served_name, **engine_options) -> served model


FAMILIES: list[Family] = []
