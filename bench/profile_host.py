"""The engine's host time per decode step, outside the model's forward: scheduling, preparing
the step's inputs, sampling, and turning tokens into outputs (and text). On a GPU the device
waits for this part of every step, so it bounds decode speed at large batches.

    python bench/profile_host.py --batch 32 128 256

A tiny random-weight Qwen3 (engine/bench/chat.py's `qwen3-tiny`, its vocabulary the embedded
model's tokenizer) decodes B requests greedily; each step's time minus its forward is the host
time. Runs with incremental detokenization (chat requests) and without (`detokenize=False`, as
the speech workers decode: text once per request). Prints the median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.bench.chat import COMMON, SHAPES
from engine.config import EngineConfig
from engine.engine import Engine
from engine.loader import EMBEDDED_DEFAULT
from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer
from kernels.attention import backend


def build(batch: int, device: str) -> Engine:
    tokenizer = Tokenizer.from_folder(EMBEDDED_DEFAULT)
    cfg = Qwen3Config.from_dict(
        {**COMMON, **SHAPES["qwen3-tiny"], "vocab_size": tokenizer.vocab_size}
    )
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg, backend(None, device)).eval()
    config = EngineConfig(
        device=device,
        dtype=torch.float32,
        num_blocks=batch * 40,
        max_num_seqs=batch,
        enable_prefix_caching=False,
        cuda_graphs=False,
    )
    return Engine(model, tokenizer, config)


def host_ms(batch: int, detokenize: bool, device: str, steps: int, repeats: int) -> float:
    """Median over `repeats` of the mean host time of `steps` decode steps."""
    eng = build(batch, device)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, eng.model.config.vocab_size, (batch, 64), generator=g).tolist()
    max_tokens = 2 + steps * (repeats + 1)
    params = SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=detokenize
    )
    for p in prompts:
        eng.add(p, params)
    while any(not r.output_ids for r in eng.requests.values()):  # the prompts
        eng.step()
    forward, spent = eng.runner.forward, []

    def timed(x):
        t0 = time.perf_counter()
        hidden = forward(x)
        spent.append(time.perf_counter() - t0)
        return hidden

    eng.runner.forward = timed
    for _ in range(steps):  # warm-up
        eng.step()
    runs = []
    for _ in range(repeats):
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            eng.step()
        runs.append((time.perf_counter() - t0 - sum(spent)) / steps * 1000)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'batch':>6} {'detokenize':>12} {'no detokenize':>14}  (host ms per decode step)")
    for b in a.batch:
        with_text = host_ms(b, True, a.device, a.steps, a.repeats)
        ids_only = host_ms(b, False, a.device, a.steps, a.repeats)
        print(f"{b:>6} {with_text:>12.2f} {ids_only:>14.2f}")


if __name__ == "__main__":
    main()
