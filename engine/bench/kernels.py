"""`rtserve bench kernels`: attention kernels against each other and the GPU's measured limits.

- decode: a batch of B sequences of `ctx` cached tokens, one query each, over the paged cache
  (shuffled blocks). Reported as TB/s of KV read (every K and V byte once), against the device
  copy bandwidth measured in the same run (bytes read + written by a large copy).
- prefill: B causal prompts of S tokens written to the paged cache. Reported as TFLOP/s
  (4 * S^2 / 2 * H * D per sequence: QK^T and PV, half the matrix under the causal mask),
  against a large bf16 matmul measured in the same run.

Backends: ours (triton-paged), FlashAttention-4 when importable (fa4; for prefill also
fa4-fresh, its path for whole prompts: the new K/V gathered from their slots, then FA4's dense
kernel), torch's varlen FlashAttention-2 over the gathered cache (torch-varlen), and SDPA on
contiguous dense K/V (sdpa-dense: what attention costs with no paging at all). Timings: the
median of `repeats` runs after a warm-up, by CUDA events; decode calls are replayed from CUDA
graphs (as the engine runs them; torch-varlen, which syncs with the host, runs eagerly).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.bench import report
from kernels.attention import AttentionMetadata, backend

DECODE_CASES = ((1, 8192), (8, 8192), (64, 4096), (256, 1024))  # (batch, context)
PREFILL_CASES = ((8, 4096), (2, 16384), (16, 2048))  # (batch, prompt length)
CALLS_PER_GRAPH = 10


@dataclass
class KernelsBench:
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16
    decode_cases: tuple[tuple[int, int], ...] = DECODE_CASES
    prefill_cases: tuple[tuple[int, int], ...] = PREFILL_CASES
    repeats: int = 20
    device: str = "cuda"
    seed: int = 0


def _time_ms(fn, repeats: int, graph: bool = True) -> float:
    """Median milliseconds of one call. With `graph`, `CALLS_PER_GRAPH` calls are captured in a
    CUDA graph and timed by replays, as decode runs in the engine: launch gaps excluded."""
    fn()
    torch.cuda.synchronize()
    calls = CALLS_PER_GRAPH if graph else 1
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
        fn = g.replay
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    """TB/s of a 2 GiB device-to-device copy (bytes read + written)."""
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), repeats, graph=False)
    return 2 * src.numel() * src.element_size() / ms / 1e9


def matmul_tflops(repeats: int) -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = _time_ms(lambda: a @ b, repeats, graph=False)
    return 2 * 8192**3 / ms / 1e9


def paged(b: KernelsBench, seqs: list[int], new: list[int], g: torch.Generator):
    """q, a paged cache filled with random K/V on shuffled blocks, and the batch's metadata."""
    bs, dev = b.block_size, b.device
    per_seq = [-(-n // bs) for n in seqs]
    n_blocks = sum(per_seq)
    shape = (n_blocks, bs, b.kv_heads, b.head_dim)
    k = torch.randn(shape, generator=g, device=dev, dtype=torch.bfloat16)
    v = torch.randn(shape, generator=g, device=dev, dtype=torch.bfloat16)
    perm = torch.randperm(n_blocks, generator=g, device=dev).to(torch.int32)
    width = max(per_seq)
    tables = torch.zeros(len(seqs), width, dtype=torch.int32, device=dev)
    at = 0
    for i, n in enumerate(per_seq):
        tables[i, :n] = perm[at : at + n]
        at += n
    cu = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    # the new tokens are the last of each sequence: their slots, as the engine writes them
    pos = torch.cat([torch.arange(s - n, s, device=dev) for s, n in zip(seqs, new, strict=True)])
    owner = torch.arange(len(seqs), device=dev)
    seq = torch.repeat_interleave(owner, torch.tensor(new, device=dev))
    slots = tables[seq, pos // bs].long() * bs + pos % bs
    meta = AttentionMetadata(
        cu_seqlens_q=cu,
        seqused_k=torch.tensor(seqs, dtype=torch.int32, device=dev),
        block_tables=tables,
        slot_mapping=slots,
        max_seqlen_q=max(new),
        max_seqlen_k=max(seqs),
    )
    q = torch.randn(sum(new), b.heads, b.head_dim, generator=g, device=dev, dtype=torch.bfloat16)
    return q, k, v, meta


def _backends() -> dict[str, Any]:
    from kernels.fa4 import fa4_unavailable

    names = ["triton-paged", "torch-varlen"] + ([] if fa4_unavailable("cuda") else ["fa4"])
    return {name: backend(name, "cuda") for name in names}


def _dense(b: KernelsBench, batch: int, q_len: int, kv_len: int, g: torch.Generator):
    """Contiguous (B, H, S, D) q and (B, H_kv, S, D) k, v."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=b.device, dtype=torch.bfloat16)

    kv = (batch, b.kv_heads, kv_len, b.head_dim)
    return randn(batch, b.heads, q_len, b.head_dim), randn(*kv), randn(*kv)


def _sdpa(q, k, v, scale: float, causal: bool) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)


def run(b: KernelsBench) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise SystemExit("rtserve bench kernels needs a CUDA device")
    g = torch.Generator(b.device).manual_seed(b.seed)
    copy_tb_s, mm_tflops = copy_bandwidth(b.repeats), matmul_tflops(b.repeats)
    backends = _backends()
    rows: list[dict[str, Any]] = []
    for batch, ctx in b.decode_cases:
        rows += _decode_case(b, backends, batch, ctx, g, copy_tb_s)
    for batch, length in b.prefill_cases:
        rows += _prefill_case(b, backends, batch, length, g, mm_tflops)
        torch.cuda.empty_cache()
    return {
        "workload": "kernels",
        "hardware": report.hardware(),
        "torch": torch.__version__,
        "copy_tb_s": copy_tb_s,
        "matmul_tflops": mm_tflops,
        "settings": asdict(b),
        "rows": rows,
    }


def _decode_case(b: KernelsBench, backends, batch: int, ctx: int, g, copy_tb_s: float):
    scale = b.head_dim**-0.5
    q, k, v, meta = paged(b, [ctx] * batch, [1] * batch, g)
    kv_bytes = 2 * batch * ctx * b.kv_heads * b.head_dim * 2
    rows = []
    for name, attn in backends.items():
        call = lambda attn=attn: attn(q, k, v, meta, scale)  # noqa: E731
        ms = _time_ms(call, b.repeats, graph=attn.graph_safe)
        rows.append(_decode_row(name, batch, ctx, ms, kv_bytes, copy_tb_s))
    dq, dk, dv = _dense(b, batch, 1, ctx, g)
    ms = _time_ms(lambda: _sdpa(dq, dk, dv, scale, causal=False), b.repeats)
    return [*rows, _decode_row("sdpa-dense", batch, ctx, ms, kv_bytes, copy_tb_s)]


def _prefill_case(b: KernelsBench, backends, batch: int, length: int, g, mm_tflops: float):
    scale = b.head_dim**-0.5
    q, k, v, meta = paged(b, [length] * batch, [length] * batch, g)
    flops = 4 * batch * length * length / 2 * b.heads * b.head_dim
    rows = []
    for name, attn in backends.items():
        call = lambda attn=attn: attn(q, k, v, meta, scale)  # noqa: E731
        ms = _time_ms(call, b.repeats, graph=False)  # long kernels: launches do not matter
        rows.append(_prefill_row(name, batch, length, ms, flops, mm_tflops))
    if "fa4" in backends:  # whole prompts as the engine sends them: K/V gathered, dense path
        fresh = replace(meta, fresh=True)
        ms = _time_ms(lambda: backends["fa4"](q, k, v, fresh, scale), b.repeats, graph=False)
        rows.append(_prefill_row("fa4-fresh", batch, length, ms, flops, mm_tflops))
    dq, dk, dv = _dense(b, batch, length, length, g)
    ms = _time_ms(lambda: _sdpa(dq, dk, dv, scale, causal=True), b.repeats, graph=False)
    return [*rows, _prefill_row("sdpa-dense", batch, length, ms, flops, mm_tflops)]


def _decode_row(name, batch, ctx, ms, kv_bytes, copy_tb_s) -> dict[str, Any]:
    tb_s = kv_bytes / ms / 1e9
    return {
        "kernel": name,
        "workload": f"decode B={batch} ctx={ctx}",
        "us": 1000 * ms,
        "tb_s": tb_s,
        "of_copy": tb_s / copy_tb_s,
    }


def _prefill_row(name, batch, length, ms, flops, mm_tflops) -> dict[str, Any]:
    tflops = flops / ms / 1e9
    return {
        "kernel": name,
        "workload": f"prefill B={batch} S={length}",
        "us": 1000 * ms,
        "tflops": tflops,
        "of_matmul": tflops / mm_tflops,
    }


def summarize(result: dict[str, Any], out: Path, name: str) -> str:
    rows = result["rows"]
    by = {(r["kernel"], r["workload"]): r for r in rows}
    for r in rows:
        fa4 = by.get(("fa4", r["workload"]))
        if r["kernel"] == "triton-paged" and fa4 is not None:
            r["vs_fa4"] = fa4["us"] / r["us"]
    path = report.write(out, name, result)
    plotted = plot(result, path.with_suffix(""))
    head = (
        f"{result['hardware']}: copy {result['copy_tb_s']:.2f} TB/s, "
        f"bf16 matmul {result['matmul_tflops']:.0f} TFLOP/s (measured in this run)\n"
    )
    columns = ["kernel", "workload", "us", "tb_s", "of_copy", "tflops", "of_matmul", "vs_fa4"]
    plots = "".join(f"\nplot: {p}" for p in plotted)
    return head + report.table(rows, columns) + f"\n\nJSON: {path}" + plots


def plot(result: dict[str, Any], stem: Path) -> list[Path]:
    """Bar charts of decode TB/s and prefill TFLOP/s per kernel and case, with the measured
    ceiling in each title: STEM-decode.png and STEM-prefill.png (none without matplotlib)."""
    made = []
    for phase, key, unit, ceiling in (
        ("decode", "tb_s", "TB/s of KV read", f"copy {result['copy_tb_s']:.2f} TB/s"),
        ("prefill", "tflops", "TFLOP/s", f"bf16 matmul {result['matmul_tflops']:.0f} TFLOP/s"),
    ):
        rows = [r for r in result["rows"] if r["workload"].startswith(phase)]
        groups = list(dict.fromkeys(r["workload"].removeprefix(f"{phase} ") for r in rows))
        kernels = list(dict.fromkeys(r["kernel"] for r in rows))
        by = {(r["kernel"], r["workload"].removeprefix(f"{phase} ")): r[key] for r in rows}
        series = {k: [by.get((k, g), 0.0) for g in groups] for k in kernels}
        path = stem.parent / f"{stem.name}-{phase}.png"
        title = f"{phase} ({result['hardware']}; measured ceiling: {ceiling})"
        if rows and report.plot_bars(path, title, groups, series, unit):
            made.append(path)
    return made
