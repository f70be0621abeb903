"""SAN-M: self-attention with a memory block (FunASR's SANMEncoder and its layers).

Paraformer, Paraformer-streaming, SenseVoice and Fun-ASR-Nano share this encoder. A layer is
pre-norm:

    h = SANMAttention(LayerNorm(x))            # + x when the layer keeps the width
    x = h + FeedForward(LayerNorm(h))

SANMAttention projects q, k, v with one fused `linear_q_k_v`, runs scaled dot-product attention
(`linear_out` after it), and adds an FSMN memory: a depthwise Conv1d (kernel k, no bias) over
v, zero-padded (k - 1) // 2 + shift on the left and the rest on the right, plus v itself. The
FFN is Linear -> ReLU -> Linear. Every LayerNorm has eps 1e-12.

The encoder scales the LFR features by sqrt(d_model) (d_model, not the feature width), adds
sinusoidal positions 1, 2, ... over the feature width, then runs `encoders0` (one layer,
features -> d_model, no residual), `encoders` (the other N - 1) and `after_norm`.

Batches are right-padded; every item gets what it would get alone: keys past an item's length
are masked and its FSMN input is zeroed there, as the zero padding of a lone item is.

`SANMAttention.forward_chunk` is the streaming form (SCAMA, engine/models/paraformer.py): the
queries see cached keys/values of earlier chunks plus the chunk's own; the FSMN sees the chunk
only, zero-padded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-12  # funasr.models.transformer.layer_norm.LayerNorm


def layer_norm(d: int) -> nn.LayerNorm:
    return nn.LayerNorm(d, eps=LN_EPS)


def sinusoidal_positions(positions: Tensor, depth: int) -> Tensor:
    """FunASR's SinusoidalPositionEncoder table: (..., T) positions (from 1) -> (..., T, depth).

    The first half of the channels is sin(p * w_i), the second cos(p * w_i), with
    w_i = exp(-i * ln(10000) / (depth / 2 - 1)), i < depth / 2: float32, in the reference's order
    of operations, so the table is the reference's to the bit on the CPU.
    """
    device = positions.device
    step = torch.log(torch.tensor([10000.0], device=device)) / (depth / 2 - 1)
    inv_timescales = torch.exp(torch.arange(depth // 2, device=device).float() * -step)
    scaled = positions.float()[..., None] * inv_timescales  # (..., T, depth/2)
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


class FeedForward(nn.Module):
    """w_2(ReLU(w_1(x))), both with bias (PositionwiseFeedForward)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d, hidden)
        self.w_2 = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


def fsmn_padding(kernel_size: int, shift: int) -> tuple[int, int]:
    """(left, right) zero padding of the FSMN conv: centred, moved right by `shift` (sanm_shfit)."""
    left = (kernel_size - 1) // 2 + (shift if shift > 0 else 0)
    return left, kernel_size - 1 - left


def attend(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None) -> Tensor:
    """Softmax attention, scale 1/sqrt(d_k). q: (B, H, Tq, dk), k/v: (B, H, Tk, dk),
    key_valid: (B, Tk) bool or None -> (B, Tq, H*dk)."""
    mask = None if key_valid is None else key_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Tq, dk)
    return out.transpose(1, 2).flatten(2)


