"""Where a decode step's time goes: wall time per step, then torch.profiler's top operators.

    python bench/profile_decode.py --shape qwen3-0.6b --batch 1 [--no-cuda-graphs]

Random weights in a `rtserve bench chat` shape; B requests of 128 prompt tokens decode
`--steps` tokens each. Prints the median step time with and without CUDA graphs, and the
profiler's operator tables (host and device time) for the configuration asked for.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from engine.bench.chat import ChatBench, _engine, _random_weights
from engine.models.qwen3 import Qwen3Config
from engine.sampling import SamplingParams


def step_times(engine, batch: int, steps: int, vocab: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, vocab, (batch, 128), generator=g).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True)
    reqs = [engine.add(p, params) for p in prompts]
    while not all(r.output_ids for r in reqs):
        engine.step()
    times = []
    while engine.has_work():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    a = p.parse_args()
    b = ChatBench(shape=a.shape, batch_sizes=(a.batch,), ttft_lens=(128,), baseline=False)
    b.cuda_graphs = a.cuda_graphs
    cfg = Qwen3Config.from_dict(b.config_dict())
    engine = _engine(cfg, _random_weights(cfg, torch.bfloat16, "cuda"), torch.bfloat16, b, 4096)
    runner = engine.runner
    captured = runner.graphs  # None with --no-cuda-graphs
    modes = [("graphs", captured), ("eager", None)] if captured is not None else [("eager", None)]
    for label, graphs in modes:
        runner.graphs = graphs
        times = step_times(engine, a.batch, a.steps, cfg.vocab_size)
        ms = 1000 * statistics.median(times)
        print(f"{a.shape} B={a.batch} {label}: median step {ms:.2f} ms")
    runner.graphs = captured
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step_times(engine, a.batch, 8, cfg.vocab_size)
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=30)
    print(table)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
