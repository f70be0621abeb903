"""FireRedASR2-AED (FireRedTeam): Conformer encoder, Transformer decoder with cross-attention,
CTC head, as released in `model.pth.tar` (argparse `args` + state dict).

    feats (B, T, 80)  Kaldi fbank after cmvn.ark (audio/kaldi_cmvn.py), 10 ms a frame
      -> right-padded with 6 zero frames; Conv2d(1->32, 3, s2) ReLU, Conv2d(32->32, 3, s2) ReLU,
         Linear(32 * 19 -> d)                                     (B, T', d), T' = ceil(T / 4)
      -> N x Conformer block (relative positions, Transformer-XL style):
           x + 0.5 FFN(x)  (FFN = LN, Linear 4d, Swish, Linear d)
           + MHSA (LN on q, k, v separately; no biases; pos_bias_u/v, linear_pos)
           + conv (LN, pointwise d -> 4d, GLU -> 2d, depthwise k on 2d, LayerNorm(2d) named
             `batch_norm`, Swish, pointwise 2d -> d)
           0.5 x + 0.5 (x + FFN(x)), LayerNorm                   h: (B, T', d)
      -> CTC head: log_softmax(ctc_lo(h))                           (B, T', V)
      -> decoder, autoregressive from <sos>: emb * sqrt(d) + sinusoids; per layer pre-LN
         self-attention, cross-attention on h, GELU MLP; layer_norm_out; output projection
         tied to the embedding                                      logits (B, V)

Attention in the decoder: w_qs and w_vs and fc have biases, w_ks none. Keys whose token is
<pad> are masked in the decoder's self-attention (the package masks them), and encoder frames
past an item's length everywhere. Items of a batch get what they would get alone.

The decoder runs incrementally (`DecoderState`): each step appends one position's self-attention
keys and values per layer; the cross-attention keys and values are computed once per segment
(`TransformerDecoder.start`) and read by all its beams (engine/aed_beam_search.py reorders them).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.sdpa import sdpa

SUBSAMPLE_CHANNELS = 32
RIGHT_PAD = 6  # Conv2dSubsampling's context (7 frames) minus one, zero frames appended
REL_PE_LEN = 5000  # the encoder's relative encoding covers +-4999 frames (~200 s)
NEG_INF = float("-inf")


@dataclass(frozen=True)
class FireRedConfig:
    idim: int = 80
    odim: int = 8667
    d_model: int = 1280
    n_head: int = 20
    n_layers_enc: int = 16
    n_layers_dec: int = 16
    kernel_size: int = 33
    pe_maxlen: int = 5000
    sos_id: int = 3
    eos_id: int = 4
    pad_id: int = 2
    blank_id: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FireRedConfig:
        """The `args` Namespace of model.pth.tar (or asr_encoder.pth.tar)."""
        fields = {k: getattr(args, k) for k in cls.__dataclass_fields__ if k != "blank_id"}
        for k in ("sos_id", "eos_id", "pad_id"):
            fields[k] = getattr(args, k, getattr(cls, k))
        return cls(**fields, blank_id=getattr(args, "blank_id", 0))


def sinusoids(positions: Tensor, d: int) -> Tensor:
    """(P, d): sin at even, cos at odd channels, of position * 10000^(-2i/d), rounded as the
    released checkpoints' tables are (the log of 10000 taken in float32)."""
    log_base = torch.log(torch.tensor(10000.0)).item()
    freq = torch.exp(torch.arange(0, d, 2).float() * -(log_base / d))
    angle = positions.float()[:, None] * freq
    out = torch.zeros(positions.numel(), d)
    out[:, 0::2], out[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return out


def encoder_lengths(frames: Tensor) -> Tensor:
    """Encoder frames of T feature frames: two stride-2 halvings, rounding up."""
    return (frames + 3) // 4


class FeedForward(nn.Module):
    """Conformer FFN with its own residual: x + Linear(Swish(Linear(LN(x))))."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(F.silu(self.up(self.norm(x))))


class RelPosSelfAttention(nn.Module):
    """Self-attention with Transformer-XL relative positions; q, k, v each layer-normed."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dk = heads, d // heads
        self.layer_norm_q, self.layer_norm_k = nn.LayerNorm(d), nn.LayerNorm(d)
        self.layer_norm_v = nn.LayerNorm(d)
        self.w_qs = nn.Linear(d, d, bias=False)
        self.w_ks = nn.Linear(d, d, bias=False)
        self.w_vs = nn.Linear(d, d, bias=False)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.dk))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.dk))
        self.fc = nn.Linear(d, d, bias=False)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.dk)).transpose(1, 2)  # (B, H, T, dk)

    def forward(self, x: Tensor, pos: Tensor, key_pad: Tensor) -> Tensor:
        """x: (B, T, d); pos: (2T - 1, d) encodings of relative positions T-1 .. -(T-1);
        key_pad: (B, 1, 1, T) additive mask (0 or -inf)."""
        B, T, _ = x.shape
        q = self.w_qs(self.layer_norm_q(x)).unflatten(-1, (self.heads, self.dk))  # (B, T, H, dk)
        k = self._heads(self.w_ks(self.layer_norm_k(x)))
        v = self._heads(self.w_vs(self.layer_norm_v(x)))
        p = self.linear_pos(pos).unflatten(-1, (self.heads, self.dk)).permute(1, 2, 0)  # H dk P
        by_offset = ((q + self.pos_bias_v).transpose(1, 2) @ p).contiguous()  # (B, H, T, 2T-1)
        # query i and key j are at relative position i - j, column T-1-i+j of row i: a strided
        # view whose rows step by 2T-2 elements
        s = by_offset.stride()
        bd = by_offset.as_strided((B, self.heads, T, T), (s[0], s[1], s[2] - 1, 1), T - 1)
        scale = 1.0 / math.sqrt(self.dk)
        bias = bd * scale + key_pad
        qu = (q + self.pos_bias_u).transpose(1, 2)
        out = sdpa(qu, k, v, attn_mask=bias.to(qu.dtype), scale=scale)
        return x + self.fc(out.transpose(1, 2).flatten(2))


