"""The baseline of `rtserve bench asr --model <Fun-ASR-Nano folder>`: funasr's FunASRNano.

Standalone: imports only torch, numpy and funasr (1.4.16, in the reference environment:
`--baseline-python`, default .venv-ref/bin/python). Reads the request file engine/bench/asr.py
writes for bench/qwen_asr_baseline.py (same fields):

    {"checkpoint": FunASR folder, "audio": signal.npy, "device": "cuda", "dtype": "bfloat16",
     "repeats": 3,
     "steps": [{"at_s", "upto", "prefix", "new_tokens"}, ...],
     "offline": {"concurrency", "clip_samples", "offsets": [...], "new_tokens"} | null}

- steps: the naive re-feed loop's step on funasr: FunASRNano.inference_prepare on all the
  segment's audio so far with `prev_text` = the rollback prefix (WavFrontend features, the whole
  SenseVoice encoder and adaptor, the ChatML prompt), then the LLM's generate with a full prefill,
  as FunASRNano.inference_llm runs it (autocast in the LLM dtype); each decodes exactly
  `new_tokens` tokens (min_new_tokens), the engine's count. Step time: the median of `repeats`
  runs after a warm-up; the first step's ids are returned for the parity check.
- offline: FunASRNano.inference on all the clips at once (its batched path,
  `_inference_llm_batch`: per-clip prepare, one left-padded generate), `new_tokens` per clip.

Prints one JSON line on stdout (the fields of bench/qwen_asr_baseline.py's).

    .venv-ref/bin/python bench/fun_asr_nano_baseline.py request.json
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MODELSCOPE_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The repository root holds a package named `kernels`: transformers must never see it.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from baseline_runs import run_offline, run_steps, sync  # noqa: E402  (this folder)

LLM_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class Baseline:
    def __init__(self, folder: str, device: str, dtype: str) -> None:
        import funasr.models.fun_asr_nano.model  # noqa: F401  (registers FunASRNano)
        from funasr import AutoModel

        self.am = AutoModel(
            model=folder, device=device, disable_update=True, disable_log=True, disable_pbar=True
        )
        self.model = self.am.model.eval()
        self.tokenizer = self.am.kwargs["tokenizer"]
        self.frontend = self.am.kwargs["frontend"]
        self.device = device
        self.llm_dtype = LLM_DTYPES[dtype]
        self.dt = getattr(torch, dtype)
        self.model.llm.to(self.dt)  # as inference_llm does
        skip = ("tokenizer", "frontend", "prev_text", "llm_dtype", "device")
        self.kwargs = {k: v for k, v in self.am.kwargs.items() if k not in skip}
        self.kwargs |= {"llm_dtype": self.llm_dtype, "device": device}
        self.prompt = self.model.get_prompt([], None, True)
        llm = self.model.llm.config
        self.pad_id = llm.pad_token_id if llm.pad_token_id is not None else llm.eos_token_id

    @torch.inference_mode()
    def step(self, audio: np.ndarray, prefix: str, new_tokens: int) -> dict:
        """One naive streaming step over `audio` (the whole segment so far)."""
        sync(self.device)
        t0 = time.perf_counter()
        data = self.model.generate_chatml(self.prompt, torch.from_numpy(audio))
        embeds, _, batch, source_ids, _ = self.model.inference_prepare(
            [data], None, ["k"], self.tokenizer, self.frontend, prev_text=prefix, **self.kwargs
        )
        sync(self.device)
        t1 = time.perf_counter()
        with torch.autocast(
            device_type=self.device.split(":")[0],
            enabled=self.llm_dtype != "fp32",
            dtype=self.dt,
        ):
            out = self.model.llm.generate(
                inputs_embeds=embeds.to(self.dt),
                attention_mask=batch.get("attention_mask"),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=self.pad_id,
                do_sample=False,
            )
        sync(self.device)
        t2 = time.perf_counter()
        ids = out[0].tolist()
        return {
            "ids": ids,
            "step_ms": 1000 * (t2 - t0),
            "features_ms": 1000 * (t1 - t0),  # front end, encoder, adaptor and prompt
            "prompt_tokens": int(source_ids[0].numel()),
            "audio_tokens": int(batch["fake_token_len"][0, 0]),
            "generated_tokens": len(ids),
        }

    @torch.inference_mode()
    def offline(self, clips: list[np.ndarray], new_tokens: int) -> dict:
        sync(self.device)
        t0 = time.perf_counter()
        results, _ = self.model.inference(
            [torch.from_numpy(c) for c in clips],
            key=[f"clip{i}" for i in range(len(clips))],
            tokenizer=self.tokenizer,
            frontend=self.frontend,
            max_length=new_tokens,
            llm_kwargs={"min_new_tokens": new_tokens, "do_sample": False},
            **self.kwargs,
        )
        sync(self.device)
        assert len(results) == len(clips)
        return {"seconds": time.perf_counter() - t0, "generated_tokens": new_tokens}


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "funasr": importlib.metadata.version("funasr"),
        "transformers": importlib.metadata.version("transformers"),
    }


def main(path: str) -> None:
    request = json.loads(Path(path).read_text())
    torch.set_grad_enabled(False)
    audio = np.load(request["audio"])
    base = Baseline(request["checkpoint"], request["device"], request["dtype"])
    result = {"versions": versions(), "device": request["device"], "dtype": request["dtype"]}
    result["steps"] = run_steps(base, audio, request["steps"], request.get("repeats", 1))
    if request.get("offline"):
        result["offline"] = run_offline(base, audio, request["offline"])
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
