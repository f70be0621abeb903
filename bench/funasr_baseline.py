"""The baseline of `rtserve bench asr --model <Paraformer / SenseVoiceSmall folder>`: funasr's
AutoModel on the same folder, audio and clips (engine/bench/funasr_asr.py writes the request).

Standalone: imports only numpy, torch and funasr (1.4.16; the reference environment, or the
GPU image with bench/funasr_wheels.sh's wheels). The request file:

    {"checkpoint": FunASR folder, "audio": signal.npy, "device": "cuda", "dtype": "bfloat16",
     "offline": {"clip_samples", "offsets": [...], "batch_size"} | null,
     "streaming": {"clip_samples", "offsets": [...], "chunk_samples"} | null}

- offline (Paraformer, SenseVoiceSmall): `AutoModel.generate` over all the clips at once
  (its batched path, `batch_size` clips per forward; SenseVoice with language "auto" and
  use_itn off), after a warm-up on two clips. Wall time, audio seconds per second, each clip's
  text (SenseVoice's with its tags: the caller splits them as it does its own).
- streaming (Paraformer-streaming): funasr's streaming `generate` (chunk_size [0, 10, 5],
  encoder look-back 4, decoder look-back 1), one call per `chunk_samples` piece of each clip with
  the stream's own cache, the last piece `is_final`. funasr serves one stream per call, so the
  streams take turns chunk by chunk, as a server holding them all would run them. Per-call
  latency percentiles, wall time, audio seconds per second, the real-time streams that rate
  allows (600 ms over the mean call), and each stream's text (its calls' texts joined).

`dtype` bfloat16 or float16 runs every generate call under torch.autocast in that dtype (the
weights stay float32): funasr's own `bf16` / `fp16` switch casts the weights but not the
features, and its Paraformer and SenseVoice then fail on mixed dtypes. Prints one JSON line
on stdout.

    .venv-ref/bin/python bench/funasr_baseline.py request.json
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MODELSCOPE_OFFLINE", "1")
# The repository root holds a package named `kernels`: transformers must never see it.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from baseline_runs import sync  # noqa: E402  (this folder)

STREAM_ARGS = {"chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 1}
SENSEVOICE_ARGS = {"language": "auto", "use_itn": False}


def load(folder: str, device: str):
    from funasr import AutoModel

    return AutoModel(
        model=folder, device=device, disable_update=True, disable_log=True, disable_pbar=True
    )


def precision(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """float32 as loaded, else autocast to `dtype` (see the module docstring)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def generate_args(am) -> dict:
    """SenseVoiceSmall needs its query choices; Paraformer takes none."""
    return SENSEVOICE_ARGS if type(am.model).__name__ == "SenseVoiceSmall" else {}


def offline(am, clips: list[np.ndarray], batch_size: int, device: str) -> dict:
    args = generate_args(am) | {"batch_size": batch_size, "disable_pbar": True}
    am.generate(input=clips[:2], **args)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    results = am.generate(input=clips, **args)
    sync(device)
    seconds = time.perf_counter() - t0
    audio = sum(c.size for c in clips) / 16000
    return {
        "concurrency": len(clips),
        "clip_seconds": clips[0].size / 16000,
        "batch_size": batch_size,
        "seconds": seconds,
        "audio_s_per_s": audio / seconds,
        "texts": [r["text"] for r in results],
    }


def streaming(am, clips: list[np.ndarray], chunk: int, device: str) -> dict:
    args = STREAM_ARGS | {"disable_pbar": True}
    warm: dict = {}
    for k in range(0, 2 * chunk, chunk):  # warm-up: one short stream
        am.generate(input=clips[0][k : k + chunk], cache=warm, is_final=k > 0, **args)
    caches: list[dict] = [{} for _ in clips]
    texts = [""] * len(clips)
    calls = []
    sync(device)
    t0 = time.perf_counter()
    n = clips[0].size
    for start in range(0, n, chunk):
        final = start + chunk >= n
        for i, clip in enumerate(clips):
            c0 = time.perf_counter()
            out = am.generate(
                input=clip[start : start + chunk], cache=caches[i], is_final=final, **args
            )
            sync(device)
            calls.append(time.perf_counter() - c0)
            texts[i] += out[0]["text"] if out else ""
    seconds = time.perf_counter() - t0
    ms = np.array(calls) * 1000
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    return {
        "streams": len(clips),
        "clip_seconds": n / 16000,
        "chunk_samples": chunk,
        "calls": len(calls),
        "call_p50_ms": p50,
        "call_p95_ms": p95,
        "call_p99_ms": p99,
        "seconds": seconds,
        "audio_s_per_s": len(clips) * n / 16000 / seconds,
        # streams one process keeps in real time, calls back to back: chunk length / mean call
        "real_time_streams": chunk / 16000 / float(np.mean(calls)),
        "texts": texts,
    }


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "funasr": importlib.metadata.version("funasr"),
    }


def main(path: str) -> None:
    request = json.loads(Path(path).read_text())
    torch.set_grad_enabled(False)
    audio = np.load(request["audio"]).astype(np.float32)
    device = request["device"]
    am = load(request["checkpoint"], device)
    result = {"versions": versions(), "device": device, "dtype": request["dtype"]}
    result["model"] = type(am.model).__name__
    with precision(device, request["dtype"]):
        if request.get("offline"):
            spec = request["offline"]
            clips = [audio[o : o + spec["clip_samples"]] for o in spec["offsets"]]
            result["offline"] = offline(am, clips, spec["batch_size"], device)
        if request.get("streaming"):
            spec = request["streaming"]
            clips = [audio[o : o + spec["clip_samples"]] for o in spec["offsets"]]
            result["streaming"] = streaming(am, clips, spec["chunk_samples"], device)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