class ConvModule(nn.Module):
    def __init__(self, d: int, kernel: int) -> None:
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(d)
        self.pointwise_conv1 = nn.Conv1d(d, 4 * d, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(
            2 * d, 2 * d, kernel, padding=(kernel - 1) // 2, groups=2 * d, bias=False
        )
        self.batch_norm = nn.LayerNorm(2 * d)  # a LayerNorm, named so in the checkpoint
        self.pointwise_conv2 = nn.Conv1d(2 * d, d, 1, bias=False)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x: (B, T, d); valid: (B, T, 1) bool. Padded frames enter and leave as zeros."""
        y = torch.where(valid, self.pre_layer_norm(x), 0.0).transpose(1, 2)
        y = self.depthwise_conv(F.glu(self.pointwise_conv1(y), dim=1))
        y = F.silu(self.batch_norm(y.transpose(1, 2))).transpose(1, 2)
        y = self.pointwise_conv2(y).transpose(1, 2)
        return x + torch.where(valid, y, 0.0)


class ConformerBlock(nn.Module):
    def __init__(self, d: int, heads: int, kernel: int) -> None:
        super().__init__()
        self.ffn1 = FeedForward(d)
        self.mhsa = RelPosSelfAttention(d, heads)
        self.conv = ConvModule(d, kernel)
        self.ffn2 = FeedForward(d)
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, pos: Tensor, key_pad: Tensor, valid: Tensor) -> Tensor:
        x = 0.5 * x + 0.5 * self.ffn1(x)  # ffn1 adds x itself: x + 0.5 FFN(x)
        x = self.conv(self.mhsa(x, pos, key_pad), valid)
        return self.layer_norm(0.5 * x + 0.5 * self.ffn2(x))


class Subsampling(nn.Module):
    def __init__(self, idim: int, d: int) -> None:
        super().__init__()
        c = SUBSAMPLE_CHANNELS
        self.conv = nn.Sequential(
            nn.Conv2d(1, c, 3, 2), nn.ReLU(), nn.Conv2d(c, c, 3, 2), nn.ReLU()
        )
        self.out = nn.Linear(c * (((idim - 1) // 2 - 1) // 2), d)

    def forward(self, feats: Tensor) -> Tensor:
        x = self.conv(F.pad(feats, (0, 0, 0, RIGHT_PAD))[:, None])  # (B, C, T', F')
        return self.out(x.transpose(1, 2).flatten(2))


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: FireRedConfig) -> None:
        super().__init__()
        self.input_preprocessor = Subsampling(cfg.idim, cfg.d_model)
        self.layer_stack = nn.ModuleList(
            ConformerBlock(cfg.d_model, cfg.n_head, cfg.kernel_size)
            for _ in range(cfg.n_layers_enc)
        )
        positions = torch.arange(REL_PE_LEN - 1, -REL_PE_LEN, -1)  # 4999 .. -4999
        self.register_buffer("rel_pe", sinusoids(positions, cfg.d_model))

    def forward(self, feats: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, idim), frames (B,) -> (B, T', d) and lengths (B,); frames past an
        item's length hold what the layers make of padding (masked everywhere downstream)."""
        x = self.input_preprocessor(feats)
        T = x.shape[1]
        lengths = encoder_lengths(frames)
        valid = torch.arange(T, device=x.device)[None] < lengths[:, None]  # (B, T)
        key_pad = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
        key_pad = key_pad.masked_fill(~valid, NEG_INF)[:, None, None]
        mid = REL_PE_LEN - 1
        pos = self.rel_pe[mid - T + 1 : mid + T].to(x.dtype)  # relative T-1 .. -(T-1)
        for layer in self.layer_stack:
            x = layer(x, pos, key_pad, valid[..., None])
        return x, lengths


class DecoderAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dk = heads, d // heads
        self.w_qs = nn.Linear(d, d)
        self.w_ks = nn.Linear(d, d, bias=False)
        self.w_vs = nn.Linear(d, d)
        self.fc = nn.Linear(d, d)

    def split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.dk)).transpose(1, 2)  # (B, H, T, dk)

    def kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.w_ks(x)), self.split(self.w_vs(x))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """x: (B, Tq, d) queries; k, v: (B, H, Tk, dk); mask: additive, broadcast to
        (B, H, Tq, Tk)."""
        q = self.split(self.w_qs(x))
        out = sdpa(q, k, v, attn_mask=mask.to(q.dtype))
        return self.fc(out.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d, 4 * d)
        self.w_2 = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(F.gelu(self.w_1(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.self_attn_norm, self.self_attn = nn.LayerNorm(d), DecoderAttention(d, heads)
        self.cross_attn_norm, self.cross_attn = nn.LayerNorm(d), DecoderAttention(d, heads)
        self.mlp_norm, self.mlp = nn.LayerNorm(d), MLP(d)


@dataclass
class DecoderState:
    """The decoder's cache for R hypothesis rows over S segments, R = S * beams, the rows of a
    segment contiguous: per layer the self-attention keys and values of the positions so far
    ((R, H, t, dk) each), their additive key mask (R, t): -inf where the token is <pad>; per
    layer the cross-attention keys and values of each segment ((S, H, T', dk), computed once
    per segment and read by all its rows) and the encoder-frame mask (S, 1, 1, T')."""

    self_kv: list[tuple[Tensor, Tensor]]
    key_mask: Tensor
    cross: list[tuple[Tensor, Tensor]]
    cross_mask: Tensor

    @property
    def beams(self) -> int:
        return self.key_mask.shape[0] // self.cross_mask.shape[0]

    def select(self, rows: Tensor, segments: Tensor | None = None) -> DecoderState:
        """The state of hypotheses `rows`, which must be `beams` rows of each of `segments`
        (None: all segments, in order) - beam reordering and dropping finished segments."""
        cross, cross_mask = self.cross, self.cross_mask
        if segments is not None:
            cross = [(k[segments], v[segments]) for k, v in cross]
            cross_mask = cross_mask[segments]
        kv = [(k[rows], v[rows]) for k, v in self.self_kv]
        return DecoderState(kv, self.key_mask[rows], cross, cross_mask)


class TransformerDecoder(nn.Module):
    def __init__(self, cfg: FireRedConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.tgt_word_emb = nn.Embedding(cfg.odim, d)
        self.layer_stack = nn.ModuleList(
            DecoderLayer(d, cfg.n_head) for _ in range(cfg.n_layers_dec)
        )
        self.layer_norm_out = nn.LayerNorm(d)
        self.register_buffer("pe", sinusoids(torch.arange(cfg.pe_maxlen), d))
        self.scale = math.sqrt(d)

    def start(self, enc: Tensor, lengths: Tensor, beams: int) -> DecoderState:
        """A state with no positions yet: `beams` rows for each segment of enc (S, T', d)."""
        cross = [layer.cross_attn.kv(enc) for layer in self.layer_stack]
        valid = torch.arange(enc.shape[1], device=enc.device)[None] < lengths[:, None]
        cross_mask = torch.zeros(valid.shape, dtype=enc.dtype, device=enc.device)
        cross_mask = cross_mask.masked_fill(~valid, NEG_INF)[:, None, None]
        R, H, dk = enc.shape[0] * beams, self.cfg.n_head, self.cfg.d_model // self.cfg.n_head
        empty = enc.new_zeros(R, H, 0, dk)
        kv = [(empty, empty) for _ in self.layer_stack]
        return DecoderState(kv, enc.new_zeros(R, 0), cross, cross_mask)

    def forward(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """tokens (R, L): the next L positions of each row -> logits (R, L, V) and the state
        with those positions appended."""
        R, L = tokens.shape
        S, G = state.cross_mask.shape[0], state.beams
        t0 = state.key_mask.shape[1]
        x = self.tgt_word_emb(tokens) * self.scale + self.pe[t0 : t0 + L]
        new_mask = torch.zeros(R, L, dtype=x.dtype, device=x.device)
        new_mask = new_mask.masked_fill(tokens == self.cfg.pad_id, NEG_INF)
        key_mask = torch.cat([state.key_mask, new_mask], dim=1)  # (R, t0 + L)
        causal = torch.ones(L, t0 + L, dtype=torch.bool, device=x.device).tril(t0)
        self_mask = key_mask[:, None, None].masked_fill(~causal, NEG_INF)  # (R, 1, L, t0+L)
        kvs = []
        for layer, (k0, v0), (ck, cv) in zip(
            self.layer_stack, state.self_kv, state.cross, strict=True
        ):
            h = layer.self_attn_norm(x)
            k, v = layer.self_attn.kv(h)
            k, v = torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)
            kvs.append((k, v))
            x = x + layer.self_attn.attend(h, k, v, self_mask)
            # the G rows of a segment query its keys together: (S, G * L, d) against (S, T')
            h = layer.cross_attn_norm(x).reshape(S, G * L, -1)
            x = x + layer.cross_attn.attend(h, ck, cv, state.cross_mask).reshape(R, L, -1)
            x = x + layer.mlp(layer.mlp_norm(x))
        logits = F.linear(self.layer_norm_out(x), self.tgt_word_emb.weight)
        return logits, DecoderState(kvs, key_mask, state.cross, state.cross_mask)


class FireRedAed(nn.Module):
    """Encoder, decoder and CTC head; `load_weights` takes model.pth.tar's state dict."""

    def __init__(self, cfg: FireRedConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = ConformerEncoder(cfg)
        self.decoder = TransformerDecoder(cfg)
        self.ctc_lo = nn.Linear(cfg.d_model, cfg.odim)

    def ctc_log_probs(self, enc: Tensor) -> Tensor:
        return F.log_softmax(self.ctc_lo(enc).float(), dim=-1)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """model.pth.tar's `model_state_dict` (FireRedAsrAed's keys); every weight must be
        there. The positional tables are the checkpoint's buffers ((1, P, d) there); the tied
        output projection is the embedding."""
        ours = {checkpoint_key(k): k for k in self.state_dict()}
        missing = [k for k in ours if k not in state]
        if missing:
            raise ValueError(f"checkpoint lacks {missing[:5]}{'...' if len(missing) > 5 else ''}")
        tables = ("encoder.positional_encoding.pe", "decoder.positional_encoding.pe")
        self.load_state_dict({ours[k]: state[k][0] if k in tables else state[k] for k in ours})


# our parameter names -> the checkpoint's (FireRedAsrAed's module paths)
_RENAMES = [
    (".ffn1.norm.", ".ffn1.net.0."), (".ffn1.up.", ".ffn1.net.1."), (".ffn1.down.", ".ffn1.net.4."),
    (".ffn2.norm.", ".ffn2.net.0."), (".ffn2.up.", ".ffn2.net.1."), (".ffn2.down.", ".ffn2.net.4."),
    ("encoder.rel_pe", "encoder.positional_encoding.pe"),
    ("decoder.pe", "decoder.positional_encoding.pe"), ("ctc_lo.", "ctc.ctc_lo."),
]  # fmt: skip


def checkpoint_key(name: str) -> str:
    for ours, theirs in _RENAMES:
        if ours in name:
            return name.replace(ours, theirs, 1)
    return name
