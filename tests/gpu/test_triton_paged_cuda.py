"""The Triton paged-attention kernels compiled for a CUDA GPU, in bf16 and fp16, against dense
attention; and `measure`, a timing helper for benchmarks (not a test).

Run with `make test-gpu` on a GPU host. triton is imported inside the functions only: the CPU
suite collects this module too, and its interpreter tests need triton's first import to happen
under TRITON_INTERPRET=1.

    python -m tests.gpu.test_triton_paged_cuda   # prints a small decode bandwidth table
"""

from __future__ import annotations

import pytest
import torch

from kernels.attention import AttentionMetadata
from tests.test_attention import dense_attention, paged_case

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def compiled():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    from kernels.triton_paged import INTERPRETED

    if INTERPRETED:
        pytest.fail("TRITON_INTERPRET=1 is set: run the gpu tests in their own process")


def attention(**kwargs):
    from kernels.triton_paged import TritonPagedAttention

    return TritonPagedAttention(**kwargs)


def on_cuda(meta: AttentionMetadata) -> AttentionMetadata:
    meta.cu_seqlens_q, meta.seqused_k = meta.cu_seqlens_q.to(DEV), meta.seqused_k.to(DEV)
    meta.block_tables, meta.slot_mapping = meta.block_tables.to(DEV), meta.slot_mapping.to(DEV)
    return meta


def check(attn, seq_lens, new_lens, *, group, d, block_size, h_kv=2, dtype=torch.bfloat16):
    """Run on the GPU in `dtype`; compare with float32 dense attention on the same rounded
    inputs, so the tolerance covers only the kernel's own rounding (P in bf16, output in bf16)."""
    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(
        seq_lens, new_lens, block_size=block_size, h=group * h_kv, h_kv=h_kv, d=d
    )
    scale = d**-0.5
    out = attn(
        q.to(DEV, dtype), k_cache.to(DEV, dtype), v_cache.to(DEV, dtype), on_cuda(meta), scale
    )
    assert out.dtype == dtype and out.device.type == "cuda"

    def r(x):
        return x.to(dtype).float()

    want = torch.cat(
        [dense_attention(r(a), r(b), r(c), scale) for a, b, c in zip(qs, ks, vs, strict=True)]
    )
    torch.testing.assert_close(out.float().cpu(), want, atol=2e-2, rtol=2e-2)


DECODE_LENS = [1, 16, 37, 128, 600, 2049]


@pytest.mark.parametrize("splits", [1, 5, None])
@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("group, d", [(1, 128), (2, 64), (4, 128), (8, 64), (8, 128)])
def test_decode_bf16(group, d, block_size, splits):
    attn = attention(num_splits=splits)
    check(attn, DECODE_LENS, [1] * len(DECODE_LENS), group=group, d=d, block_size=block_size)


@pytest.mark.parametrize(
    "seq_lens, new_lens",
    [
        ([1, 16, 37, 300, 1000], [1, 16, 37, 300, 1000]),
        ([50, 300, 1030], [10, 129, 2]),
        ([400, 9, 77, 1, 64, 2000], [1, 9, 20, 1, 1, 700]),
    ],
    ids=["prompts", "cached-prefix", "mixed"],
)
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4, 5, 8])
def test_prefill_bf16(seq_lens, new_lens, group, d, block_size):
    check(attention(), seq_lens, new_lens, group=group, d=d, block_size=block_size)


@pytest.mark.parametrize("decode", [True, False])
def test_float16(decode):
    new = [1, 1, 1] if decode else [300, 5, 1]
    check(attention(), [300, 17, 90], new, group=4, d=128, block_size=16, dtype=torch.float16)


@pytest.mark.parametrize("d", [64, 128])
def test_float32_prefill_fits_shared_memory(d):
    """float32 tiles are twice bf16's bytes: the prefill picks a shape that fits an SM."""
    check(
        attention(),
        [300, 17, 1000],
        [300, 5, 700],
        group=2,
        d=d,
        block_size=16,
        dtype=torch.float32,
    )


def test_long_context_decode_matches_sdpa():
    """Batch 8 at 4096 tokens, 32 q / 8 kv heads, against the SDPA backend in bf16."""
    from kernels.attention import backend

    q, k_cache, v_cache, meta, *_ = paged_case(
        [4096, 4000, 3000, 4096, 17, 1, 2500, 4095], [1] * 8, block_size=16, h=32, h_kv=8, d=128
    )
    args = (q.to(DEV, torch.bfloat16), k_cache.to(DEV, torch.bfloat16))
    args += (v_cache.to(DEV, torch.bfloat16), on_cuda(meta), 128**-0.5)
    got = attention()(*args).float()
    want = backend("sdpa")(*args).float()
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


