"""CUDA graphs for steps that take prompt tokens: one graph per bucket of tokens.

A speech worker's prompt step is a few streams' new audio tokens and text prefixes, beside the
requests that decode: a few hundred tokens through every layer. Its kernels are small, and
launched one by one from Python such a step took 18-30 ms on the H200, where a graphed decode
step took 2-3 ms (docs/benchmarks.md, the live profile). Replaying a captured graph launches
them all at once.

A graph is captured for each token bucket T (`buckets`) over static buffers with room for
`slots` sequences. A batch of n sequences and t <= T - 1 tokens fills the first n sequence slots
and t token rows. One padding sequence takes rows t..T: token 0 at position 0, its keys and
values written to the scratch block and read back only from there. The slots after it hold
empty sequences. Injected embeddings (audio tokens) go through a T-row buffer whose unused
entries copy zeros into row T - 1, which is always padding.

Only an attention backend whose prompt path reads every length from the device may run inside
a graph (`prompt_graph_safe`): our Triton prefill kernel, whose grid depends only on T and the
slot count. A batch with a row of `long_from` tokens or more runs eagerly, on the long-prompt
backend; a graph's padding sequence may be longer, and runs on the short one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.cuda_graphs import StepGraphs
from kernels.attention import AttentionMetadata

if TYPE_CHECKING:
    from engine.model_runner import ModelRunner, StepInputs


def buckets(max_tokens: int) -> list[int]:
    """Token counts that get a graph: powers of two from 64 below max_tokens, then one with room
    for a full step of max_tokens and the padding row (rounded up to 64). A step at the token
    budget is the common one at hundreds of streams: without that room it ran eagerly."""
    top = -(-(max_tokens + 1) // 64) * 64
    sizes, t = [], 64
    while t < max_tokens:
        sizes.append(t)
        t *= 2
    return sizes + [top]


class PromptGraphs(StepGraphs):
    """Static buffers and captured graphs for steps with up to max(buckets) - 1 tokens and
    `slots` - 1 sequences.

    With `capture=False` nothing is captured and `run` calls the model eagerly on the padded
    buffers: the same inputs a replay sees, which lets CPU tests check the padding."""

    def __init__(
        self,
        runner: ModelRunner,
        max_tokens: int,
        max_row: int,
        slots: int,
        hidden: int,
        capture: bool,
    ) -> None:
        super().__init__(runner, buckets(max_tokens))
        self.max_row = max_row  # rows of this many tokens go to the long-prompt backend
        self.slots = slots
        dev, t = runner.device, self.sizes[-1]
        self.slot_mapping = torch.zeros(t, dtype=torch.long, device=dev)
        self.embed_rows = torch.zeros(t, dtype=torch.long, device=dev)
        self.embed_values = torch.zeros(t, hidden, dtype=runner.config.dtype, device=dev)
        self.cu_seqlens = torch.zeros(slots + 1, dtype=torch.int32, device=dev)
        self.seqused = torch.zeros(slots, dtype=torch.int32, device=dev)
        self.tables = torch.zeros(slots, self.width, dtype=torch.int32, device=dev)
        if capture:
            self._capture(dev)

    def takes(self, x: StepInputs) -> bool:
        return (
            not x.is_decode
            and len(x.input_ids) < self.sizes[-1]
            and len(x.seqused_k) < self.slots
            and x.block_tables.shape[1] <= self.width
            and int(np.diff(x.cu_seqlens_q).max()) < self.max_row
        )

    def run(self, x: StepInputs) -> torch.Tensor:
        """The hidden states (t, hidden) of a batch of t tokens."""
        t = len(x.input_ids)
        b = self.bucket(t + 1)  # a row to spare: the padding sequence is never empty
        self._load(x, b)
        return self._replay(b)[:t]

    def _load(self, x: StepInputs, b: int) -> None:
        t, n, w = len(x.input_ids), len(x.seqused_k), x.block_tables.shape[1]
        bs = self.runner.config.block_size
        ids = np.zeros(b, dtype=np.int64)
        ids[:t] = x.input_ids
        positions = np.zeros(b, dtype=np.int64)
        positions[:t] = x.positions
        slot_mapping = np.full(b, self.scratch * bs, dtype=np.int64)
        slot_mapping[:t] = x.slots
        cu = np.full(self.slots + 1, b, dtype=np.int32)  # the slots past the padding: empty
        cu[: n + 1] = x.cu_seqlens_q
        seqused = np.zeros(self.slots, dtype=np.int32)
        seqused[:n] = x.seqused_k
        seqused[n] = b - t  # the padding sequence: its own tokens, no cached prefix
        rows = np.full(b, b - 1, dtype=np.int64)  # unused entries: zeros into the padding row
        self.embed_values[:b].zero_()
        if x.embeds is not None:
            real, values = x.embeds
            rows[: len(real)] = real
            self.embed_values[: len(real)].copy_(values)
        for buf, host in (
            (self.input_ids, ids),
            (self.positions, positions),
            (self.slot_mapping, slot_mapping),
            (self.embed_rows, rows),
            (self.cu_seqlens, cu),
            (self.seqused, seqused),
        ):
            buf[: len(host)].copy_(torch.from_numpy(host))
        # Table columns past a sequence's length and rows past the padding sequence are never
        # read (the kernels stop at seqused_k, and empty sequences read nothing), so only the
        # batch's own rows are copied: the whole table is slots x max_model_len / block_size.
        self.tables[:n, :w].copy_(torch.from_numpy(np.ascontiguousarray(x.block_tables)))
        self.tables[n].fill_(self.scratch)

    def _forward(self, b: int) -> torch.Tensor:
        meta = AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens,
            seqused_k=self.seqused,
            block_tables=self.tables,
            slot_mapping=self.slot_mapping[:b],
            # What the attention routes on: every real row is under max_row, so the short
            # backend, which reads the lengths (the padding's too) on the device.
            max_seqlen_q=min(b, self.max_row) - 1,
            max_seqlen_k=self.width * self.runner.config.block_size,
        )
        r = self.runner
        embeds = (self.embed_rows[:b], self.embed_values[:b])
        return r.model(self.input_ids[:b], self.positions[:b], r.kv_caches, meta, embeds)

    def _prepare(self, b: int) -> None:
        """A batch of padding alone: what the buffers hold while a graph is captured."""
        bs = self.runner.config.block_size
        self.input_ids.zero_()
        self.positions.zero_()
        self.slot_mapping.fill_(self.scratch * bs)
        self.embed_rows.fill_(b - 1)
        self.embed_values.zero_()
        self.cu_seqlens.fill_(b)
        self.cu_seqlens[0] = 0
        self.seqused.zero_()
        self.seqused[0] = b
        self.tables.fill_(self.scratch)