class SANMAttention(nn.Module):
    """MultiHeadedAttentionSANM: fused q/k/v, attention, FSMN memory over v added to the output."""

    def __init__(self, d_in: int, d: int, heads: int, kernel_size: int, shift: int = 0) -> None:
        super().__init__()
        self.heads, self.d_k = heads, d // heads
        self.linear_q_k_v = nn.Linear(d_in, 3 * d)
        self.fsmn_block = nn.Conv1d(d, d, kernel_size, groups=d, bias=False)
        self.linear_out = nn.Linear(d, d)
        self.padding = fsmn_padding(kernel_size, shift)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (B, T, d_in) -> q, k, v: (B, H, T, dk), and v unsplit: (B, T, d)."""
        B, T, _ = x.shape
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)  # (B, T, d) each

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, self.heads, self.d_k).transpose(1, 2)

        return heads(q), heads(k), heads(v), v

    def memory(self, v: Tensor, valid: Tensor | None) -> Tensor:
        """The FSMN block: v: (B, T, d), valid: (B, T) bool or None -> (B, T, d)."""
        if valid is not None:
            v = v * valid[..., None].to(v.dtype)
        m = self.fsmn_block(F.pad(v.transpose(1, 2), self.padding))  # (B, d, T)
        return m.transpose(1, 2) + v

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """x: (B, T, d_in), valid: (B, T) bool (None: all) -> (B, T, d)."""
        q, k, v, v_flat = self.qkv(x)
        fsmn = self.memory(v_flat, valid)
        if valid is not None:
            fsmn = fsmn * valid[..., None].to(fsmn.dtype)
        return self.linear_out(attend(q, k, v, valid)) + fsmn

    def forward_chunk(
        self, x: Tensor, valid: Tensor, past_k: Tensor, past_v: Tensor, past_valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One streaming chunk per row. x: (B, T, d_in) with valid (B, T); the cached keys and
        values of earlier chunks: (B, H, C, dk) with past_valid (B, C).
        Returns the output (B, T, d) and this chunk's k, v: (B, H, T, dk)."""
        q, k, v, v_flat = self.qkv(x)
        fsmn = self.memory(v_flat, valid)
        keys = torch.cat([past_k, k], dim=2)  # (B, H, C + T, dk)
        values = torch.cat([past_v, v], dim=2)
        out = attend(q, keys, values, torch.cat([past_valid, valid], dim=1))
        return self.linear_out(out) + fsmn, k, v


class SANMEncoderLayer(nn.Module):
    """EncoderLayerSANM, pre-norm: attention (+ residual when d_in == d), then the FFN."""

    def __init__(
        self, d_in: int, d: int, heads: int, ffn: int, kernel_size: int, shift: int = 0
    ) -> None:
        super().__init__()
        self.norm1 = layer_norm(d_in)
        self.self_attn = SANMAttention(d_in, d, heads, kernel_size, shift)
        self.norm2 = layer_norm(d)
        self.feed_forward = FeedForward(d, ffn)
        self.residual = d_in == d

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        h = self.self_attn(self.norm1(x), valid)
        x = x + h if self.residual else h
        return x + self.feed_forward(self.norm2(x))

    def forward_chunk(
        self, x: Tensor, valid: Tensor, past_k: Tensor, past_v: Tensor, past_valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        h, k, v = self.self_attn.forward_chunk(self.norm1(x), valid, past_k, past_v, past_valid)
        x = x + h if self.residual else h
        return x + self.feed_forward(self.norm2(x)), k, v


class SANMEncoder(nn.Module):
    """SANMEncoder (input_layer pe / pe_online, pre-norm): LFR features -> (B, T, d_model)."""

    def __init__(
        self,
        input_size: int,
        d_model: int,
        heads: int,
        ffn: int,
        num_blocks: int,
        kernel_size: int = 11,
        shift: int = 0,
    ) -> None:
        super().__init__()
        self.input_size, self.d_model = input_size, d_model
        self.encoders0 = nn.ModuleList(
            [SANMEncoderLayer(input_size, d_model, heads, ffn, kernel_size, shift)]
        )
        self.encoders = nn.ModuleList(
            SANMEncoderLayer(d_model, d_model, heads, ffn, kernel_size, shift)
            for _ in range(num_blocks - 1)
        )
        self.after_norm = layer_norm(d_model)

    @property
    def layers(self) -> list[SANMEncoderLayer]:
        return [*self.encoders0, *self.encoders]

    def embed(self, feats: Tensor, positions: Tensor) -> Tensor:
        """feats: (B, T, F), positions: (B, T) from 1 -> feats * sqrt(d_model) + positions."""
        pe = sinusoidal_positions(positions, feats.shape[-1]).to(feats.dtype)
        return feats * self.d_model**0.5 + pe

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """feats: (B, T, F) right-padded, lengths: (B,) -> (B, T, d_model); rows past an item's
        length are not meaningful."""
        B, T, _ = feats.shape
        positions = torch.arange(1, T + 1, device=feats.device).expand(B, T)
        valid = torch.arange(T, device=feats.device)[None, :] < lengths[:, None]  # (B, T)
        x = self.embed(feats, positions)
        for layer in self.layers:
            x = layer(x, valid)
        return self.after_norm(x)
