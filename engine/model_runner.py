"""The model runner: owns the KV cache, turns a scheduled batch into flat tensors, runs the model.

A batch of B requests becomes T = sum(new tokens) rows: token ids, positions, the cache slot of
each row, each request's block table, and the rows of injected embeddings. Logits are computed
only for rows whose request has all its tokens computed after this step (it samples next).
Decode batches that fit a captured CUDA graph are replayed from it (engine/cuda_graphs.py), and
with `prompt_graphs` so are short batches with prompt tokens (engine/prompt_graphs.py).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs
from engine.prompt_graphs import PromptGraphs
from engine.request import Request
from engine.scheduler import Batch
from kernels.attention import (
    AttentionBackend,
    AttentionMetadata,
    PhaseAttention,
    decode_backend,
    phases,
    takes,
)

log = logging.getLogger(__name__)

# The largest prompt graph (ModelRunner.prompt_graph_limits): 8,192 tokens for a decoder of up
# to 0.5B weights outside the embeddings (Qwen3-0.6B and the Qwen3-ASR decoder have 0.44B), and
# for a bigger one as many tokens as make the same work, tokens x weights (589 for a Qwen3-8B).
# Past that a step is bound by its arithmetic: a graph saves nothing and its bucket's padding
# costs. On the H200 an 8B 1,024-token prompt took 45 ms in the 2,048 bucket, 24-29 ms eagerly.
PROMPT_GRAPH_TOKENS = 8192
PROMPT_GRAPH_WORK = PROMPT_GRAPH_TOKENS * 500e6


def prompt_graph_tokens(model: torch.nn.Module) -> int:
    """The most tokens a prompt graph of this model holds, by its weights (PROMPT_GRAPH_WORK)."""
    weights = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "embed_tokens" not in name and "lm_head" not in name
    )
    return min(PROMPT_GRAPH_TOKENS, int(PROMPT_GRAPH_WORK / max(weights, 1)))


@dataclass
class StepInputs:
    """One step's inputs on the host; `meta` and `embeds` are built on the device."""

    input_ids: np.ndarray  # (T,) int64
    positions: np.ndarray  # (T,) int64
    slots: np.ndarray  # (T,) int64: the cache slot each row's key and value go to
    cu_seqlens_q: np.ndarray  # (B+1,) int32
    seqused_k: np.ndarray  # (B,) int32
    block_tables: np.ndarray  # (B, max_blocks) int32, zero padded
    embeds: tuple[np.ndarray, torch.Tensor] | None  # rows (K,), values (K, hidden)
    sample_rows: list[int]  # rows whose logits are sampled
    sampling: list[Request]  # the requests that sample, in row order

    @property
    def is_decode(self) -> bool:
        return len(self.input_ids) == len(self.seqused_k)


def kv_block_bytes(model_cfg, config: EngineConfig) -> int:
    per_token = 2 * model_cfg.num_hidden_layers * model_cfg.num_key_value_heads * model_cfg.head_dim
    return per_token * config.block_size * torch.tensor([], dtype=config.dtype).element_size()


def tokens_of(req: Request, start: int, end: int) -> list[int]:
    n_prompt = len(req.prompt_ids)
    if start >= n_prompt:
        return req.output_ids[start - n_prompt : end - n_prompt]
    return req.token_ids[start:end]


