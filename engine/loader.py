"""Find and load the models a server is asked to run.

A model is given as `PATH`, a hub id (`org/name`), or `NAME=PATH`. The folder's files say which
family it is; each family module registers a `Family` in `FAMILIES` (engine/models/). Anything
that is not a known family fails here with a message that says what was found.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models import FAMILIES, Family

DEFAULT_MODEL_ENV = "RTSERVE_DEFAULT_MODEL"
# The embedded default: the small trained recognizer that ships with the project.
EMBEDDED_DEFAULT = Path(__file__).resolve().parent.parent / "models" / "default"


class ModelLoadError(Exception):
    pass


@dataclass(frozen=True)
class ModelSpec:
    source: str  # local folder or hub id
    name: str | None = None  # served name; default: the folder's or repo's last part

    @property
    def served_name(self) -> str:
        return self.name or Path(self.source.rstrip("/")).name


def parse_spec(text: str) -> ModelSpec:
    """`PATH`, `org/name` or `NAME=PATH`."""
    name, sep, source = text.partition("=")
    if not sep:
        return ModelSpec(text)
    if not name or not source:
        raise ModelLoadError(f"model {text!r}: expected NAME=PATH")
    return ModelSpec(source, name)


def default_spec() -> ModelSpec:
    source = os.environ.get(DEFAULT_MODEL_ENV) or str(EMBEDDED_DEFAULT)
    return ModelSpec(source)


def resolve(source: str) -> Path:
    """A local folder as is; otherwise a hub id fetched (or found in the local hub cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{source}: a model is a folder, not a file")
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ModelLoadError(f"{source}: no such folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise ModelLoadError(
            f"{source}: not a local folder, and the hub download failed: {e}"
        ) from None


def describe(path: Path) -> str:
    """What a folder looks like, for error messages."""
    config = path / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            return f"an unreadable config.json ({e})"
        return f"config.json with model_type={cfg.get('model_type')!r}"
    files = sorted(p.name for p in path.iterdir())[:8]
    return f"files {files}" if files else "an empty folder"


def find_family(path: Path) -> Family:
    for family in FAMILIES:
        if family.detect(path):
            return family
    known = ", ".join(f.name for f in FAMILIES) or "none"
    raise ModelLoadError(
        f"{path}: not a model this server can run (found {describe(path)}; families: {known})"
    )


def load(spec: ModelSpec, **engine_options: Any) -> Any:
    path = resolve(spec.source)
    family = find_family(path)
    try:
        return family.load(path, spec.served_name, **engine_options)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{path}: failed to load as {family.name}: {e}") from e
