"""CUDA graphs for decode steps: one graph per batch-size bucket, sharing one memory pool.

A decode step of a small batch is a few hundred kernel launches of a few microseconds of work
each; launched one by one from Python, the GPU waits on the host (on the H200 a 0.6B model
decoded 21 tokens/s at batch 1 without graphs, a fraction of its bandwidth bound). Replaying a
captured graph launches them all at once.

A graph is captured for each bucket size b (1, 2, 4, 8, 16, 24, ... up to the largest batch)
over static input buffers. A batch of n <= b decode rows is copied into the first n rows; rows
n..b are padding: token 0 at position 0, one KV token in the scratch block (the block the runner
allocates past those the block manager hands out), writing its key and value into that block.
The attention metadata's `max_seqlen_k` is the longest context the runner serves, so one graph
holds for every replay; a graph-safe backend reads the true lengths from `seqused_k` on the
device. Logits are computed outside the graph, for the sampled rows only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import torch

from kernels.attention import AttentionMetadata

if TYPE_CHECKING:
    from engine.model_runner import ModelRunner, StepInputs


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a graph: 1, 2, 4, multiples of 8 to 64, of 16 beyond, and max_batch.

    Finer steps where batches are small keep the padding (wasted rows) small where it is
    relatively costly; past 64 a row costs little next to reading the weights."""
    sizes = {1, 2, 4, *range(8, 65, 8), *range(80, max_batch + 1, 16), max_batch}
    return sorted(s for s in sizes if s <= max_batch)


class BucketGraphs(ABC):
    """One CUDA graph of `_forward(b)` per bucket size b, sharing one memory pool: what decode
    steps, prompt steps (engine/prompt_graphs.py) and the speech encoder's calls
    (engine/encoder_graphs.py) have in common. Subclasses hold the static buffers `_forward`
    reads, fill them before `_replay`, and set them to padding for a capture (`_prepare`)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # each graph's output, in the pool

    def bucket(self, n: int) -> int:
        """The smallest bucket that holds n rows."""
        return next(b for b in self.sizes if b >= n)

    @abstractmethod
    def _forward(self, b: int) -> torch.Tensor:
        """The captured computation for bucket b, on the static buffers."""

    def _prepare(self, b: int) -> None:
        """The buffers as a capture of bucket b should see them (default: as they are)."""
        return None

    def _replay(self, b: int) -> torch.Tensor:
        """Bucket b's output from its graph, or computed eagerly when it has none (CPU tests,
        `capture=False`): the same buffers either way."""
        graph = self.graphs.get(b)
        if graph is None:
            return self._forward(b)
        graph.replay()
        return self.outputs[b]

    def _capture(self, device: torch.device) -> None:
        """Largest first, so smaller graphs reuse the pool the largest one sized."""
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for b in reversed(self.sizes):
                self._prepare(b)
                self._forward(b)  # warm-up: compiles kernels, settles allocator state
                torch.cuda.synchronize(device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.outputs[b] = self._forward(b)
                self.graphs[b] = graph


class StepGraphs(BucketGraphs):
    """Graphs of engine steps over the paged KV cache (decode and prompt steps): the runner,
    its block-table width and scratch block, and the token ids and positions of the largest
    bucket."""

    def __init__(self, runner: ModelRunner, sizes: list[int]) -> None:
        super().__init__(sizes)
        self.runner = runner
        self.width = -(-runner.max_model_len // runner.config.block_size)  # block table columns
        self.scratch = runner.scratch_block
        n = sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.long, device=runner.device)
        self.positions = torch.zeros(n, dtype=torch.long, device=runner.device)


class DecodeGraphs(StepGraphs):
    """Static buffers and captured graphs for decode batches of up to `max_batch` rows.

    With `capture=False` nothing is captured and `run` calls the model eagerly on the padded
    buffers: the same inputs a replay sees, which lets CPU tests check the padding."""

    def __init__(self, runner: ModelRunner, max_batch: int, capture: bool) -> None:
        super().__init__(runner, buckets(max_batch))
        bs, dev, n = runner.config.block_size, runner.device, self.sizes[-1]
        self.slots = torch.full((n,), self.scratch * bs, dtype=torch.long, device=dev)
        self.seqused = torch.ones(n, dtype=torch.int32, device=dev)
        self.tables = torch.full((n, self.width), self.scratch, dtype=torch.int32, device=dev)
        self.cu_seqlens = torch.arange(n + 1, dtype=torch.int32, device=dev)
        if capture:
            self._capture(dev)

    def takes(self, x: StepInputs) -> bool:
        return (
            x.is_decode
            and x.embeds is None
            and len(x.input_ids) <= self.sizes[-1]
            and x.block_tables.shape[1] <= self.width
        )

    def run(self, x: StepInputs) -> torch.Tensor:
        """The hidden states (n, hidden) of a decode batch of n rows."""
        n = len(x.input_ids)
        b = self.bucket(n)
        self._load(x, b)
        return self._replay(b)[:n]

    def _load(self, x: StepInputs, b: int) -> None:
        n, w = len(x.input_ids), x.block_tables.shape[1]
        self.input_ids[:n].copy_(torch.from_numpy(x.input_ids))
        self.positions[:n].copy_(torch.from_numpy(x.positions))
        self.slots[:n].copy_(torch.from_numpy(x.slots))
        self.seqused[:n].copy_(torch.from_numpy(x.seqused_k))
        self.tables[:n, :w].copy_(torch.from_numpy(np.ascontiguousarray(x.block_tables)))
        self._pad(n, b)

    def _pad(self, lo: int, hi: int) -> None:
        """Rows lo..hi become padding again: a larger batch before left real slots there, and
        a padding row must never write into a block that a request owns."""
        if lo >= hi:
            return
        self.input_ids[lo:hi] = 0
        self.positions[lo:hi] = 0
        self.slots[lo:hi] = self.scratch * self.runner.config.block_size
        self.seqused[lo:hi] = 1
        self.tables[lo:hi, 0] = self.scratch

    def _forward(self, b: int) -> torch.Tensor:
        meta = AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens[: b + 1],
            seqused_k=self.seqused[:b],
            block_tables=self.tables[:b],
            slot_mapping=self.slots[:b],
            max_seqlen_q=1,
            max_seqlen_k=self.width * self.runner.config.block_size,
        )
        r = self.runner
        return r.model(self.input_ids[:b], self.positions[:b], r.kv_caches, meta, None)

    def _prepare(self, b: int) -> None:
        self._pad(0, b)