def test_the_last_split_merges_without_races():
    """64 ranges a sequence, all resident at once, merged by whichever program counts last:
    each of 50 calls equals the first to the bit (the merge order is fixed) and SDPA within bf16,
    and the counters are zero after every call."""
    from kernels.attention import backend

    q, k_cache, v_cache, meta, *_ = paged_case(
        [4096, 2500, 37, 1000], [1] * 4, block_size=16, h=32, h_kv=8, d=128
    )
    args = (q.to(DEV, torch.bfloat16), k_cache.to(DEV, torch.bfloat16))
    args += (v_cache.to(DEV, torch.bfloat16), on_cuda(meta), 128**-0.5)
    attn = attention(num_splits=64, min_split_tokens=16)
    first = attn(*args)
    (counts,) = attn._counts.values()
    for _ in range(50):
        assert torch.equal(attn(*args), first)
        assert counts.count_nonzero().item() == 0
    torch.testing.assert_close(first.float(), backend("sdpa")(*args).float(), atol=1e-2, rtol=1e-2)


def test_prefill_matches_torch_varlen():
    from kernels.attention import backend

    q, k_cache, v_cache, meta, *_ = paged_case(
        [2048, 700, 1500], [2048, 300, 1], block_size=16, h=32, h_kv=8, d=128
    )
    args = (q.to(DEV, torch.bfloat16), k_cache.to(DEV, torch.bfloat16))
    args += (v_cache.to(DEV, torch.bfloat16), on_cuda(meta), 128**-0.5)
    got = attention()(*args).float()
    want = backend("torch-varlen", "cuda")(*args).float()
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


def decode_batch(
    batch: int,
    context: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """A decode step: every sequence `context` tokens long (its new token included), its blocks
    scattered over the cache by a random permutation."""
    n = -(-context // block_size)
    k_cache = torch.randn(batch * n, block_size, kv_heads, head_dim, device=DEV, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(batch * n, device=DEV).view(batch, n).int()
    pos = torch.full((batch,), context - 1, device=DEV)
    slots = tables[torch.arange(batch, device=DEV), pos // block_size].long() * block_size
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(batch + 1, device=DEV, dtype=torch.int32),
        seqused_k=torch.full((batch,), context, device=DEV, dtype=torch.int32),
        block_tables=tables,
        slot_mapping=slots + pos % block_size,
        max_seqlen_q=1,
        max_seqlen_k=context,
    )
    q = torch.randn(batch, heads, head_dim, device=DEV, dtype=dtype)
    return q, k_cache, v_cache, meta


def measure(
    batch: int,
    context: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    *,
    dtype: torch.dtype = torch.bfloat16,
    num_splits: int | None = None,
    cuda_graph: bool = False,
) -> tuple[float, int]:
    """Median seconds of one decode call of the triton-paged backend, and the bytes of K and V it
    must read (bytes / seconds is its HBM bandwidth; the H200 copies at about 4.3 TB/s).

    `cuda_graph` replays a captured call, which leaves out the host's launch overhead (what a
    small batch would see inside the engine's graphs)."""
    import triton.testing

    q, k_cache, v_cache, meta = decode_batch(
        batch, context, heads, kv_heads, head_dim, block_size, dtype
    )
    attn = attention(num_splits=num_splits)

    def step() -> torch.Tensor:
        return attn(q, k_cache, v_cache, meta, head_dim**-0.5)

    step()  # compile
    torch.cuda.synchronize()
    if cuda_graph:
        ms = triton.testing.do_bench_cudagraph(step, rep=100, return_mode="median")
    else:
        ms = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
    kv_bytes = 2 * batch * context * kv_heads * head_dim * k_cache.element_size()
    return ms / 1e3, kv_bytes


if __name__ == "__main__":
    shapes = [  # (batch, context, heads, kv_heads, head_dim, block_size)
        (64, 4096, 32, 8, 128, 16),
        (64, 4096, 32, 8, 128, 128),
        (256, 1024, 32, 8, 128, 16),
        (8, 8192, 32, 8, 128, 16),
        (1, 32768, 32, 8, 128, 16),
        (32, 2048, 16, 8, 128, 16),
        (64, 4096, 16, 8, 64, 32),
    ]
    print("batch context heads kv_heads head_dim block    us    TB/s")
    for shape in shapes:
        seconds, nbytes = measure(*shape)
        print(*shape, f"{seconds * 1e6:7.1f} {nbytes / seconds / 1e12:6.2f}")
