"""FireRedASR2-AED's Transformer decoder as an engine model: self-attention on the paged KV
cache (so beams are engine requests that fork with shared blocks), cross-attention on each
segment's encoder keys and values, computed once per segment.

The engine's runner calls `forward(input_ids, positions, kv_caches, meta, embeds)` on a flat
batch of rows from many requests and knows nothing of encoders. The cross-attention context
comes from the one that drives the engine (engine/aed_engine_search.py): before each step it
says which segment each scheduled request reads (`set_rows`); the rows are grouped by segment and
attend to that segment's keys in one padded batch. The decoder's weights are the loaded
`TransformerDecoder`'s (engine/models/fireredasr2.py), shared, not copied.

One difference from the package: it masks decoder keys whose token is <pad>, which a paged
attention kernel cannot; only a hypothesis that contains <pad> (never one of a trained model)
could differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.fireredasr2 import TransformerDecoder
from engine.request import Request
from kernels.attention import AttentionBackend, AttentionMetadata, store_kv
from kernels.sdpa import sdpa


@dataclass(frozen=True)
class PagedConfig:
    """What the engine reads of a model's config."""

    num_hidden_layers: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int


@dataclass
class CrossContext:
    """Per layer the cross-attention keys and values of the segments, (S, H, T', dk) each, and
    the encoder-frame mask (S, 1, 1, T'), additive."""

    kv: list[tuple[Tensor, Tensor]]
    mask: Tensor


class PagedFireRedDecoder(nn.Module):
    def __init__(self, decoder: TransformerDecoder, attn: AttentionBackend) -> None:
        super().__init__()
        cfg = decoder.cfg
        self.decoder = decoder
        self.attn = attn
        self.heads, self.dk = cfg.n_head, cfg.d_model // cfg.n_head
        self.config = PagedConfig(
            num_hidden_layers=cfg.n_layers_dec,
            num_key_value_heads=cfg.n_head,
            head_dim=self.dk,
            hidden_size=cfg.d_model,
            vocab_size=cfg.odim,
            max_position_embeddings=cfg.pe_maxlen,
        )
        self.context: CrossContext | None = None
        self._row_segment: Tensor | None = None  # (T,) the segment of each row of the step

    def start(self, enc: Tensor, lengths: Tensor) -> None:
        """Compute the segments' cross-attention keys and values (once per segment)."""
        state = self.decoder.start(enc, lengths, beams=1)
        self.context = CrossContext(state.cross, state.cross_mask)

    def set_rows(self, requests: list[Request], new_tokens: list[int], segment: dict) -> None:
        """The next step's rows: request i contributes new_tokens[i] rows, reading
        segment[request id]."""
        rows = [segment[r.id] for r, n in zip(requests, new_tokens, strict=True) for _ in range(n)]
        self._row_segment = torch.tensor(rows, device=self.decoder.pe.device)

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        kv_caches: list[tuple[Tensor, Tensor]],
        meta: AttentionMetadata,
        embeds: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        dec, T = self.decoder, input_ids.shape[0]
        x = dec.tgt_word_emb(input_ids) * dec.scale + dec.pe[positions]
        group = _Groups(self._row_segment, self.context.mask.shape[0])
        for layer, (k_cache, v_cache), (ck, cv) in zip(
            dec.layer_stack, kv_caches, self.context.kv, strict=True
        ):
            h = layer.self_attn_norm(x)
            a = layer.self_attn
            q = a.w_qs(h).view(T, self.heads, self.dk)
            k = a.w_ks(h).view(T, self.heads, self.dk)
            v = a.w_vs(h).view(T, self.heads, self.dk)
            store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
            o = self.attn(q, k_cache, v_cache, meta, self.dk**-0.5)
            x = x + a.fc(o.reshape(T, -1))
            h = layer.cross_attn_norm(x)
            c = layer.cross_attn
            q = group.pad(c.w_qs(h)).unflatten(-1, (self.heads, self.dk)).transpose(1, 2)
            if group.every_segment:  # no gather (a copy of every segment's keys) needed
                mask = self.context.mask
            else:
                ck, cv = ck[group.segments], cv[group.segments]
                mask = self.context.mask[group.segments]
            o = sdpa(q, ck, cv, attn_mask=mask.to(q.dtype))
            x = x + c.fc(group.unpad(o.transpose(1, 2).flatten(2)))
            x = x + layer.mlp(layer.mlp_norm(x))
        return x

    def logits(self, hidden: Tensor) -> Tensor:
        dec = self.decoder
        return F.linear(dec.layer_norm_out(hidden), dec.tgt_word_emb.weight).float()


class _Groups:
    """Rows grouped by segment, padded: (T, d) <-> (S', G, d) for the S' segments present."""

    def __init__(self, row_segment: Tensor, num_segments: int) -> None:
        self.segments, inverse, counts = row_segment.unique(return_inverse=True, return_counts=True)
        self.every_segment = self.segments.numel() == num_segments  # sorted: 0 .. S-1
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - starts[inverse[order]]
        self.index = (inverse, rank)
        self.shape = (self.segments.numel(), int(counts.max()))

    def pad(self, x: Tensor) -> Tensor:
        out = x.new_zeros(*self.shape, x.shape[-1])
        out[self.index] = x
        return out

    def unpad(self, x: Tensor) -> Tensor:
        return x[self.index]
