"""Paraformer and Paraformer-streaming (FunASR): SAN-M encoder, CIF predictor, one-pass decoder.

    feats (B, T, 560)  LFR-stacked fbank after CMVN (audio/fbank.py), 60 ms a frame
      -> SANMEncoder                       h: (B, T, d)
      -> CIF predictor: alphas a_t = sigmoid(Linear(ReLU(Conv1d(h)))) in [0, 1]; integrate and
         fire: walk t, accumulate a_t * h_t, and each time the running sum of a crosses 1, emit
         the accumulated vector (the crossing a_t split between the two tokens)
                                           e: (B, N, d), N = floor(sum a + tail_threshold)
      -> ParaformerSANMDecoder, non-autoregressive: e is the input, h the cross-attention memory
                                           logits: (B, N, V) -> argmax -> token ids

Decoder layer: x += FSMN(LN(FFN(LN(x)))); x += CrossAttention(LN(x), h), with the decoder FFN
w_1 -> ReLU -> LayerNorm -> w_2 (no bias); then `decoders3` (one FFN(LN(x)), no residual),
`after_norm`, `output_layer`. The FSMN is the encoder's memory block without attention.

Paraformer-streaming (SANMEncoderChunkOpt, `input_layer: pe_online`) has the same weights and
runs chunk by chunk with the caches of funasr's `generate(cache=..., chunk_size=[0, 10, 5],
encoder_chunk_look_back=4, decoder_chunk_look_back=1)`, which `stream_step` reproduces, batched
over streams (a chunk of each stream that has one ready):
- a chunk is 10 new LFR frames (600 ms); positions continue across chunks (`StreamState.start`);
- the encoder input is the last 5 embedded frames of the previous input (zeros at first) and the
  chunk's: 15 frames, of which the last 5 are look-ahead;
- each layer's queries attend to that layer's cached keys/values of the 4 previous chunks (40
  frames, look-ahead excluded) and to the chunk's own 15; the FSMN sees the 15 only;
- the CIF carries its partial sum across chunks (`cif_alpha`, `cif_hidden`); alphas of the
  look-ahead frames are zeroed except at the final chunk, which also adds the tail threshold;
- the decoder keeps per layer the last 10 FSMN inputs and the cross-attention keys/values of the
  previous chunk's encoder output (look-back 1); it runs only on chunks that fire tokens;
- at the end, a final piece under 60 ms of audio becomes a "tail chunk": the 5 carried frames
  alone, scaled by sqrt(d) a second time (funasr scales its cached frames in place).
Work per chunk is constant: 15 queries over at most 55 keys per layer, whatever came before.

Batches are right-padded with validity masks; every item gets what it would get alone (so the
offline path equals funasr with batch size 1, where funasr's own padded batches differ slightly:
its predictor and CIF tail read the encoder's padding rows).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.sanm import SANMEncoder, attend, fsmn_padding, layer_norm

FRAME_SAMPLES = 960  # one LFR frame: 6 x 10 ms at 16 kHz (funasr's constant)


@dataclass(frozen=True)
class ParaformerConfig:
    """The model's shape, from a FunASR config.yaml (see `from_funasr`); defaults are funasr's."""

    input_size: int = 560  # n_mels * lfr_m
    vocab_size: int = 8404
    d_model: int = 256
    encoder_heads: int = 4
    encoder_ffn: int = 2048
    encoder_blocks: int = 6
    encoder_kernel: int = 11
    encoder_shift: int = 0
    decoder_heads: int = 4
    decoder_ffn: int = 2048
    decoder_blocks: int = 6
    decoder_att_layers: int = 6
    decoder_kernel: int = 21
    decoder_shift: int = 0
    cif_l_order: int = 1
    cif_r_order: int = 1
    cif_threshold: float = 1.0
    cif_tail_threshold: float = 0.0
    cif_smooth_factor: float = 1.0
    cif_noise_threshold: float = 0.0
    blank_id: int = 0
    sos: int = 1
    eos: int = 2
    streaming: bool = False

    @classmethod
    def from_funasr(cls, config: dict[str, Any], vocab_size: int) -> ParaformerConfig:
        """From config.yaml's `model`, `encoder(_conf)`, `decoder(_conf)`, `predictor(_conf)`,
        `frontend_conf` and `model_conf`; refuses variants this file does not implement."""
        model = config.get("model")
        if model not in ("Paraformer", "ParaformerStreaming"):
            raise ValueError(f"not a Paraformer config (model: {model!r})")
        streaming = model == "ParaformerStreaming"
        want = {
            "encoder": "SANMEncoderChunkOpt" if streaming else "SANMEncoder",
            "decoder": "ParaformerSANMDecoder",
            "predictor": "CifPredictorV2",
        }
        for part, name in want.items():
            if config.get(part) != name:
                raise ValueError(f"{model}: {part} {config.get(part)!r} is not supported ({name})")
        enc = config.get("encoder_conf") or {}
        dec = config.get("decoder_conf") or {}
        pred = config.get("predictor_conf") or {}
        front = config.get("frontend_conf") or {}
        conf = config.get("model_conf") or {}
        checks = {
            "encoder input_layer": (enc.get("input_layer"), "pe_online" if streaming else "pe"),
            "encoder attention": (enc.get("selfattention_layer_type", "sanm"), "sanm"),
            "encoder normalize_before": (enc.get("normalize_before", True), True),
            "encoder concat_after": (enc.get("concat_after", False), False),
            "decoder normalize_before": (dec.get("normalize_before", True), True),
            "decoder concat_after": (dec.get("concat_after", False), False),
        }  # fmt: skip
        for what, (got, expected) in checks.items():
            if got != expected:
                raise ValueError(f"{model}: {what} {got!r} is not supported ({expected!r})")
        if streaming and dec.get("num_blocks", 6) != dec.get("att_layer_num", 6):
            raise ValueError(f"{model}: decoder layers without cross-attention are offline only")
        decoder_shift = dec.get("sanm_shfit", 0)
        if decoder_shift is None:
            decoder_shift = (dec.get("kernel_size", 21) - 1) // 2
        return cls(
            input_size=front.get("n_mels", 80) * front.get("lfr_m", 1),
            vocab_size=vocab_size,
            d_model=enc.get("output_size", 256),
            encoder_heads=enc.get("attention_heads", 4),
            encoder_ffn=enc.get("linear_units", 2048),
            encoder_blocks=enc.get("num_blocks", 6),
            encoder_kernel=enc.get("kernel_size", 11),
            encoder_shift=enc.get("sanm_shfit", 0),
            decoder_heads=dec.get("attention_heads", 4),
            decoder_ffn=dec.get("linear_units", 2048),
            decoder_blocks=dec.get("num_blocks", 6),
            decoder_att_layers=dec.get("att_layer_num", 6),
            decoder_kernel=dec.get("kernel_size", 21),
            decoder_shift=decoder_shift,
            cif_l_order=pred["l_order"],
            cif_r_order=pred["r_order"],
            cif_threshold=float(pred.get("threshold", 1.0)),
            cif_tail_threshold=float(pred.get("tail_threshold", 0.0)),
            cif_smooth_factor=float(pred.get("smooth_factor", 1.0)),
            cif_noise_threshold=float(pred.get("noise_threshold", 0.0)),
            blank_id=conf.get("blank_id", 0),
            sos=conf.get("sos", 1),
            eos=conf.get("eos", 2),
            streaming=streaming,
        )


@dataclass(frozen=True)
class ChunkConfig:
    """The streaming settings of funasr's `generate` (its defaults for paraformer-zh-streaming)."""

    chunk_size: tuple[int, int, int] = (0, 10, 5)  # [left context, chunk, look-ahead] frames
    encoder_look_back: int = 4  # chunks of cached keys/values per encoder layer; -1: all
    decoder_look_back: int = 1  # chunks of cached encoder output per decoder layer

    def __post_init__(self) -> None:
        if self.chunk_size[2] <= 0 or self.chunk_size[1] <= 0:
            raise ValueError("chunk_size needs a chunk and a look-ahead of at least one frame")

    @property
    def stride_samples(self) -> int:
        """Audio samples per chunk (9600 = 600 ms)."""
        return self.chunk_size[1] * FRAME_SAMPLES

    @property
    def overlap(self) -> int:
        """Embedded frames carried from one chunk's input into the next."""
        return self.chunk_size[0] + self.chunk_size[2]


