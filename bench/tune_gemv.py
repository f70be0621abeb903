"""Try tile shapes of the skinny linear kernel (kernels/linear_triton.py) against cuBLAS.

    python bench/tune_gemv.py [--rows 1 4 16] [--quick]

y = x W^T for the projections of a Qwen3-8B layer and its lm_head (bf16), at a few rows. Each
timing is a CUDA graph of calls on rotating copies of W (more bytes than the L2 holds), so every
call reads its weight from HBM, as a decode step does; cuBLAS's time includes its split-K
reduction kernel where it has one. GB/s is weight bytes over time. The defaults of
`skinny_linear_triton` come from here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.linear_triton import skinny_linear_triton

SHAPES = {  # name: (K, N) of Qwen3-8B
    "qkv": (4096, 6144),
    "o": (4096, 4096),
    "gate_up": (4096, 24576),
    "down": (12288, 4096),
    "lm_head": (4096, 151936),
}
L2_BYTES = 60 << 20


def time_us(fn, copies: int, repeats: int = 20) -> float:
    """Median microseconds of one call, from graph replays of `copies` calls (one per copy)."""
    fn(0)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(copies):
            fn(i)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / copies)
    return statistics.median(times)


def configs(quick: bool):
    if quick:
        return [(16, 512, 4, 4), (32, 512, 4, 4), (16, 256, 4, 6), (16, 1024, 8, 3)]
    return list(itertools.product((16, 32, 64), (256, 512, 1024), (4, 8), (3, 4, 6)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--quick", action="store_true", help="four configurations, not 54")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for name, (k, n) in SHAPES.items():
        nbytes = 2 * k * n
        copies = max(2, -(-2 * L2_BYTES // nbytes))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        for m in a.rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            want = F.linear(x, ws[0])
            base = time_us(lambda i, x=x, ws=ws: F.linear(x, ws[i]), copies)
            row = {"shape": name, "K": k, "N": n, "rows": m, "cublas_us": base, "tried": []}
            for bn, bk, warps, stages in configs(a.quick):
                cfg = dict(block_n=bn, block_k=bk, num_warps=warps, num_stages=stages)
                try:
                    got = skinny_linear_triton(x, ws[0], **cfg)
                    err = (got.float() - want.float()).abs().max().item()
                    us = time_us(
                        lambda i, x=x, ws=ws, cfg=cfg: skinny_linear_triton(x, ws[i], **cfg), copies
                    )
                except Exception as e:  # noqa: BLE001 - out of shared memory or registers
                    print(f"{name} M={m} {cfg}: {type(e).__name__}")
                    continue
                row["tried"].append({**cfg, "us": us, "max_abs_err": err})
            best = min(row["tried"], key=lambda t: t["us"])
            row["best"] = best
            print(
                f"{name:8s} M={m:2d} cublas {base:7.1f} us ({nbytes / base / 1e3:5.0f} GB/s)  "
                f"best {best['us']:7.1f} us ({nbytes / best['us'] / 1e3:5.0f} GB/s) "
                f"{ {k_: best[k_] for k_ in ('block_n', 'block_k', 'num_warps', 'num_stages')} } "
                f"err {best['max_abs_err']:.3g}",
                flush=True,
            )
            results.append(row)
    # the configuration with the least total time over every shape at each row count (among
    # those that ran on every shape)
    for m in a.rows:
        rows = [r for r in results if r["rows"] == m]
        totals: dict[tuple, list[float]] = {}
        for r in rows:
            for t in r["tried"]:
                key = (t["block_n"], t["block_k"], t["num_warps"], t["num_stages"])
                totals.setdefault(key, []).append(t["us"])
        complete = {c: sum(us) for c, us in totals.items() if len(us) == len(rows)}
        cfg, us = min(complete.items(), key=lambda kv: kv[1])
        print(
            f"M={m}: best overall {cfg}: {us:.1f} us for the five; cuBLAS "
            f"{sum(r['cublas_us'] for r in rows):.1f} us"
        )
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
