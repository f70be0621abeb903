"""The baseline of `rtserve bench asr`: Qwen3-ASR on qwen-asr's transformers backend.

Standalone: imports only torch, numpy, transformers and qwen_asr (needs transformers 4.57.6,
qwen-asr's pin, so it runs in its own interpreter: `--baseline-python`). Reads one request file
written by engine/bench/asr.py:

    {"checkpoint": folder, "audio": signal.npy, "device": "cuda", "dtype": "bfloat16",
     "repeats": 3,
     "steps": [{"at_s", "upto", "prefix", "new_tokens"}, ...],
     "offline": {"concurrency", "clip_samples", "offsets": [...], "new_tokens"} | null}

- steps: qwen-asr's streaming step (`streaming_transcribe`: the chat prompt plus the rollback
  prefix, and all the segment's audio so far) run naively on the transformers backend: the
  processor's features, the whole audio encoder, a full prefill, the decode; nothing cached. Each
  decodes exactly `new_tokens` tokens (no EOS stop), the engine's count. The first step's ids
  are returned for the parity check. Step time: the median of `repeats` runs, after a warm-up.
- offline: `transcribe`'s transformers path (`_infer_asr_transformers`) with the whole batch in
  one padded `generate`, `new_tokens` tokens per clip.

Prints one JSON line on stdout: {"versions", "steps": [{"at_s", "ids", "step_ms",
"features_ms", "prompt_tokens", "audio_tokens", "generated_tokens"}], "offline": {...}}.

    .venv-ref/bin/python bench/qwen_asr_baseline.py request.json
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The repository root holds a package named `kernels`: transformers must never see it.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from baseline_runs import run_offline, run_steps, sync  # noqa: E402  (this folder)
from transformers.utils.import_utils import is_kernels_available  # noqa: E402


def import_qwen_asr() -> type:
    """qwen_asr's Qwen3ASRModel. Its import pulls in `nagisa` (the forced aligner's) and, to read
    and resample files, `librosa` and `soundfile`; the baseline hands the processor 16 kHz
    arrays, so where they are missing a bare module stands in while qwen_asr imports."""
    stubs = ["nagisa"] + [
        n for n in ("librosa", "soundfile") if importlib.util.find_spec(n) is None
    ]
    stubs = [n for n in stubs if n not in sys.modules]
    sys.modules.update({n: types.ModuleType(n) for n in stubs})
    try:
        from qwen_asr import Qwen3ASRModel
    finally:
        for n in stubs:
            sys.modules.pop(n, None)
    return Qwen3ASRModel


class Baseline:
    def __init__(self, checkpoint: str, device: str, dtype: torch.dtype) -> None:
        self.asr = import_qwen_asr().from_pretrained(
            checkpoint, dtype=dtype, attn_implementation="sdpa"
        )
        self.model = self.asr.model.to(device).eval()
        self.processor = self.asr.processor
        self.device, self.dtype = device, dtype
        self.prompt = self.asr._build_text_prompt(context="", force_language=None)
        self.pad_id = self.processor.tokenizer.pad_token_id

    def inputs(self, texts: list[str], wavs: list[np.ndarray]):
        """The processor call of qwen-asr's transformers backend."""
        inputs = self.processor(text=texts, audio=wavs, return_tensors="pt", padding=True)
        return inputs.to(self.device).to(self.dtype)

    @torch.inference_mode()
    def generate(self, inputs, new_tokens: int) -> torch.Tensor:
        """Exactly `new_tokens` greedy tokens per row: the new ids (B, new_tokens)."""
        out = self.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            eos_token_id=None,  # no EOS stop: the engine's ignore_eos
            pad_token_id=self.pad_id,
            do_sample=False,
        )
        return out.sequences[:, inputs["input_ids"].shape[1] :]

    def step(self, audio: np.ndarray, prefix: str, new_tokens: int) -> dict:
        """One naive streaming step over `audio` (the whole segment so far)."""
        sync(self.device)
        t0 = time.perf_counter()
        inputs = self.inputs([self.prompt + prefix], [audio])
        t1 = time.perf_counter()
        ids = self.generate(inputs, new_tokens)[0].tolist()
        sync(self.device)
        t2 = time.perf_counter()
        prompt = inputs["input_ids"][0]
        audio_id = self.model.config.thinker_config.audio_token_id
        return {
            "ids": ids,
            "step_ms": 1000 * (t2 - t0),
            "features_ms": 1000 * (t1 - t0),
            "prompt_tokens": int(prompt.numel()),
            "audio_tokens": int((prompt == audio_id).sum()),
            "generated_tokens": len(ids),
        }

    def offline(self, clips: list[np.ndarray], new_tokens: int) -> dict:
        sync(self.device)
        t0 = time.perf_counter()
        inputs = self.inputs([self.prompt] * len(clips), clips)
        new = self.generate(inputs, new_tokens)
        self.processor.batch_decode(
            new, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        sync(self.device)
        return {"seconds": time.perf_counter() - t0, "generated_tokens": int(new.shape[1])}


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "qwen-asr": importlib.metadata.version("qwen-asr"),
    }


def main(path: str) -> None:
    if is_kernels_available():
        sys.exit("transformers sees a `kernels` package: keep the repository off PYTHONPATH")
    request = json.loads(Path(path).read_text())
    torch.set_grad_enabled(False)
    audio = np.load(request["audio"])
    base = Baseline(request["checkpoint"], request["device"], getattr(torch, request["dtype"]))
    result = {"versions": versions(), "device": request["device"], "dtype": request["dtype"]}
    result["steps"] = run_steps(base, audio, request["steps"], request.get("repeats", 1))
    if request.get("offline"):
        result["offline"] = run_offline(base, audio, request["offline"])
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
