"""The model runner: owns the KV cache, turns a scheduled batch into flat tensors, runs the model.

A batch of B requests becomes T = sum(new tokens) rows: token ids, positions, the cache slot of
each row, each request's block table, and the rows of injected embeddings. Logits are computed
only for rows whose request has all its tokens computed after this step (it samples next).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.config import EngineConfig
from engine.request import Request
from engine.scheduler import Batch
from kernels.attention import AttentionMetadata


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    meta: AttentionMetadata
    embeds: tuple[torch.Tensor, torch.Tensor] | None
    sample_rows: torch.Tensor  # (S,) rows whose logits are sampled
    sampling: list[Request]  # the S requests that sample, in row order


def kv_block_bytes(model_cfg, config: EngineConfig) -> int:
    per_token = 2 * model_cfg.num_hidden_layers * model_cfg.num_key_value_heads * model_cfg.head_dim
    return per_token * config.block_size * torch.tensor([], dtype=config.dtype).element_size()


def tokens_of(req: Request, start: int, end: int) -> list[int]:
    n_prompt = len(req.prompt_ids)
    if start >= n_prompt:
        return req.output_ids[start - n_prompt : end - n_prompt]
    return req.token_ids[start:end]


class ModelRunner:
    def __init__(self, model: torch.nn.Module, config: EngineConfig, num_blocks: int) -> None:
        self.model = model
        self.config = config
        self.device = torch.device(config.device)
        cfg = model.config
        self.kv = torch.zeros(
            2,
            cfg.num_hidden_layers,
            num_blocks,
            config.block_size,
            cfg.num_key_value_heads,
            cfg.head_dim,
            dtype=config.dtype,
            device=self.device,
        )
        self.kv_caches = [(self.kv[0, i], self.kv[1, i]) for i in range(cfg.num_hidden_layers)]

    @torch.inference_mode()
    def run(self, batch: Batch) -> tuple[torch.Tensor, list[Request]]:
        """Run one step; returns the logits (S, vocab) of the requests that sample, and them."""
        if batch.copies:
            src, dst = (
                torch.tensor(c, device=self.device) for c in zip(*batch.copies, strict=True)
            )
            self.kv[:, :, dst] = self.kv[:, :, src]
        x = self.prepare(batch)
        hidden = self.model(x.input_ids, x.positions, self.kv_caches, x.meta, x.embeds)
        return self.model.logits(hidden[x.sample_rows]), x.sampling

    def prepare(self, batch: Batch) -> StepInputs:
        bs = self.config.block_size
        ids, positions, slots, sample_rows, sampling = [], [], [], [], []
        embed_rows, embed_values = [], []
        cu, seqused, tables = [0], [], []
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
            tables.append(req.block_table)
            if end == req.num_tokens:
                sample_rows.append(cu[-1] - 1)
                sampling.append(req)
        width = max(len(t) for t in tables)
        padded = np.zeros((len(tables), width), dtype=np.int32)
        for i, t in enumerate(tables):
            padded[i, : len(t)] = t
        dev = self.device
        meta = AttentionMetadata(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            seqused_k=torch.tensor(seqused, dtype=torch.int32, device=dev),
            block_tables=torch.from_numpy(padded).to(dev),
            slot_mapping=torch.from_numpy(np.concatenate(slots)).to(dev),
            max_seqlen_q=max(batch.num_new_tokens),
            max_seqlen_k=max(seqused),
        )
        embeds = None
        if embed_rows:
            rows = torch.from_numpy(np.concatenate(embed_rows)).to(dev)
            embeds = (rows, torch.cat(embed_values).to(dev))
        return StepInputs(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.from_numpy(np.concatenate(positions)).to(dev),
            meta=meta,
            embeds=embeds,
            sample_rows=torch.tensor(sample_rows, dtype=torch.long, device=dev),
            sampling=sampling,
        )
