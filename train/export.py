"""Writes a trained model in the released Qwen3-ASR layout, the folder `rtserve serve` loads.

    .venv/bin/python -m train.export RUN_DIR models/default

The folder gets `config.json` (with `thinker_config`), `generation_config.json`,
`model.safetensors` (`thinker.audio_tower.*`, `thinker.model.*`; embeddings tied, so no
`thinker.lm_head.weight`) in bf16, and the tokenizer files. The production loader
(engine/loader.py) picks the family from config.json like any released checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.models.qwen3_asr import PREFIXES, Qwen3ASR
from train.tokenizer import TOKENIZER_FILES

MAX_BYTES = 16 * 2**20  # the limit for the committed default model


def released_weights(model: Qwen3ASR, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's parameters under their released checkpoint names (tied lm_head left out)."""
    ours_to_theirs = [(ours, theirs) for theirs, ours in PREFIXES["released"]]
    out = {}
    for name, p in model.state_dict().items():
        if name == "decoder.lm_head.weight" and model.config.text.tie_word_embeddings:
            continue
        prefix, theirs = next((o, t) for o, t in ours_to_theirs if name.startswith(o))
        out[theirs + name[len(prefix) :]] = p.detach().to("cpu", dtype).contiguous()
    return out


def export(
    model: Qwen3ASR,
    config: dict,
    tokenizer_dir: Path,
    out: Path,
    dtype: torch.dtype = torch.bfloat16,
) -> int:
    """Writes the folder; returns the size of model.safetensors in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps({**config, "dtype": str(dtype).removeprefix("torch.")}, indent=2) + "\n"
    )
    (out / "generation_config.json").write_text(json.dumps({"do_sample": False}, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out / name)
    path = out / "model.safetensors"
    save_file(released_weights(model, dtype), str(path), metadata={"format": "pt"})
    return path.stat().st_size


def main() -> None:
    from train.train_asr import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the training run's folder (its checkpoint)")
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    model, config, state = load_checkpoint(a.run, "cpu")
    size = export(model, config, a.run / "tokenizer", a.out)
    print(f"{a.out}: model.safetensors {size / 2**20:.2f} MiB after {state['step']} steps")
    if size > MAX_BYTES:
        raise SystemExit(f"larger than {MAX_BYTES // 2**20} MiB")


if __name__ == "__main__":
    main()
