"""Qwen3-ASR: the AuT audio encoder feeding a Qwen3 decoder through injected embeddings.

AuT: log-mel (128, T) is cut into 1 s chunks of 100 frames; each chunk goes through three
stride-2 conv2d (+GELU) over (mel, time), a linear to d_model, and sinusoidal positions that
restart at 0 in every chunk (13 tokens per full chunk). Pre-LN transformer layers attend within
8 s windows (800 frames = 104 tokens), then ln_post, proj1 + GELU, proj2 to the decoder width.
Because conv and positions are per chunk and attention is per window, a completed window's
output never depends on later audio: streaming caches it (engine/rollback.py).

The decoder is our Qwen3 (mRoPE with equal position streams is plain 1-D RoPE); audio tokens
replace the `<|audio_pad|>` embeddings. Two checkpoint layouts load: the released one
(`thinker.*` keys, nested `thinker_config`) and the transformers "-hf" one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from kernels.sdpa import sdpa

CHUNK_FRAMES = 100  # frames per conv chunk (n_window * 2)


def conv_batch(n: int) -> int:
    """The batch the chunk convs run at for n chunks: the next power of two up to 64, then the
    next multiple of 64. cuDNN builds an execution plan for each new input shape (milliseconds,
    for the forward and each backward), and the number of chunks changes with every encoder call
    and training batch; zero chunks pad it to one of these few sizes."""
    if n <= 64:
        return 1 << max(n - 1, 0).bit_length()
    return -(-n // 64) * 64


def chunk_tokens(frames: int) -> int:
    """Tokens out of the three stride-2 convs for a chunk of `frames` frames (0 for 0)."""
    n = frames
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


def audio_tokens(frames: int | torch.Tensor) -> int | torch.Tensor:
    """Tokens the encoder makes from `frames` frames (13 per full 100-frame chunk); an int or
    an integer tensor of frame counts."""
    full, rest = frames // CHUNK_FRAMES, frames % CHUNK_FRAMES
    return full * chunk_tokens(CHUNK_FRAMES) + chunk_tokens(rest)


@dataclass(frozen=True)
class AuTConfig:
    num_mel_bins: int = 128
    d_model: int = 896
    encoder_layers: int = 18
    encoder_attention_heads: int = 14
    encoder_ffn_dim: int = 3584
    output_dim: int = 1024
    downsample_hidden_size: int = 480
    n_window: int = 50
    n_window_infer: int = 800
    max_source_positions: int = 1500

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuTConfig:
        if d.get("activation_function", "gelu") != "gelu":
            raise ValueError(f"AuT activation {d['activation_function']!r} is not supported")
        if d.get("n_window", 50) * 2 != CHUNK_FRAMES:
            raise ValueError("AuT chunks other than 100 frames (n_window 50) are not supported")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def window_frames(self) -> int:
        return self.n_window_infer


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    inv = torch.exp(-math.log(max_timescale) / (channels // 2 - 1) * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)  # (length, channels)


class AuTAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (W, L, d) windows; mask: (W, L) valid tokens. Attention stays inside a window."""
        W, L, d = x.shape
        q, k, v = (
            p(x).view(W, L, self.heads, -1).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        o = sdpa(q, k, v, attn_mask=mask[:, None, None, :])
        return self.out_proj(o.transpose(1, 2).reshape(W, L, d))


class AuTLayer(nn.Module):
    def __init__(self, cfg: AuTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = AuTAttention(d, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class AuTEncoder(nn.Module):
    def __init__(self, cfg: AuTConfig) -> None:
        super().__init__()
        self.config = cfg
        c = cfg.downsample_hidden_size
        self.conv2d1 = nn.Conv2d(1, c, 3, 2, padding=1)
        self.conv2d2 = nn.Conv2d(c, c, 3, 2, padding=1)
        self.conv2d3 = nn.Conv2d(c, c, 3, 2, padding=1)
        freq = (((cfg.num_mel_bins + 1) // 2 + 1) // 2 + 1) // 2
        self.conv_out = nn.Linear(c * freq, cfg.d_model, bias=False)
        self.layers = nn.ModuleList(AuTLayer(cfg) for _ in range(cfg.encoder_layers))
        self.ln_post = nn.LayerNorm(cfg.d_model)
        self.proj1 = nn.Linear(cfg.d_model, cfg.d_model)
        self.proj2 = nn.Linear(cfg.d_model, cfg.output_dim)
        self.positions = sinusoids(chunk_tokens(CHUNK_FRAMES), cfg.d_model)  # (13, d)

    def forward(self, feats: torch.Tensor, window_frames: int | None = -1) -> torch.Tensor:
        """feats: (n_mels, T) of one utterance -> (audio_tokens(T), output_dim).

        Attention windows are `window_frames` long (-1: the model's 8 s; None: the whole
        utterance in one window, which is what the reference does on CPU)."""
        if window_frames == -1:
            window_frames = self.config.window_frames
        step = window_frames or max(feats.shape[1], 1)
        windows = [feats[:, i : i + step] for i in range(0, feats.shape[1], step)]
        return torch.cat(self.encode_windows(windows))

    def encode_windows(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Several windows (n_mels, F_i), from any streams, in one batch -> their token outputs."""
        # Each window zero-padded to whole 100-frame chunks, all chunks of all windows in one
        # batch (a pad and a reshape per window, not per chunk).
        chunks = []
        for feats in windows:
            pad = -feats.shape[1] % CHUNK_FRAMES
            n_mels = feats.shape[0]
            chunks.append(F.pad(feats, (0, pad)).view(n_mels, -1, CHUNK_FRAMES).transpose(0, 1))
        x = self._conv(torch.cat(chunks))  # (C, 13, d)
        t = x.shape[1]
        # a window's tokens: its chunks' rows end to end, cut where its last chunk's audio ends
        tokens, at = [], 0
        for feats, chunk in zip(windows, chunks, strict=True):
            k = chunk.shape[0]
            tokens.append(x[at : at + k].reshape(k * t, -1)[: audio_tokens(feats.shape[1])])
            at += k
        longest = max(t.shape[0] for t in tokens)
        h = torch.stack([F.pad(t, (0, 0, 0, longest - t.shape[0])) for t in tokens])  # (W, L, d)
        mask = (
            torch.arange(longest, device=h.device)[None, :]
            < torch.tensor([t.shape[0] for t in tokens], device=h.device)[:, None]
        )
        h = self._attend(h, mask)
        return [h[i, : t.shape[0]] for i, t in enumerate(tokens)]

    def encode_padded(
        self, feats: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows as one padded batch: feats (W, n_mels, F), F a multiple of 100 and zero past
        each window's `frames` (W,) -> outputs (W, L, output_dim), L = 13 F / 100, and the mask
        of valid tokens (W, L). The same numbers as `encode_windows`, with no host work per
        window: the training path, where a batch holds hundreds of windows."""
        W, n_mels, n = feats.shape
        x = feats.view(W, n_mels, n // CHUNK_FRAMES, CHUNK_FRAMES).transpose(1, 2)
        h = self._conv(x.reshape(-1, n_mels, CHUNK_FRAMES))  # (W * chunks, 13, d)
        h = h.reshape(W, -1, h.shape[-1])  # a window's chunks end to end
        mask = torch.arange(h.shape[1], device=h.device) < audio_tokens(frames)[:, None]
        return self._attend(h, mask), mask

    def _conv(self, chunks: torch.Tensor) -> torch.Tensor:
        """(C, n_mels, 100) chunks -> (C, 13, d_model) tokens with their in-chunk positions."""
        C = chunks.shape[0]
        x = F.pad(chunks, (0, 0, 0, 0, 0, conv_batch(C) - C))[:, None]  # (C', 1, n_mels, 100)
        x = F.gelu(self.conv2d3(F.gelu(self.conv2d2(F.gelu(self.conv2d1(x))))))[:C]  # (C, c, f, 13)
        _, c, f, t = x.shape
        x = self.conv_out(x.permute(0, 3, 1, 2).reshape(C, t, c * f))  # (C, 13, d)
        return x + self.positions.to(x)

    def _attend(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(W, L, d_model) windows, (W, L) valid tokens -> (W, L, output_dim)."""
        for layer in self.layers:
            h = layer(h, mask)
        return self.proj2(F.gelu(self.proj1(self.ln_post(h))))


@dataclass(frozen=True)
class Qwen3ASRConfig:
    audio: AuTConfig
    text: Qwen3Config
    audio_token_id: int
    layout: str  # "released" | "hf"
    languages: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, d: dict[str, Any], lm_head_stored: bool) -> Qwen3ASRConfig:
        """Tying follows the weights, not the flags: the released layout says it in
        text_config, the -hf one at the top level (and converters drop it)."""
        layout = "released" if "thinker_config" in d else "hf"
        inner = d.get("thinker_config", d)
        text = {**inner["text_config"], "tie_word_embeddings": not lm_head_stored}
        return cls(
            audio=AuTConfig.from_dict(inner["audio_config"]),
            text=Qwen3Config.from_dict(text),
            audio_token_id=inner.get("audio_token_id", 151676),
            layout=layout,
            languages=tuple(d.get("support_languages") or ()),
        )

    @classmethod
    def from_folder(cls, path: Path, lm_head_stored: bool) -> Qwen3ASRConfig:
        return cls.from_dict(json.loads((path / "config.json").read_text()), lm_head_stored)


# checkpoint key prefix -> ours, per layout
PREFIXES = {
    "released": [
        ("thinker.audio_tower.", "encoder."),
        ("thinker.model.", "decoder.model."),
        ("thinker.lm_head.", "decoder.lm_head."),
    ],
    "hf": [
        ("model.audio_tower.", "encoder."),
        ("model.multi_modal_projector.linear_1.", "encoder.proj1."),
        ("model.multi_modal_projector.linear_2.", "encoder.proj2."),
        ("model.language_model.", "decoder.model."),
        ("lm_head.", "decoder.lm_head."),
    ],
}


def rename(weights: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, w in weights.items():
        for theirs, ours in PREFIXES[layout]:
            if key.startswith(theirs):
                out[ours + key[len(theirs) :]] = w
                break
        else:
            raise ValueError(f"unexpected checkpoint key {key!r} for the {layout} Qwen3-ASR layout")
    return out


class Qwen3ASR(nn.Module):
    def __init__(self, cfg: Qwen3ASRConfig, attn) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = AuTEncoder(cfg.audio)
        self.decoder = Qwen3ForCausalLM(cfg.text, attn)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        ours = rename(weights, self.config.layout)
        self.decoder.load_weights(
            {k[len("decoder.") :]: v for k, v in ours.items() if k.startswith("decoder.")}
        )
        encoder = {k[len("encoder.") :]: v for k, v in ours.items() if k.startswith("encoder.")}
        missing, unexpected = self.encoder.load_state_dict(encoder, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"AuT weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
