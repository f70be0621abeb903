"""Try tile shapes of the Triton paged prefill kernel against FlashAttention-4 on one GPU.

    python bench/tune_prefill.py

Causal prefill of B sequences of S tokens over the paged cache (bf16, 32 q / 8 kv heads, head_dim
128, pages of 16); TFLOP/s of each (block_m, block_n, stages) against FA4 in the same run. The
defaults of `TritonPagedAttention` come from here.
"""

from __future__ import annotations

import itertools

import torch

from engine.bench.kernels import KernelsBench, _time_ms, paged
from kernels.attention import backend
from kernels.fa4 import fa4_unavailable
from kernels.triton_paged import TritonPagedAttention


def sweep(b: KernelsBench, batch: int, length: int, g: torch.Generator) -> None:
    q, k, v, meta = paged(b, [length] * batch, [length] * batch, g)
    flops = 4 * batch * length * length / 2 * b.heads * b.head_dim
    scale = b.head_dim**-0.5

    def tflops(attn) -> float:
        return flops / _time_ms(lambda: attn(q, k, v, meta, scale), 10, graph=False) / 1e9

    if fa4_unavailable("cuda") is None:
        print(f"B={batch} S={length} fa4: {tflops(backend('fa4', 'cuda')):.0f} TFLOP/s")
    for m, n, stages in itertools.product((64, 128, 256), (32, 64, 128), (2, 3, 4)):
        attn = TritonPagedAttention(prefill_block_m=m, prefill_block_n=n, prefill_stages=stages)
        try:
            print(f"B={batch} S={length} m={m} n={n} stages={stages}: {tflops(attn):.0f}")
        except Exception as e:  # noqa: BLE001 - out of shared memory or registers
            print(f"B={batch} S={length} m={m} n={n} stages={stages}: {type(e).__name__}")


def main() -> None:
    b = KernelsBench()
    g = torch.Generator("cuda").manual_seed(0)
    for batch, length in ((8, 4096), (2, 16384)):
        sweep(b, batch, length, g)


if __name__ == "__main__":
    main()
