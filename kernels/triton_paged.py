"""Paged attention in Triton: split-KV decode (flash-decoding) and varlen / chunked prefill.

The cache is (num_blocks, block_size, H_kv, D) for keys and for values; sequence b's KV history of
`seqused_k[b]` tokens lives in blocks `block_tables[b]`, its queries are rows
`cu_seqlens_q[b]:cu_seqlens_q[b+1]` and causal masking is aligned at the end (see
kernels/attention.py). Every kernel reads the block table itself: there is no gather of the KV
into a contiguous buffer, and in decode each byte of the cache is read from HBM once.

Two paths:

* Decode (max_seqlen_q == 1): memory-bound, so the design is about bytes in flight. One program
  per (sequence, kv head, split) loads each K/V tile once and uses it for every query head of the
  GQA group (the group is the M dimension of a small tensor-core dot, padded to 16 rows). When the
  batch is too small to cover the GPU, each sequence's KV is cut into up to `num_splits`
  contiguous ranges of at least `min_split_tokens`; each program writes a normalised partial
  output plus its log-sum-exp, and the last program of a (sequence, kv head) to finish (an
  atomic counter says which) merges them: no second kernel. A sequence too short to split, or a
  batch large enough to cover the GPU, writes the output directly. The split count is fixed per
  launch (a CUDA graph captures it for the longest context) while the ranges follow each
  sequence's length, so in a graph captured for 40k tokens a 160-token decode runs as one
  program per kv head and the rest of the grid exits at once.
* Prefill / extend / mixed batches: one program per (query tile, kv head). A query tile is
  BLOCK_Q tokens of one sequence times the GQA group's heads, packed as the M = BLOCK_Q * GROUP
  rows of the tile, so a K/V tile feeds the whole group (and a decode row in a mixed batch costs
  one tile, not one per head). Query tiles of all sequences are laid end to end on one grid axis
  with an upper bound on their count that needs no device-to-host sync (the vLLM "unified
  attention" trick); each program finds its sequence by binary search over cu_seqlens_q.
  KV tiles every row of the tile may see (the cached prefix, the part below the diagonal) run
  without a mask; only the last few tiles along the diagonal are masked.

All softmax state (running max, running sum, accumulator) is float32 and uses exp2 with the
scale folded into log2 units. float16 and bfloat16 are the GPU dtypes; float32 works too (dots in
IEEE precision) so that tests can compare tightly on CPU.

On CPU the kernels run under Triton's interpreter, which has to be chosen before triton is first
imported (TRITON_INTERPRET=1: triton.language's own helpers are decorated at import). CPU tensors
without it are refused with that advice; with it, CUDA tensors would be interpreted too.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.attention import AttentionMetadata

LOG2E = 1.4426950408889634
H200_SMS = 132  # what the split heuristic assumes when there is no CUDA device (CPU tests)
MAX_SPLITS = 64
# Shorter KV ranges save less than their partial writes and the merge cost. On the H200, a
# Qwen3-8B batch-1 decode at 160 tokens (three 64-token tiles) took 8.0-8.4 us a layer in one
# program per kv head, 11.4 us split in three and merged by the last (a first version of the
# merge, one head at a time; the chunked merge has not been timed at that length).
MIN_SPLIT_TOKENS = 256
PROGRAMS_PER_SM = 4  # decode programs resident on one SM (limited by registers)
INTERPRETED = bool(triton.knobs.runtime.interpret)  # TRITON_INTERPRET=1 when triton was imported


def _fix_interpreter_index() -> None:
    """Let the interpreter's `range(lo, hi)` take run-time scalars under numpy >= 2.4.

    triton 3.6's interpreter holds scalars as 1-element arrays and `int()`s them, which numpy 2.4
    refuses (triton-lang/triton#9171, fixed upstream after 3.6). Interpreter only; idempotent.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "rtserve_index_fix", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.rtserve_index_fix = True
    interpreter._patch_lang_tensor = patched


if INTERPRETED:
    _fix_interpreter_index()


# --------------------------------------------------------------------------------------------
# Decode: split-KV, one program per (sequence, kv head, split)
# --------------------------------------------------------------------------------------------


@triton.jit
def _decode_kernel(
    q_ptr,  # (T, H, D), T == number of sequences with one query each
    k_ptr,  # (num_blocks, PAGE, H_kv, D)
    v_ptr,
    out_ptr,  # (T, H, D)
    part_o_ptr,  # (B, H, NUM_SPLITS, D) float32, normalised per split
    part_lse_ptr,  # (B, H, NUM_SPLITS) float32, log2-sum-exp2 of each split
    count_ptr,  # (B, H_kv) int32, zero between calls: splits of each sequence done so far
    cu_q_ptr,
    seqused_ptr,
    bt_ptr,
    scale_log2,  # softmax scale * log2(e)
    num_heads,
    num_kv_heads,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_bt,
    GROUP: tl.constexpr,  # query heads per kv head
    BLOCK_H: tl.constexpr,  # GROUP padded to a power of two >= 16 (the dot's M)
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,  # cache block size
    BLOCK_N: tl.constexpr,  # KV tokens per tile (may span several pages)
    NUM_SPLITS: tl.constexpr,  # the most ranges a sequence is cut into
    MIN_SPLIT_TILES: tl.constexpr,  # the fewest tiles a range holds
    GROUP_PAD: tl.constexpr,  # GROUP padded to a power of two (the merge's heads)
    MERGE_SPLITS: tl.constexpr,  # partials the merge reads at once, a power of two
    DOT_PREC: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    q_row = tl.load(cu_q_ptr + b)
    if tl.load(cu_q_ptr + b + 1) == q_row:  # a sequence with no query this step
        return
    seq_len = tl.load(seqused_ptr + b)

    # This split's contiguous range of KV tiles. Ranges are cut per sequence from its own length,
    # at least MIN_SPLIT_TILES each (a shorter one saves less than its partial and the merge
    # cost), so a short sequence in a CUDA graph captured for a long context runs as one
    # program per kv head, and splits past a sequence's last range have nothing to do.
    n_tiles = tl.cdiv(seq_len, BLOCK_N)
    per_split = tl.maximum(tl.cdiv(n_tiles, NUM_SPLITS), MIN_SPLIT_TILES)
    active = tl.maximum(tl.cdiv(n_tiles, per_split), 1)
    if split >= active:
        return
    tile_lo = split * per_split
    tile_hi = tl.minimum(tile_lo + per_split, n_tiles)

    offs_h = tl.arange(0, BLOCK_H)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    head_ok = offs_h < GROUP
    heads = kvh * GROUP + offs_h
    # The group's queries, (BLOCK_H, D): rows past GROUP are zero and never stored.
    q = tl.load(
        q_ptr + q_row.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=head_ok[:, None],
        other=0.0,
    )

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    for tile in range(tile_lo, tile_hi):
        # Token positions of this tile and where they live: each token looks up its page in the
        # block table, so a tile may cross pages of any (power-of-two) size. Every row is D
        # contiguous elements of one kv head.
        pos = tile * BLOCK_N + offs_n
        valid = pos < seq_len
        page = tl.load(bt_row + pos // PAGE, mask=valid, other=0).to(tl.int64)
        k_rows = page * stride_kb + (pos % PAGE) * stride_ks + kvh * stride_kh
        v_rows = page * stride_vb + (pos % PAGE) * stride_vs + kvh * stride_vh
        k = tl.load(k_ptr + k_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2  # (BLOCK_H, BLOCK_N)
        s = tl.where(valid[None, :], s, float("-inf"))
        # Online softmax: every tile has at least one valid key, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + v_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # an empty sequence stays 0
    o = acc / l_safe[:, None]
    out = out_ptr + q_row.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
    # Two branches, not one `or`: the first is decided at compile time, and a batch that covers
    # the GPU gets a kernel without partials or counters.
    if NUM_SPLITS == 1:  # noqa: SIM114
        tl.store(out, o.to(out_ptr.dtype.element_ty), mask=head_ok[:, None])
    elif active == 1:
        tl.store(out, o.to(out_ptr.dtype.element_ty), mask=head_ok[:, None])
    else:
        rows = (b * num_heads + heads) * NUM_SPLITS  # (BLOCK_H,) first partial of each head
        tl.store(part_lse_ptr + rows + split, m_i + tl.log2(l_safe), mask=head_ok)
        part = part_o_ptr + (rows + split)[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
        tl.store(part, o, mask=head_ok[:, None])
        # Every thread's partial is written (the barrier) before the counter's release; the
        # program that counts last sees every other split's partial after its acquire.
        tl.debug_barrier()
        count = count_ptr + b * num_kv_heads + kvh
        if tl.atomic_add(count, 1, sem="acq_rel") == active - 1:
            _merge_splits(
                out_ptr + q_row.to(tl.int64) * stride_ot + kvh * GROUP * stride_oh,
                part_o_ptr,
                part_lse_ptr,
                (b * num_heads + kvh * GROUP) * NUM_SPLITS,
                active,
                stride_oh,
                GROUP,
                GROUP_PAD,
                HEAD_DIM,
                NUM_SPLITS,
                MERGE_SPLITS,
            )
            tl.atomic_xchg(count, 0, sem="relaxed")  # zero again for the next call


@triton.jit
def _merge_splits(
    out_ptr,  # the group's first head in the output row
    part_o_ptr,
    part_lse_ptr,
    row0,  # the partials' row of the group's first head
    active,
    stride_oh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    MERGE_SPLITS: tl.constexpr,
):
    """out_h = sum_s w_s o_s / sum_s w_s over the `active` partials of each head of the group,
    w_s = 2^(lse_s - max lse), with a running maximum over chunks of MERGE_SPLITS partials. A
    chunk is one (heads, splits, D) load, so every head's trip to L2 overlaps (.cg: the other
    SMs' partials are there, not in this SM's L1); nothing is stored until the end."""
    offs_h = tl.arange(0, GROUP_PAD)
    offs_s = tl.arange(0, MERGE_SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    h_ok = offs_h < GROUP
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    den = tl.zeros([GROUP_PAD], tl.float32)
    num = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for s0 in range(0, active, MERGE_SPLITS):
        split = s0 + offs_s
        ok = h_ok[:, None] & (split < active)[None, :]  # (heads, splits)
        rows = row0 + offs_h[:, None] * NUM_SPLITS + split[None, :]
        lse = tl.load(part_lse_ptr + rows, mask=ok, other=float("-inf"), cache_modifier=".cg")
        o = tl.load(
            part_o_ptr + rows[:, :, None].to(tl.int64) * HEAD_DIM + offs_d[None, None, :],
            mask=ok[:, :, None],
            other=0.0,
            cache_modifier=".cg",
        )
        m_new = tl.maximum(m, tl.max(lse, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # the pad heads see no partial
        alpha = tl.exp2(m - m_safe)
        w = tl.exp2(lse - m_safe[:, None])  # (heads, splits)
        den = den * alpha + tl.sum(w, 1)
        num = num * alpha[:, None] + tl.sum(o * w[:, :, None], 1)
        m = m_new
    o = num / tl.where(den > 0.0, den, 1.0)[:, None]
    out = out_ptr + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])


# --------------------------------------------------------------------------------------------
# Prefill / extend / mixed: one program per (query tile, kv head)
# --------------------------------------------------------------------------------------------


@triton.jit
def _prefill_kernel(
    q_ptr,  # (T, H, D)
    k_ptr,  # (num_blocks, PAGE, H_kv, D)
    v_ptr,
    out_ptr,  # (T, H, D)
    cu_q_ptr,
    seqused_ptr,
    bt_ptr,
    scale_log2,
    num_seqs,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_bt,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,  # GROUP rounded up to a power of two
    BLOCK_Q: tl.constexpr,  # query tokens per tile
    BLOCK_M: tl.constexpr,  # BLOCK_Q * GROUP_PAD rows: (token, head) pairs, head fastest
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)

    # Sequence b owns grid tiles [cu_q[b] // BLOCK_Q + b, cu_q[b+1] // BLOCK_Q + b + 1): at least
    # cdiv(n_b, BLOCK_Q) of them, and the starts are strictly increasing, so the grid size
    # T // BLOCK_Q + B bounds the total without reading lengths back to the host. Find b, the
    # last sequence whose first tile is <= this one.
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(cu_q_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    b = lo - 1
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start
    tok0 = (tile - (q_start // BLOCK_Q + b)) * BLOCK_Q  # first query token (within the sequence)
    if tok0 >= q_len:  # one of the spare tiles of the upper bound
        return
    seq_len = tl.load(seqused_ptr + b)
    prefix = seq_len - q_len  # cached KV before the first new token

    # Rows of the tile: (token tok0 + r // GROUP_PAD, head r % GROUP_PAD of this kv group).
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    tok = tok0 + offs_m // GROUP_PAD
    hh = offs_m % GROUP_PAD
    row_ok = (tok < q_len) & (hh < GROUP)
    q_rows = (q_start + tok).to(tl.int64) * stride_qt + (kvh * GROUP + hh) * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    q_pos = prefix + tok  # absolute position of each row; it sees keys 0..q_pos

    # Keys below `full_end` are visible to every row of the tile (the whole cached prefix and
    # the part of the new tokens left of the diagonal): those tiles need no mask. The last
    # visible key of the tile's last token bounds the masked range.
    full_end = ((prefix + tok0 + 1) // BLOCK_N) * BLOCK_N
    kv_end = prefix + tl.minimum(tok0 + BLOCK_Q, q_len)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    # Two passes of the same loop body, unrolled at compile time: 0 = unmasked, 1 = causal.
    for masked in tl.static_range(2):
        if masked == 0:
            n_lo = 0
            n_hi = full_end
        else:
            n_lo = full_end
            n_hi = kv_end
        for start in range(n_lo, n_hi, BLOCK_N):
            pos = start + offs_n
            if masked == 0:
                page = tl.load(bt_row + pos // PAGE).to(tl.int64)
            else:
                page = tl.load(bt_row + pos // PAGE, mask=pos < seq_len, other=0).to(tl.int64)
            k_rows = page * stride_kb + (pos % PAGE) * stride_ks + kvh * stride_kh
            v_rows = page * stride_vb + (pos % PAGE) * stride_vs + kvh * stride_vh
            if masked == 0:
                k = tl.load(k_ptr + k_rows[:, None] + offs_d[None, :])
                v = tl.load(v_ptr + v_rows[:, None] + offs_d[None, :])
            else:
                kv_ok = (pos < seq_len)[:, None]
                k = tl.load(k_ptr + k_rows[:, None] + offs_d[None, :], mask=kv_ok, other=0.0)
                v = tl.load(v_ptr + v_rows[:, None] + offs_d[None, :], mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2  # (M, N)
            if masked == 1:
                # Key 0 is visible to every row and is always in the first tile processed, so
                # m_i is finite from there on and fully masked rows of a tile give p = 0.
                s = tl.where(pos[None, :] <= q_pos[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
            m_i = m_new

    o = acc / l_i[:, None]
    out_rows = (q_start + tok).to(tl.int64) * stride_ot + (kvh * GROUP + hh) * stride_oh
    tl.store(
        out_ptr + out_rows[:, None] + offs_d[None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None],
    )


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_kv_splits(
    batch: int,
    kv_heads: int,
    max_seqlen_k: int,
    num_sms: int = H200_SMS,
    min_split_tokens: int = MIN_SPLIT_TOKENS,
) -> int:
    """How many KV ranges each (sequence, kv head) of a decode batch is cut into.

    Decode is bound by HBM bandwidth, which the GPU reaches only with enough loads in flight.
    The decode program (4 warps, about 128 registers a thread, 39 KiB of shared memory at
    head_dim 128) fits 4 to an SM, so one wave is 4 * SMs programs. A batch with
    batch * kv_heads >= 2 * SMs already keeps two or more programs on every SM and gets one
    split (no partials, no merge). A smaller one is split as far as still fits in one wave:
    a second, partial wave runs a few programs with most of the GPU idle. On the H200 (bf16,
    32 q / 8 kv heads, head_dim 128, CUDA graphs) this picked the fastest of the split counts
    tried at every shape: batch 8 x 8192 tokens ran 70 us with 8 splits (512 programs), 80 us
    with 9 (576); batch 16 x 4096, 71 us with 4 and 86 us with 5; batch 48 x 4096, 197 us with
    one split and 220 us with two. Ranges are never shorter than `min_split_tokens`, where the
    partial writes and the merge would cost more than they save.
    """
    programs = max(batch * kv_heads, 1)
    if programs >= 2 * num_sms:
        return 1
    splits = min(
        (PROGRAMS_PER_SM * num_sms) // programs,
        triton.cdiv(max_seqlen_k, min_split_tokens),
        MAX_SPLITS,
    )
    return max(splits, 1)


def _device_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


def _next_pow2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


class TritonPagedAttention:
    """Triton paged attention: split-KV decode and a varlen causal prefill over the block table.

    `num_splits` fixes the decode split count (for CUDA-graph capture or tests); None picks it
    per batch with `num_kv_splits`; either way no range is shorter than `min_split_tokens`. The
    block sizes are tunables for tests and benchmarks; None takes the defaults chosen for the
    H200.
    """

    name = "triton-paged"
    graph_safe = True  # sync-free; the split count is fixed at capture from max_seqlen_k
    prompt_graph_safe = True  # the prefill grid depends only on the token and sequence counts

    def __init__(
        self,
        num_splits: int | None = None,
        decode_block_n: int | None = None,
        prefill_block_m: int | None = None,
        prefill_block_n: int | None = None,
        prefill_stages: int | None = None,
        min_split_tokens: int = MIN_SPLIT_TOKENS,
    ) -> None:
        if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
        self.num_splits = num_splits
        self.decode_block_n = decode_block_n
        self.prefill_block_m = prefill_block_m
        self.prefill_block_n = prefill_block_n
        self.prefill_stages = prefill_stages
        self.min_split_tokens = min_split_tokens
        self._counts: dict[torch.device, torch.Tensor] = {}
        self._outgrown: list[torch.Tensor] = []

    @staticmethod
    def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
        """Whether these shapes are ones the kernels take (head_dim 64 or 128, GQA, pages of a
        power of two >= 16 tokens, on CUDA or under the interpreter)."""
        heads, head_dim = q.shape[1:]
        block_size, kv_heads = k_cache.shape[1:3]
        return (
            head_dim in (64, 128)
            and k_cache.shape[3] == head_dim
            and heads % kv_heads == 0
            and block_size >= 16
            and block_size & (block_size - 1) == 0
            and (q.device.type == "cuda" or INTERPRETED)
        )

    def __call__(
        self,
        q: torch.Tensor,  # (T, H, D)
        k_cache: torch.Tensor,  # (num_blocks, block_size, H_kv, D)
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        _, heads, head_dim = q.shape
        block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
        if head_dim not in (64, 128) or k_cache.shape[3] != head_dim:
            raise ValueError(f"head_dim must be 64 or 128 (q {head_dim}, cache {k_cache.shape[3]})")
        if block_size < 16 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
        if q.stride(-1) != 1:
            q = q.contiguous()
        if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
            raise ValueError("the KV cache's last dimension must be contiguous")
        interpret = q.device.type == "cpu"
        if interpret and not INTERPRETED:
            raise RuntimeError(
                "triton-paged runs on CPU tensors only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 before triton is first imported"
            )
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if q.shape[0] == 0:
            return out
        args = _Args(q, k_cache, v_cache, out, meta, scale, interpret)
        if meta.is_decode:
            self._decode(args)
        else:
            self._prefill(args)
        return out

    def _decode(self, a: _Args) -> None:
        batch = a.meta.seqused_k.shape[0]
        heads, kv_heads, head_dim = a.q.shape[1], a.k.shape[2], a.q.shape[2]
        group = heads // kv_heads
        splits = self.num_splits or num_kv_splits(
            batch,
            kv_heads,
            a.meta.max_seqlen_k,
            H200_SMS if a.interpret else _sm_count(_device_index(a.q.device)),
            self.min_split_tokens,
        )
        # 16 KiB of K and of V per tile at either head_dim (64 x 128 or 128 x 64 bf16 elements).
        # With 4 warps and num_stages=3, Triton's pipeliner fetches the page indices two tiles
        # ahead and K/V one tile ahead (cp.async into shared memory); 4 programs fit an SM, so
        # about 128 KiB of KV is in flight per SM, ample for HBM latency at full bandwidth.
        block_n = self.decode_block_n or (64 if head_dim == 128 else 128)
        if splits > 1:
            part_o = torch.empty(batch, heads, splits, head_dim, dtype=torch.float32, device=a.dev)
            part_lse = torch.empty(batch, heads, splits, dtype=torch.float32, device=a.dev)
            counts = self._split_counts(a.dev, batch * kv_heads)
        else:
            part_o = part_lse = counts = a.out  # unused
        _decode_kernel[(batch, kv_heads, splits)](
            a.q,
            a.k,
            a.v,
            a.out,
            part_o,
            part_lse,
            counts,
            a.cu_q,
            a.seqused,
            a.tables,
            a.scale_log2,
            heads,
            kv_heads,
            *a.strides,
            GROUP=group,
            BLOCK_H=max(16, _next_pow2(group)),
            HEAD_DIM=head_dim,
            PAGE=a.k.shape[1],
            BLOCK_N=block_n,
            NUM_SPLITS=splits,
            MIN_SPLIT_TILES=triton.cdiv(self.min_split_tokens, block_n),
            GROUP_PAD=_next_pow2(group),
            # (heads, splits, D) float32 of a chunk: 64 registers a thread at head_dim 128
            MERGE_SPLITS=min(_next_pow2(splits), max(2, 64 // _next_pow2(group))),
            DOT_PREC=a.dot_prec,
            num_warps=4,
            num_stages=3,
        )

    def _split_counts(self, device: torch.device, n: int) -> torch.Tensor:
        """n int32 counters, zero (every decode leaves them so). One buffer per device serves
        every layer, since a model's layers run one after another on one stream; a buffer
        outgrown stays alive, because CUDA graphs captured with it keep its address."""
        buf = self._counts.get(device)
        if buf is None or buf.numel() < n:
            if buf is not None:
                self._outgrown.append(buf)
            buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
            self._counts[device] = buf
        return buf

    def _prefill(self, a: _Args) -> None:
        batch = a.meta.seqused_k.shape[0]
        heads, kv_heads, head_dim = a.q.shape[1], a.k.shape[2], a.q.shape[2]
        group = heads // kv_heads
        group_pad = _next_pow2(group)
        # 256 (token, head) rows x 64 keys per tile on 8 warps, a 3-stage K/V pipeline: the best
        # of 27 shapes tried on the H200 (bench/tune_prefill.py; docs/benchmarks.md), 428
        # TFLOP/s at 2 x 16384 tokens against 340 for 128 rows and 2 stages.
        # float32 tiles take twice the shared memory: the bf16 shape needs 263 KiB there, over
        # the H200's 227 KiB, so they get half the rows and keys and two stages.
        wide = a.q.element_size() > 2
        block_m = max(self.prefill_block_m or (128 if wide else 256), group_pad)
        block_q = block_m // group_pad
        block_n = self.prefill_block_n or (32 if wide else 64)
        grid = (a.q.shape[0] // block_q + batch, kv_heads)
        _prefill_kernel[grid](
            a.q,
            a.k,
            a.v,
            a.out,
            a.cu_q,
            a.seqused,
            a.tables,
            a.scale_log2,
            batch,
            *a.strides,
            GROUP=group,
            GROUP_PAD=group_pad,
            BLOCK_Q=block_q,
            BLOCK_M=block_q * group_pad,
            BLOCK_N=block_n,
            HEAD_DIM=head_dim,
            PAGE=a.k.shape[1],
            DOT_PREC=a.dot_prec,
            num_warps=8 if block_m >= 128 else 4,
            num_stages=self.prefill_stages or (2 if wide else 3),
        )


class _Args:
    """The tensors and strides both paths pass to their kernels."""

    def __init__(self, q, k, v, out, meta: AttentionMetadata, scale: float, interpret: bool):
        self.q, self.k, self.v, self.out, self.meta = q, k, v, out, meta
        self.interpret = interpret
        self.dev = q.device
        self.cu_q = meta.cu_seqlens_q
        self.seqused = meta.seqused_k
        self.tables = meta.block_tables
        self.scale_log2 = float(scale) * LOG2E
        self.dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
        self.strides = (
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            k.stride(2),
            v.stride(0),
            v.stride(1),
            v.stride(2),
            out.stride(0),
            out.stride(1),
            meta.block_tables.stride(0),
        )


__all__ = ["TritonPagedAttention", "num_kv_splits"]