class ModelRunner:
    def __init__(
        self, model: torch.nn.Module, config: EngineConfig, num_blocks: int, max_model_len: int
    ) -> None:
        self.model = model
        self.config = config
        self.device = torch.device(config.device)
        cfg = model.config
        # One block more than the block manager hands out: the scratch block that the padding
        # rows of a graphed decode batch write their keys and values to.
        self.kv = torch.zeros(
            2,
            cfg.num_hidden_layers,
            num_blocks + 1,
            config.block_size,
            cfg.num_key_value_heads,
            cfg.head_dim,
            dtype=config.dtype,
            device=self.device,
        )
        self.kv_caches = [(self.kv[0, i], self.kv[1, i]) for i in range(cfg.num_hidden_layers)]
        self.scratch_block = num_blocks
        self.max_model_len = max_model_len
        self.decode_steps = 0  # decode-only steps run
        self.graph_steps = 0  # of them, replayed from a CUDA graph
        self.prompt_steps = 0  # steps with prompt tokens run
        self.prompt_graph_steps = 0  # of them, replayed from a CUDA graph
        self.graphs: DecodeGraphs | None = None
        self.prompt_graphs: PromptGraphs | None = None
        if config.cuda_graphs and self.device.type == "cuda":
            self.graphs = self._capture_graphs()
            if config.prompt_graphs:
                self.prompt_graphs = self._capture_prompt_graphs()

    @property
    def attention(self) -> AttentionBackend:
        return self.model.model.layers[0].self_attn.attn

    def describe(self) -> dict:
        """What runs each step, for logs and benchmark records."""
        return {
            "attention": phases(self.attention),
            "cuda_graph_sizes": self.graphs.sizes if self.graphs is not None else [],
            "decode_steps": self.decode_steps,
            "graph_steps": self.graph_steps,
            "prompt_graph_sizes": self.prompt_graphs.sizes if self.prompt_graphs else [],
            "prompt_steps": self.prompt_steps,
            "prompt_graph_steps": self.prompt_graph_steps,
        }

    def _capture_graphs(self) -> DecodeGraphs | None:
        cfg = self.model.config
        q = torch.empty(1, cfg.num_attention_heads, cfg.head_dim, device=self.device)
        attn = decode_backend(self.attention, q, self.kv_caches[0][0])
        if not attn.graph_safe:
            log.info("no CUDA graphs: attention backend %s syncs with the host", attn.name)
            return None
        max_batch = min(self.config.max_num_seqs, self.config.max_graph_batch)
        try:
            return DecodeGraphs(self, max_batch, capture=True)
        except Exception:  # a model or kernel that cannot be captured still runs, eagerly
            log.exception("CUDA graph capture failed; decode runs eagerly")
            torch.cuda.synchronize(self.device)
            return None

    def prompt_graph_limits(self) -> tuple[int, int]:
        """The largest bucket of prompt graphs and the longest row they take ((0, 0): none).

        The backend the graphs' rows run on must read every length on the device. A speech
        worker's prompt step holds thousands of tokens in short rows at hundreds of streams: at
        1,000 live streams about 240 streams' prompts, 5,000 tokens, took 46 ms eagerly on the
        H200; with graphs up to 8,192 tokens (and the worker's O(1) stream lookups) the p95
        partial latency went from 3.4 s to 0.8 s (docs/benchmarks.md). Rows of `long_from`
        tokens or more run on the long-prompt backend, eagerly. The padding sequence's pages
        must fit a block-table row (max_model_len)."""
        attn, long_from = self.attention, None
        if isinstance(attn, PhaseAttention):
            attn, long_from = attn.short or attn.prefill, attn.long_from if attn.short else None
        cfg = self.model.config
        q = torch.empty(1, cfg.num_attention_heads, cfg.head_dim, device=self.device)
        if not (getattr(attn, "prompt_graph_safe", False) and takes(attn, q, self.kv_caches[0][0])):
            return 0, 0
        tokens = min(
            prompt_graph_tokens(self.model), self.config.max_num_batched_tokens, self.max_model_len
        )
        return tokens, min(long_from or tokens, tokens)

    def _capture_prompt_graphs(self) -> PromptGraphs | None:
        max_tokens, max_row = self.prompt_graph_limits()
        if max_tokens < 64:
            log.info("no prompt graphs: %s cannot run prompts in a graph", phases(self.attention))
            return None
        slots = self.config.max_num_seqs + 1  # and the padding sequence
        hidden = self.model.config.hidden_size
        try:
            return PromptGraphs(self, max_tokens, max_row, slots, hidden, capture=True)
        except Exception:  # a model or kernel that cannot be captured still runs, eagerly
            log.exception("prompt graph capture failed; prompt steps run eagerly")
            torch.cuda.synchronize(self.device)
            return None

    @torch.inference_mode()
    def run(self, batch: Batch) -> tuple[torch.Tensor, list[Request]]:
        """Run one step; returns the logits (S, vocab) of the requests that sample, and them."""
        if batch.copies:
            src, dst = (
                torch.tensor(c, device=self.device) for c in zip(*batch.copies, strict=True)
            )
            self.kv[:, :, dst] = self.kv[:, :, src]
        x = self.prepare(batch)
        self.decode_steps += x.is_decode
        self.prompt_steps += not x.is_decode
        if self.graphs is not None and self.graphs.takes(x):
            hidden = self.graphs.run(x)
            self.graph_steps += 1
        elif self.prompt_graphs is not None and self.prompt_graphs.takes(x):
            hidden = self.prompt_graphs.run(x)
            self.prompt_graph_steps += 1
        else:
            hidden = self.forward(x)
        rows = torch.tensor(x.sample_rows, dtype=torch.long, device=self.device)
        return self.model.logits(hidden[rows]), x.sampling

    def forward(self, x: StepInputs) -> torch.Tensor:
        """The model on exactly this batch (T, hidden), outside any graph."""
        dev = self.device
        q_lens = np.diff(x.cu_seqlens_q)
        meta = AttentionMetadata(
            cu_seqlens_q=torch.from_numpy(x.cu_seqlens_q).to(dev),
            seqused_k=torch.from_numpy(x.seqused_k).to(dev),
            block_tables=torch.from_numpy(x.block_tables).to(dev),
            slot_mapping=torch.from_numpy(x.slots).to(dev),
            max_seqlen_q=int(q_lens.max()),
            max_seqlen_k=int(x.seqused_k.max()),
            fresh=bool(np.array_equal(q_lens, x.seqused_k)),
        )
        embeds = None
        if x.embeds is not None:
            rows, values = x.embeds
            embeds = (torch.from_numpy(rows).to(dev), values.to(dev))
        ids = torch.from_numpy(x.input_ids).to(dev)
        positions = torch.from_numpy(x.positions).to(dev)
        return self.model(ids, positions, self.kv_caches, meta, embeds)

    def prepare(self, batch: Batch) -> StepInputs:
        # every request computes its last generated token (so n == 1, and no injected rows)
        if all(r.output_ids and r.num_computed_tokens == r.num_tokens - 1 for r in batch.requests):
            return self._prepare_decode(batch.requests)
        return self._prepare_any(batch)

    def _prepare_any(self, batch: Batch) -> StepInputs:
        """Any batch: prompt chunks, injected embeddings, decodes."""
        bs = self.config.block_size
        ids, positions, slots, sample_rows, sampling = [], [], [], [], []
        embed_rows, embed_values = [], []
        cu, seqused = [0], []
        for req, n in zip(batch.requests, batch.num_new_tokens, strict=True):
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            pos = np.arange(start, end)
            table = np.asarray(req.block_table, dtype=np.int64)
            row0 = cu[-1]
            ids += tokens_of(req, start, end)
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            for e in req.embeds:
                lo, hi = max(e.start, start), min(e.end, end)
                if lo < hi:
                    embed_rows.append(np.arange(lo, hi) - start + row0)
                    embed_values.append(e.values[lo - e.start : hi - e.start])
            cu.append(row0 + n)
            seqused.append(end)
            if end == req.num_tokens:
                sample_rows.append(cu[-1] - 1)
                sampling.append(req)
        embeds = None
        if embed_rows:
            embeds = (np.concatenate(embed_rows), torch.cat(embed_values))
        return StepInputs(
            input_ids=np.asarray(ids, dtype=np.int64),
            positions=np.concatenate(positions),
            slots=np.concatenate(slots),
            cu_seqlens_q=np.asarray(cu, dtype=np.int32),
            seqused_k=np.asarray(seqused, dtype=np.int32),
            block_tables=block_tables(batch.requests),
            embeds=embeds,
            sample_rows=sample_rows,
            sampling=sampling,
        )

    def _prepare_decode(self, reqs: list[Request]) -> StepInputs:
        """`prepare` for a batch where every request computes its last generated token (the
        common step), with numpy over the batch instead of per request: the host's share of a
        decode step grows with the batch, and the device waits for it."""
        bs, B = self.config.block_size, len(reqs)
        pos = np.fromiter((r.num_computed_tokens for r in reqs), np.int64, B)
        tables = block_tables(reqs)
        return StepInputs(
            input_ids=np.fromiter((r.output_ids[-1] for r in reqs), np.int64, B),
            positions=pos,
            slots=tables[np.arange(B), pos // bs].astype(np.int64) * bs + pos % bs,
            cu_seqlens_q=np.arange(B + 1, dtype=np.int32),
            seqused_k=(pos + 1).astype(np.int32),
            block_tables=tables,
            embeds=None,
            sample_rows=list(range(B)),
            sampling=list(reqs),
        )


def block_tables(reqs: list[Request]) -> np.ndarray:
    """(B, longest) int32: each request's block table, zero padded."""
    lengths = np.fromiter((len(r.block_table) for r in reqs), np.int64, len(reqs))
    flat = np.fromiter(
        itertools.chain.from_iterable(r.block_table for r in reqs), np.int32, int(lengths.sum())
    )
    tables = np.zeros((len(reqs), int(lengths.max())), dtype=np.int32)
    tables[np.arange(tables.shape[1]) < lengths[:, None]] = flat
    return tables