# ---- CIF predictor ---------------------------------------------------------------------------


class CifPredictor(nn.Module):
    """CifPredictorV2: alphas from the encoder output, then integrate-and-fire."""

    def __init__(self, cfg: ParaformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.padding = (cfg.cif_l_order, cfg.cif_r_order)
        self.cif_conv1d = nn.Conv1d(d, d, cfg.cif_l_order + cfg.cif_r_order + 1)
        self.cif_output = nn.Linear(d, 1)
        self.threshold = cfg.cif_threshold
        self.tail_threshold = cfg.cif_tail_threshold
        self.smooth_factor = cfg.cif_smooth_factor
        self.noise_threshold = cfg.cif_noise_threshold

    def alphas(self, h: Tensor, valid: Tensor) -> Tensor:
        """h: (B, T, d), valid: (B, T) -> alphas (B, T) float32, zero past each length."""
        h = h * valid[..., None].to(h.dtype)
        c = torch.relu(self.cif_conv1d(F.pad(h.transpose(1, 2), self.padding)))  # (B, d, T)
        a = torch.sigmoid(self.cif_output(c.transpose(1, 2))).squeeze(-1).float()  # (B, T)
        a = torch.relu(a * self.smooth_factor - self.noise_threshold)
        return a * valid

    def fire(self, h: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Offline: h (B, T, d), lengths (B,) -> acoustic embeddings (B, N, d), token counts
        (B,) long, the alphas and the CIF peaks (both (B, T + 1) with the tail frame, or T)."""
        B, T, _ = h.shape
        valid = torch.arange(T, device=h.device)[None, :] < lengths[:, None]
        alphas = self.alphas(h, valid)
        h = (h * valid[..., None].to(h.dtype)).float()
        if self.tail_threshold > 0.0:
            # one more frame, of zeros, whose alpha is the tail threshold: a last token whose
            # weight is at least 1 - tail_threshold still fires
            alphas = F.pad(alphas, (0, 1))
            alphas[torch.arange(B, device=h.device), lengths] += self.tail_threshold
            h = F.pad(h, (0, 0, 0, 1))
            token_num = torch.floor(alphas.sum(-1))
        else:
            token_num = torch.round(alphas.sum(-1))
        token_num = token_num.long()
        embeds, peaks = integrate_and_fire(h, alphas, int(token_num.max()))
        return embeds, token_num, alphas, peaks


def integrate_and_fire(h: Tensor, alphas: Tensor, n_max: int) -> tuple[Tensor, Tensor]:
    """CIF over whole utterances, threshold 1 (funasr's vectorised `cif_v1`, same arithmetic).

    With A_t = sum_{s<=t} a_s (float64 running sum, then float32), frame t fires when floor(A_t)
    passes an integer; a token is the difference of the prefix sums of a * h between consecutive
    firing frames, moving the fractional part r = frac(A_t) of each firing frame's weight onto the
    next token. h: (B, T, d), alphas: (B, T) -> the tokens (B, n_max, d), zero past an item's
    fires, and the peaks (B, T): frac(A_t), plus 1 where t fires (funasr's `cif_peak`).
    """
    B, T, d = h.shape
    prefix = torch.cumsum(alphas, dim=1, dtype=torch.float64).float()  # (B, T)
    whole = torch.floor(prefix)
    fired = whole - F.pad(whole, (1, 0))[:, :-1] > 0  # (B, T)
    out = h.new_zeros(B, n_max, d)
    fires = (fired.float() + prefix) - whole
    if not fired.any() or n_max == 0:
        return out, fires
    remains = fires - torch.floor(fires)  # frac(A_t), as the reference rounds it
    weighted = torch.cumsum(alphas[..., None] * h, dim=1)  # (B, T, d)

    b, t = fired.nonzero(as_tuple=True)  # K fires, item-major
    counts = fired.sum(1)  # (B,)
    first = torch.cumsum(counts, 0) - counts  # index of each item's first fire among the K
    rank = torch.arange(b.numel(), device=h.device) - first[b]  # 0, 1, ... within an item
    at = weighted[b, t]  # (K, d)
    rest = remains[b, t][:, None] * h[b, t]  # (K, d) weight moved on to the next token

    def previous(x: Tensor) -> Tensor:  # the item's previous fire's row (zeros for its first)
        return torch.where((rank == 0)[:, None], 0.0, torch.roll(x, 1, dims=0))

    tokens = at - previous(at) + previous(rest) - rest
    keep = rank < n_max
    out[b[keep], rank[keep]] = tokens[keep]
    return out, fires


# ---- decoder ---------------------------------------------------------------------------------


class DecoderFeedForward(nn.Module):
    """PositionwiseFeedForwardDecoderSANM: w_2(LayerNorm(ReLU(w_1(x)))), w_2 without bias."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d, hidden)
        self.norm = layer_norm(hidden)
        self.w_2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.norm(torch.relu(self.w_1(x))))


class FSMNBlock(nn.Module):
    """MultiHeadedAttentionSANMDecoder: the FSMN memory alone, x + DepthwiseConv(pad(x))."""

    def __init__(self, d: int, kernel_size: int, shift: int) -> None:
        super().__init__()
        self.fsmn_block = nn.Conv1d(d, d, kernel_size, groups=d, bias=False)
        self.kernel_size = kernel_size
        self.padding = fsmn_padding(kernel_size, shift)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x: (B, N, d), valid: (B, N) -> (B, N, d), zero past each length."""
        x = x * valid[..., None].to(x.dtype)
        m = self.fsmn_block(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)
        return (m + x) * valid[..., None].to(x.dtype)

    def forward_chunk(
        self, x: Tensor, lengths: Tensor, context: Tensor, cached: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Streaming, one chunk of tokens per row. x: (B, N, d) with lengths (B,); context:
        (B, k - 1, d), the last k - 1 frames of the row's previous window (zeros for a first
        chunk); cached: (B,) bool, False for a first chunk.

        A first chunk is padded like the offline block (zeros left and right); later ones see
        the k - 1 frames before them (funasr keeps the padded window as its cache, so those
        include the first chunk's right padding). Returns (B, N, d) and the new context."""
        B, N, d = x.shape
        k = self.kernel_size
        x = x * (torch.arange(N, device=x.device)[None, :] < lengths[:, None])[..., None]
        # window (B, k - 1 + N, d): the context, then x from offset k - 1 (cached) or from the
        # left padding (first chunk; the context is zeros and the right padding comes after x)
        offset = torch.where(cached, k - 1, self.padding[0])  # (B,)
        window = torch.cat([context, x.new_zeros(B, N, d)], dim=1)
        at = (offset[:, None] + torch.arange(N, device=x.device))[..., None].expand(B, N, d)
        window = window.scatter(1, at, x)
        m = self.fsmn_block(window.transpose(1, 2)).transpose(1, 2)  # (B, N, d)
        # the window's last k - 1 frames, either kind: rows N_b .. N_b + k - 2
        tail = (lengths[:, None] + torch.arange(k - 1, device=x.device))[..., None]
        return m + x, window.gather(1, tail.expand(B, k - 1, d))


class CrossAttention(nn.Module):
    """MultiHeadedAttentionCrossAtt: queries from the tokens, keys/values from the encoder."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.d_k = heads, d // heads
        self.linear_q = nn.Linear(d, d)
        self.linear_k_v = nn.Linear(d, 2 * d)
        self.linear_out = nn.Linear(d, d)

    def _split(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, H, T, dk)
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.d_k).transpose(1, 2)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.linear_k_v(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, key_valid: Tensor) -> Tensor:
        """x: (B, N, d); k, v: (B, H, T, dk); key_valid: (B, T) -> (B, N, d)."""
        return self.linear_out(attend(self._split(self.linear_q(x)), k, v, key_valid))


class DecoderLayer(nn.Module):
    """DecoderLayerSANM: FFN, then the FSMN block (with residual), then cross-attention (with
    residual). Without the FSMN block (decoders3) the FFN output is the layer's output."""

    def __init__(self, cfg: ParaformerConfig, fsmn_shift: int | None, cross: bool) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = layer_norm(d)
        self.feed_forward = DecoderFeedForward(d, cfg.decoder_ffn)
        self.self_attn = None
        if fsmn_shift is not None:
            self.norm2 = layer_norm(d)
            self.self_attn = FSMNBlock(d, cfg.decoder_kernel, fsmn_shift)
        self.src_attn = None
        if cross:
            self.norm3 = layer_norm(d)
            self.src_attn = CrossAttention(d, cfg.decoder_heads)

    def forward(self, x: Tensor, valid: Tensor, memory: Tensor, memory_valid: Tensor) -> Tensor:
        h = self.feed_forward(self.norm1(x))
        if self.self_attn is None:
            return h
        x = x + self.self_attn(self.norm2(h), valid)
        if self.src_attn is not None:
            k, v = self.src_attn.keys_values(memory)
            x = x + self.src_attn(self.norm3(x), k, v, memory_valid)
        return x


class ParaformerDecoder(nn.Module):
    """ParaformerSANMDecoder. `embed` (the token embedding used in training) is not kept."""

    def __init__(self, cfg: ParaformerConfig) -> None:
        super().__init__()
        self.decoders = nn.ModuleList(
            DecoderLayer(cfg, cfg.decoder_shift, cross=True) for _ in range(cfg.decoder_att_layers)
        )
        extra = cfg.decoder_blocks - cfg.decoder_att_layers
        self.decoders2 = nn.ModuleList(DecoderLayer(cfg, 0, cross=False) for _ in range(extra))
        self.decoders3 = nn.ModuleList([DecoderLayer(cfg, None, cross=False)])
        self.after_norm = layer_norm(cfg.d_model)
        self.output_layer = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(
        self, embeds: Tensor, lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        """embeds: (B, N, d) with lengths (B,); memory: (B, T, d) with memory_lengths (B,)
        -> logits (B, N, V)."""
        valid = torch.arange(embeds.shape[1], device=embeds.device)[None, :] < lengths[:, None]
        memory_valid = (
            torch.arange(memory.shape[1], device=memory.device)[None, :] < memory_lengths[:, None]
        )
        x = embeds
        for layer in [*self.decoders, *self.decoders2, *self.decoders3]:
            x = layer(x, valid, memory, memory_valid)
        return self.output_layer(self.after_norm(x))


# ---- the model -------------------------------------------------------------------------------


@dataclass
class Recognition:
    """What `Paraformer.recognize` computed for a batch (the intermediates are for parity)."""

    encoder_out: Tensor  # (B, T, d)
    encoder_lengths: Tensor  # (B,)
    alphas: Tensor  # (B, T + 1) with the tail frame, float32
    peaks: Tensor  # (B, T + 1) the CIF's running sums (funasr's cif_peak)
    token_num: Tensor  # (B,) long
    acoustic_embeds: Tensor  # (B, N, d), N = max token_num
    logits: Tensor  # (B, N, V) the decoder's output (before log-softmax)
    ids: list[list[int]]  # argmax ids, blank/sos/eos removed


@dataclass
class StreamState:
    """One stream's caches between chunks (funasr's cache["encoder"] and cache["decoder"])."""

    overlap: Tensor  # (c0 + c2, F) embedded frames carried into the next chunk's input
    cif_hidden: Tensor  # (d,) float32, the CIF's partial token (divided by its weight)
    cif_alpha: Tensor  # () float32, the weight accumulated towards the next token
    start: int = 0  # frames embedded so far: the next chunk's positions start at start + 1
    encoder_kv: Tensor | None = None  # (layers, 2, H, C, dk) look-back keys/values
    decoder_fsmn: Tensor | None = None  # (layers, k - 1, d) FSMN context
    decoder_kv: Tensor | None = None  # (layers, 2, H, C, dk) previous chunk's encoder k/v
    chunks: int = 0  # chunks run

    def tensors(self) -> list[Tensor]:
        """The cached tensors (to count their size)."""
        values = [getattr(self, f.name) for f in fields(self)]
        return [t for t in values if isinstance(t, Tensor)]


@dataclass
class ChunkOutput:
    """What one chunk of one stream produced (`Paraformer.stream_step`)."""

    ids: list[int]  # tokens fired in this chunk, blank/sos/eos removed
    encoder_frames: int  # encoder queries this chunk (15 for a full chunk)
    attended_keys: int  # keys each encoder query attended to (cache + chunk)
    # with `trace`:
    encoder_out: Tensor | None = None  # (T, d)
    alphas: Tensor | None = None  # (T,) before the chunk masks
    acoustic_embeds: Tensor | None = None  # (n, d) the fired tokens
    logprobs: Tensor | None = None  # (n, V) log-softmax of the decoder's output


class Paraformer(nn.Module):
    def __init__(self, cfg: ParaformerConfig, chunk: ChunkConfig | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.chunk = chunk or ChunkConfig()
        self.encoder = SANMEncoder(
            cfg.input_size,
            cfg.d_model,
            cfg.encoder_heads,
            cfg.encoder_ffn,
            cfg.encoder_blocks,
            cfg.encoder_kernel,
            cfg.encoder_shift,
        )
        self.predictor = CifPredictor(cfg)
        self.decoder = ParaformerDecoder(cfg)
        self.encoder_calls = 0  # batched encoder runs (tests count them)

    IGNORED_PREFIXES = ("decoder.embed.", "ctc.")  # training-only weights in released model.pt

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a FunASR state dict (keys as in model.pt); every model weight must be there."""
        state = {k: v for k, v in state.items() if not k.startswith(self.IGNORED_PREFIXES)}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the config: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )

    def _clean(self, ids: list[int]) -> list[int]:
        drop = {self.config.blank_id, self.config.sos, self.config.eos}
        return [i for i in ids if i not in drop]

    # ---- offline ----

    @torch.inference_mode()
    def recognize(self, feats: Tensor, lengths: Tensor) -> Recognition:
        """feats: (B, T, F) right-padded, lengths: (B,) -> a `Recognition` per batch."""
        self.encoder_calls += 1
        dtype = self.encoder.after_norm.weight.dtype
        enc = self.encoder(feats.to(dtype), lengths)
        embeds, token_num, alphas, peaks = self.predictor.fire(enc, lengths)
        B = feats.shape[0]
        if int(token_num.max()) < 1:  # nothing fired anywhere: funasr skips the decoder
            logits = enc.new_zeros(B, 0, self.config.vocab_size)
            ids: list[list[int]] = [[] for _ in range(B)]
        else:
            logits = self.decoder(embeds.to(dtype), token_num, enc, lengths).float()
            best = logits.argmax(-1).tolist()
            ids = [self._clean(best[b][: int(n)]) for b, n in enumerate(token_num.tolist())]
        return Recognition(enc, lengths, alphas, peaks, token_num, embeds, logits, ids)

    # ---- streaming ----

    def new_stream(self, device: torch.device | str | None = None) -> StreamState:
        """Empty caches for a new stream (funasr's `init_cache`)."""
        device = device or self.encoder.after_norm.weight.device
        dtype = self.encoder.after_norm.weight.dtype
        overlap = torch.zeros(self.chunk.overlap, self.config.input_size, dtype=dtype)
        return StreamState(
            overlap=overlap.to(device),
            cif_hidden=torch.zeros(self.config.d_model, device=device),
            cif_alpha=torch.zeros((), device=device),
        )

    @torch.inference_mode()
    def stream_step(
        self,
        states: list[StreamState],
        feats: list[Tensor | None],
        final: list[bool],
        trace: bool = False,
    ) -> list[ChunkOutput]:
        """One chunk for each of B streams, in one batched encoder call.

        feats[b]: the chunk's LFR features (T_b, F), T_b about 10; None for a tail chunk (the
        final piece under 60 ms: the carried frames alone). final[b]: the stream's last chunk
        (flushes the CIF). Updates `states` in place.
        """
        assert len(states) == len(feats) == len(final) and states
        self.encoder_calls += 1
        enc, lengths, attended = self._encode_chunks(states, feats)
        raw = self.predictor.alphas(enc, _valid(lengths, enc.shape[1]))  # (B, T)
        c0, c1, _ = self.chunk.chunk_size
        position = torch.arange(enc.shape[1], device=enc.device)[None, :]
        keep = (position >= c0) & (
            torch.tensor(final, device=enc.device)[:, None] | (position < c0 + c1)
        )
        alphas = raw * keep  # the look-ahead fires nothing until the final chunk
        embeds, counts = self._fire_chunks(states, enc, lengths, alphas, final)
        outputs = [
            ChunkOutput([], int(n), int(a)) for n, a in zip(lengths.tolist(), attended, strict=True)
        ]
        if trace:
            for b, out in enumerate(outputs):
                out.encoder_out = enc[b, : lengths[b]]
                out.alphas = raw[b, : lengths[b]]
                out.acoustic_embeds = embeds[b, : counts[b]]
        firing = [b for b, n in enumerate(counts) if n > 0]
        if firing:
            logits = self._decode_chunks(
                [states[b] for b in firing],
                embeds[firing],
                torch.tensor([counts[b] for b in firing], device=enc.device),
                enc[firing],
                lengths[firing],
            )
            best = logits.argmax(-1).tolist()
            for row, b in enumerate(firing):
                outputs[b].ids = self._clean(best[row][: counts[b]])
                if trace:
                    outputs[b].logprobs = logits[row, : counts[b]]
        for s in states:
            s.chunks += 1
        return outputs

    def _encode_chunks(
        self, states: list[StreamState], feats: list[Tensor | None]
    ) -> tuple[Tensor, Tensor, list[int]]:
        """The SCAMA encoder over one chunk per stream -> (B, T, d), lengths (B,), and the
        number of keys each stream's queries attended to."""
        enc = self.encoder
        device, dtype = states[0].overlap.device, states[0].overlap.dtype
        B, W = len(states), self.chunk.overlap
        scale = enc.d_model**0.5
        n_new = [0 if f is None else f.shape[0] for f in feats]
        T = W + max(n_new)
        # input rows: the carried frames, then the chunk's frames embedded at their positions
        x = torch.zeros(B, T, enc.input_size, device=device, dtype=dtype)
        for b, (s, f) in enumerate(zip(states, feats, strict=True)):
            if f is None:  # tail chunk: funasr has scaled its cached frames in place
                x[b, :W] = s.overlap * scale
                s.start += W
                continue
            n = f.shape[0]
            positions = torch.arange(s.start + 1, s.start + n + 1, device=device)
            x[b, :W] = s.overlap
            x[b, W : W + n] = enc.embed(f.to(device, dtype)[None], positions[None])[0]
            s.start += n
            s.overlap = x[b, n : n + W].clone()
        lengths = torch.tensor([W + n for n in n_new], device=device)
        valid = _valid(lengths, T)

        # cached keys/values: (B, layers, 2, H, C, dk), left-aligned, padded to the longest
        past_len = torch.tensor(
            [0 if s.encoder_kv is None else s.encoder_kv.shape[3] for s in states], device=device
        )
        C = int(past_len.max())
        L, H, dk = len(enc.layers), enc.layers[0].self_attn.heads, enc.layers[0].self_attn.d_k
        past = torch.zeros(B, L, 2, H, C, dk, device=device, dtype=dtype)
        for b, s in enumerate(states):
            if s.encoder_kv is not None:
                past[b, :, :, :, : s.encoder_kv.shape[3]] = s.encoder_kv
        past_valid = _valid(past_len, C)

        # what each stream keeps: its cache, then the chunk minus the look-ahead, the last
        # look_back * chunk frames of that (a first chunk keeps all its frames, as funasr does)
        look_back = self.chunk.encoder_look_back
        stride = (lengths - self.chunk.chunk_size[2]).clamp(min=0)
        limit = None if look_back == -1 else look_back * self.chunk.chunk_size[1]
        gather, kept = _keep_last(past_len, stride, C, limit, first=past_len == 0)

        new_kv = []
        for i, layer in enumerate(enc.layers):
            x, k, v = layer.forward_chunk(x, valid, past[:, i, 0], past[:, i, 1], past_valid)
            if look_back != 0:
                both = torch.stack(
                    [torch.cat([past[:, i, 0], k], 2), torch.cat([past[:, i, 1], v], 2)], 1
                )
                new_kv.append(both.gather(3, gather.expand(B, 2, H, -1, dk)))  # (B, 2, H, M, dk)
        if look_back != 0:
            stacked = torch.stack(new_kv, 1)  # (B, layers, 2, H, M, dk)
            for b, s in enumerate(states):
                s.encoder_kv = stacked[b, :, :, :, : kept[b]].clone()
        attended = (past_len + lengths).tolist()
        return enc.after_norm(x), lengths, attended

    def _fire_chunks(
        self,
        states: list[StreamState],
        enc: Tensor,
        lengths: Tensor,
        alphas: Tensor,
        final: list[bool],
    ) -> tuple[Tensor, list[int]]:
        """The streaming CIF (funasr's `forward_chunk` loop, batched over streams, same float32
        arithmetic): the carried partial token first, then the chunk's frames, then at a final
        chunk a zero frame weighted by the tail threshold. -> embeddings (B, N, d), counts."""
        B, T, d = enc.shape
        device = enc.device
        h = (enc * _valid(lengths, T)[..., None].to(enc.dtype)).float()
        h = torch.cat(
            [torch.stack([s.cif_hidden for s in states])[:, None], h, h.new_zeros(B, 1, d)], 1
        )
        a = torch.cat(
            [torch.stack([s.cif_alpha for s in states])[:, None], alphas, alphas.new_zeros(B, 1)], 1
        )
        ends = [b for b in range(B) if final[b]]
        if ends:
            a[ends, lengths[ends] + 1] = self.predictor.tail_threshold
        threshold = self.predictor.threshold
        integrate = torch.zeros(B, device=device)
        frames = torch.zeros(B, d, device=device)
        fired, emitted = [], []
        for t in range(a.shape[1]):
            alpha, h_t = a[:, t], h[:, t]
            total = alpha + integrate
            fire = total >= threshold
            weight = torch.where(fire, threshold - integrate, alpha)
            frames = frames + weight[:, None] * h_t
            fired.append(fire)
            emitted.append(frames)
            integrate = torch.where(fire, total - threshold, total)
            frames = torch.where(fire[:, None], integrate[:, None] * h_t, frames)
        fired_bt = torch.stack(fired, 1)  # (B, T + 2)
        counts = fired_bt.sum(1).tolist()
        embeds = h.new_zeros(B, max(counts), d)
        if max(counts) > 0:
            rows = torch.stack(emitted, 1)[fired_bt]  # (K, d), item-major
            b_idx, _ = fired_bt.nonzero(as_tuple=True)
            rank = torch.cat([torch.arange(n, device=device) for n in counts])
            embeds[b_idx, rank] = rows
        partial = torch.where(integrate[:, None] > 0, frames / integrate[:, None], frames)
        for b, s in enumerate(states):
            s.cif_alpha, s.cif_hidden = integrate[b].clone(), partial[b].clone()
        return embeds, counts

    def _decode_chunks(
        self,
        states: list[StreamState],
        embeds: Tensor,
        counts: Tensor,
        enc: Tensor,
        enc_lengths: Tensor,
    ) -> Tensor:
        """The decoder over one chunk's tokens per stream, with its FSMN contexts and the
        look-back cross-attention cache -> log-softmax logits (B, N, V)."""
        dec = self.decoder
        B, N, d = embeds.shape
        device, dtype = enc.device, enc.dtype
        layers = list(dec.decoders)
        k = layers[0].self_attn.kernel_size
        H, dk = layers[0].src_attn.heads, layers[0].src_attn.d_k
        cached = torch.tensor([s.decoder_fsmn is not None for s in states], device=device)
        context = torch.zeros(B, len(layers), k - 1, d, device=device, dtype=dtype)
        for b, s in enumerate(states):
            if s.decoder_fsmn is not None:
                context[b] = s.decoder_fsmn
        past_len = torch.tensor(
            [0 if s.decoder_kv is None else s.decoder_kv.shape[3] for s in states], device=device
        )
        C = int(past_len.max())
        past = torch.zeros(B, len(layers), 2, H, C, dk, device=device, dtype=dtype)
        for b, s in enumerate(states):
            if s.decoder_kv is not None:
                past[b, :, :, :, : s.decoder_kv.shape[3]] = s.decoder_kv
        key_valid = torch.cat([_valid(past_len, C), _valid(enc_lengths, enc.shape[1])], 1)
        look_back = self.chunk.decoder_look_back
        limit = look_back * self.chunk.chunk_size[1]
        gather, kept = _keep_last(past_len, enc_lengths, C, limit, first=None)

        x = embeds.to(dtype)
        new_context, new_kv = [], []
        for i, layer in enumerate(layers):
            h = layer.feed_forward(layer.norm1(x))
            m, ctx = layer.self_attn.forward_chunk(layer.norm2(h), counts, context[:, i], cached)
            x = x + m
            new_context.append(ctx)
            k_new, v_new = layer.src_attn.keys_values(enc)
            keys = torch.cat([past[:, i, 0], k_new], 2)
            values = torch.cat([past[:, i, 1], v_new], 2)
            x = x + layer.src_attn(layer.norm3(x), keys, values, key_valid)
            if look_back > 0:
                both = torch.stack([keys, values], 1)  # (B, 2, H, C + T, dk)
                new_kv.append(both.gather(3, gather.expand(B, 2, H, -1, dk)))
        for layer in dec.decoders3:
            x = layer.feed_forward(layer.norm1(x))
        logits = torch.log_softmax(dec.output_layer(dec.after_norm(x)).float(), dim=-1)

        contexts = torch.stack(new_context, 1)  # (B, layers, k - 1, d)
        kv = torch.stack(new_kv, 1) if new_kv else None  # (B, layers, 2, H, M, dk)
        for b, s in enumerate(states):
            s.decoder_fsmn = contexts[b].clone()
            if kv is not None:
                s.decoder_kv = kv[b, :, :, :, : kept[b]].clone()
        return logits


def _valid(lengths: Tensor, T: int) -> Tensor:
    """(B,) lengths -> (B, T) bool: position < length."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def _keep_last(
    past_len: Tensor, new_len: Tensor, C: int, limit: int | None, first: Tensor | None
) -> tuple[Tensor, list[int]]:
    """Which rows of cat([past (C rows, the first past_len valid), new]) a cache keeps: the
    last `limit` of the valid ones (all of them where `first`, or with no limit).
    -> gather indices (B, 1, 1, M, 1) and the kept count per row."""
    total = past_len + new_len
    kept = total if limit is None else total.clamp(max=limit)
    if first is not None and limit is not None:
        kept = torch.where(first, total, kept)
    M = int(kept.max()) if kept.numel() else 0
    logical = (total - kept)[:, None] + torch.arange(M, device=total.device)  # (B, M)
    physical = torch.where(logical < past_len[:, None], logical, logical - past_len[:, None] + C)
    physical = torch.where(torch.arange(M, device=total.device) < kept[:, None], physical, 0)
    return physical[:, None, None, :, None], kept.tolist()
