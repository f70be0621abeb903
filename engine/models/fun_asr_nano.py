"""Fun-ASR-Nano (FunAudioLLM/Fun-ASR-Nano-2512): SenseVoice encoder, Transformer adaptor, Qwen3.

    samples (16 kHz) -> WavFrontend (audio/fbank.py): Kaldi fbank 80, LFR 7/6, no CMVN in the
    release                                                  feats: (B, L, 560), 60 ms a frame
      -> audio_encoder: SenseVoiceEncoderSmall (engine/models/sensevoice.py's encoder: SAN-M
         `encoders0` + `encoders`, `after_norm`, `tp_encoders`, `tp_norm`; no task queries)
                                                                               h: (B, L, d_enc)
      -> audio_adaptor, funasr's llm_asr "Transformer": k = downsample_rate frames stacked
         (1 in the release), linear1 -> ReLU -> linear2 (k d_enc -> ffn -> d_llm), then
         `n_layer` pre-norm Transformer blocks (8-head attention, FFN d_llm -> d_llm / 4 ->
         d_llm, LayerNorm eps 1e-12)                                a: (B, ceil(L / k), d_llm)
      -> the first N rows replace N placeholder tokens of the prompt (engine/fun_asr_nano_asr.py
         builds it), then the Qwen3 decoder (engine/models/qwen3.py) generates the transcript.

N, the audio tokens of L LFR frames: funasr 1.4.16's FunASRNano, with the adaptor's
`use_low_frame_rate` (set in the release's config.yaml), splices only
`fake_token_len(L)` = three stride-2 conv lengths of L (about L / 8) rows; without it, all of
them. transformers 5.x's native `fun_asr_nano` (the "-hf" checkpoints) always splices all
`ceil(L / k)` rows. Each layout is run the way its reference runs it (`low_frame_rate`).

Every encoder and adaptor layer attends over the whole input: a frame's output depends on all
audio, so nothing of an earlier, shorter input can be reused when audio grows.

Two checkpoint layouts load (`FunASRNanoConfig.layout`):
- "funasr": the released folder: config.yaml, model.pt (`audio_encoder.*`, `audio_adaptor.*`,
  `llm.model.*`, `llm.lm_head.weight`; `ctc_decoder.*` / `ctc.*`, the timestamp branch, are
  ignored) and the LLM's Hugging Face folder (Qwen3-0.6B/: config.json and the tokenizer);
- "hf": transformers 5.x's `FunAsrNanoForConditionalGeneration` (config.json with
  audio_config / adaptor_config / text_config; `model.audio_tower.layers.N.*` with q, k and v
  split, `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.weight`). Its
  front end does not scale the samples by 32768 (`wave_scale`).
Parameter names here are funasr's, so model.pt loads as it is; the hf names are renamed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from engine.models.sanm import FeedForward
from engine.models.sensevoice import SenseVoiceConfig, SenseVoiceEncoder
from kernels.sdpa import sdpa

ADAPTOR_LN_EPS = 1e-12  # funasr.models.transformer.layer_norm.LayerNorm
ENCODER_LN_EPS = 1e-5  # SenseVoice's LayerNorm (nn.LayerNorm's default)
ADAPTOR_HEADS = 8  # funasr's Transformer adaptor: attention_heads default


def fake_token_len(frames: int) -> int:
    """Audio tokens funasr's FunASRNano splices for `frames` LFR frames with
    `use_low_frame_rate`: the lengths of three stride-2 convolutions (kernel 3, padding 1)."""
    n = 1 + (frames - 3 + 2) // 2
    n = 1 + (n - 3 + 2) // 2
    return (n - 1) // 2 + 1


@dataclass(frozen=True)
class AdaptorConfig:
    encoder_dim: int = 512
    ffn_dim: int = 2048  # linear1's width
    llm_dim: int = 1024
    layers: int = 2
    heads: int = ADAPTOR_HEADS
    downsample: int = 1  # frames stacked before linear1 (downsample_rate)
    eps: float = ADAPTOR_LN_EPS


@dataclass(frozen=True)
class FunASRNanoConfig:
    encoder: SenseVoiceConfig
    adaptor: AdaptorConfig
    text: Qwen3Config
    layout: str  # "funasr" | "hf"
    low_frame_rate: bool = True  # splice fake_token_len(L) rows, not all
    placeholder_id: int = 0  # the token id under the audio rows (funasr: 0; hf: audio_token_id)
    encoder_eps: float = ENCODER_LN_EPS
    wave_scale: float = 32768.0  # what the front end multiplies [-1, 1] samples by
    eos_token_ids: tuple[int, ...] = ()  # where greedy decoding stops

    def audio_tokens(self, frames: int) -> int:
        """N: the adaptor rows spliced into the prompt for `frames` LFR frames."""
        rows = -(-frames // self.adaptor.downsample)
        return min(fake_token_len(frames), rows) if self.low_frame_rate else rows

    @classmethod
    def from_funasr(cls, config: dict[str, Any], llm: dict[str, Any]) -> FunASRNanoConfig:
        """From config.yaml and the LLM folder's config.json; refuses what this file does not
        implement."""
        if config.get("model") != "FunASRNano":
            raise ValueError(f"not a FunASRNano config (model: {config.get('model')!r})")
        if config.get("audio_encoder") != "SenseVoiceEncoderSmall":
            raise ValueError(f"audio_encoder {config.get('audio_encoder')!r} is not supported")
        if config.get("audio_adaptor") != "Transformer":
            raise ValueError(f"audio_adaptor {config.get('audio_adaptor')!r} is not supported")
        enc = config.get("audio_encoder_conf") or {}
        if enc.get("hub") == "ms":
            raise ValueError("audio_encoder_conf.hub 'ms' (an encoder from another model)")
        for key, expected in (("selfattention_layer_type", "sanm"), ("normalize_before", True)):
            if enc.get(key, expected) != expected:
                raise ValueError(f"audio_encoder_conf {key} {enc[key]!r} is not supported")
        llm_conf = config.get("llm_conf") or {}
        if llm_conf.get("use_lora"):
            raise ValueError("llm_conf.use_lora: LoRA adapters are not supported; merge them")
        front = config.get("frontend_conf") or {}
        d_enc = enc.get("output_size", 256)
        text = Qwen3Config.from_dict(llm)
        ad = config.get("audio_adaptor_conf") or {}
        return cls(
            encoder=SenseVoiceConfig.from_encoder_conf(enc, front, vocab_size=0),
            # funasr sets encoder_dim and llm_dim from the encoder and the LLM, whatever the
            # config says
            adaptor=AdaptorConfig(
                encoder_dim=d_enc,
                ffn_dim=ad.get("ffn_dim", 2048),
                llm_dim=text.hidden_size,
                layers=ad.get("n_layer", 2),
                heads=ad.get("attention_heads", ADAPTOR_HEADS),
                downsample=ad.get("downsample_rate", 2),
            ),
            text=text,
            layout="funasr",
            low_frame_rate=bool(ad.get("use_low_frame_rate", False)),
            eos_token_ids=_ids(llm.get("eos_token_id")),
        )

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> FunASRNanoConfig:
        """From a transformers 5.x `fun_asr_nano` config.json."""
        if config.get("model_type") != "fun_asr_nano":
            raise ValueError(f"not a fun_asr_nano config (model_type {config.get('model_type')!r})")
        a, p = config.get("audio_config") or {}, config.get("adaptor_config") or {}
        acts = (a.get("hidden_act", "relu"), p.get("hidden_act", "relu"))
        if acts + (p.get("projector_hidden_act", "relu"),) != ("relu",) * 3:
            raise ValueError(f"activations {acts} are not supported (relu)")
        layers, tp = a.get("num_hidden_layers", 70), a.get("num_timestamp_prediction_layers", 20)
        text = Qwen3Config.from_dict(
            {
                **config["text_config"],
                "tie_word_embeddings": config.get("tie_word_embeddings", True),
            }
        )
        hidden = p.get("hidden_size", 1024)
        if p.get("intermediate_size", hidden // 4) != hidden // 4 or hidden != text.hidden_size:
            raise ValueError("adaptor_config sizes do not match the text model")
        return cls(
            encoder=SenseVoiceConfig(
                input_size=a.get("num_mel_bins", 80) * a.get("num_stacked_frames", 7),
                vocab_size=0,
                d_model=a.get("hidden_size", 512),
                heads=a.get("num_attention_heads", 4),
                ffn=a.get("intermediate_size", 2048),
                blocks=layers - tp,
                tp_blocks=tp,
                kernel_size=a.get("fsmn_kernel_size", 11),
            ),
            adaptor=AdaptorConfig(
                encoder_dim=a.get("hidden_size", 512),
                ffn_dim=p.get("projector_hidden_size", 2048),
                llm_dim=hidden,
                layers=p.get("num_hidden_layers", 2),
                heads=p.get("num_attention_heads", ADAPTOR_HEADS),
                eps=p.get("layer_norm_eps", 1e-5),
            ),
            text=text,
            layout="hf",
            low_frame_rate=False,
            placeholder_id=config.get("audio_token_id", 151646),
            encoder_eps=a.get("layer_norm_eps", ENCODER_LN_EPS),
            wave_scale=1.0,
        )

    @classmethod
    def from_hf_folder(cls, path: Path) -> FunASRNanoConfig:
        """config.json; generate() stops at generation_config.json's EOS (else the text
        config's)."""
        config = json.loads((path / "config.json").read_text())
        eos = config["text_config"].get("eos_token_id")
        with contextlib.suppress(OSError, ValueError, KeyError):
            eos = json.loads((path / "generation_config.json").read_text())["eos_token_id"]
        return replace(cls.from_hf(config), eos_token_ids=_ids(eos))


def _ids(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list) else () if value is None else (value,)


class AdaptorAttention(nn.Module):
    """funasr's MultiHeadedAttention: linear_q, linear_k, linear_v (with bias), softmax
    attention (scale 1/sqrt(d_k)) over the valid keys, linear_out."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear_q = nn.Linear(d, d)
        self.linear_k = nn.Linear(d, d)
        self.linear_v = nn.Linear(d, d)
        self.linear_out = nn.Linear(d, d)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x: (B, T, d), valid: (B, T) bool -> (B, T, d)."""
        B, T, d = x.shape
        q, k, v = (
            proj(x).view(B, T, self.heads, -1).transpose(1, 2)  # (B, H, T, d / H)
            for proj in (self.linear_q, self.linear_k, self.linear_v)
        )
        o = sdpa(q, k, v, attn_mask=valid[:, None, None, :])
        return self.linear_out(o.transpose(1, 2).reshape(B, T, d))


class AdaptorBlock(nn.Module):
    """funasr's transformer EncoderLayer, pre-norm: x + attn(norm1 x), then + FFN(norm2 x)."""

    def __init__(self, d: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self_attn = AdaptorAttention(d, heads)
        self.feed_forward = FeedForward(d, d // 4)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm1(x), valid)
        return x + self.feed_forward(self.norm2(x))


class Adaptor(nn.Module):
    """funasr's llm_asr Transformer adaptor: encoder states -> LLM-width audio embeddings."""

    def __init__(self, cfg: AdaptorConfig) -> None:
        super().__init__()
        self.k = cfg.downsample
        self.linear1 = nn.Linear(cfg.encoder_dim * cfg.downsample, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, cfg.llm_dim)
        self.blocks = nn.ModuleList(
            AdaptorBlock(cfg.llm_dim, cfg.heads, cfg.eps) for _ in range(cfg.layers)
        )

    def forward(self, h: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """h: (B, L, d_enc) right-padded, lengths: (B,) -> (B, ceil(L / k), d_llm) and its
        lengths (L - 1) // k + 1; rows past an item's length are not meaningful."""
        B, L, d = h.shape
        chunks = -(-L // self.k)
        h = F.pad(h, (0, 0, 0, chunks * self.k - L)).reshape(B, chunks, d * self.k)
        x = self.linear2(torch.relu(self.linear1(h)))  # (B, T', d_llm)
        out_lengths = (lengths - 1) // self.k + 1
        valid = torch.arange(chunks, device=h.device)[None, :] < out_lengths[:, None]
        for block in self.blocks:
            x = block(x, valid)
        return x, out_lengths


@dataclass
class AudioEncoding:
    """What `FunASRNano.encode` computed for a batch (the intermediates are for parity)."""

    encoder_out: Tensor  # (B, L, d_enc)
    adaptor_out: Tensor  # (B, L', d_llm)
    frames: Tensor  # (B,) L per item
    tokens: list[int]  # N per item: the rows of adaptor_out that go into the prompt

    def embeds(self, b: int) -> Tensor:
        """The audio embeddings of item b: (N_b, d_llm)."""
        return self.adaptor_out[b, : self.tokens[b]]


# hf name -> funasr name, inside one encoder or adaptor layer
_HF_LAYER_PARTS = (
    ("self_attn.o_proj.", "self_attn.linear_out."),
    ("self_attn.fsmn.conv.", "self_attn.fsmn_block."),
    ("mlp.fc1.", "feed_forward.w_1."),
    ("mlp.fc2.", "feed_forward.w_2."),
    ("self_attn.q_proj.", "self_attn.linear_q."),
    ("self_attn.k_proj.", "self_attn.linear_k."),
    ("self_attn.v_proj.", "self_attn.linear_v."),
    ("input_layernorm.", "norm1."),
    ("post_attention_layernorm.", "norm2."),
)
IGNORED_FUNASR_PREFIXES = ("ctc_decoder.", "ctc.")  # the CTC timestamp branch


def _layer_part(name: str) -> str:
    for theirs, ours in _HF_LAYER_PARTS:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    raise ValueError(f"unexpected layer weight {name!r}")


def from_hf_names(weights: dict[str, Tensor], cfg: FunASRNanoConfig) -> dict[str, Tensor]:
    """The "hf" layout's tensors under funasr's names (q, k and v fused back into
    linear_q_k_v; the final_layernorm of the last transcription and timestamp layers as
    after_norm and tp_norm)."""
    blocks, tp = cfg.encoder.blocks, cfg.encoder.tp_blocks
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for name, w in weights.items():
        if name.startswith("model.language_model."):
            out["llm.model." + name[len("model.language_model.") :]] = w
        elif name == "lm_head.weight":
            out["llm.lm_head.weight"] = w
        elif name.startswith("model.multi_modal_projector."):
            rest = name[len("model.multi_modal_projector.") :]
            if rest.startswith(("linear_1.", "linear_2.")):
                out["audio_adaptor.linear" + rest[len("linear_") :]] = w
            else:
                _, i, part = rest.split(".", 2)
                out[f"audio_adaptor.blocks.{i}.{_layer_part(part)}"] = w
        elif name.startswith("model.audio_tower.layers."):
            i, part = name[len("model.audio_tower.layers.") :].split(".", 1)
            layer = int(i)
            group = (
                "encoders0.0"
                if layer == 0
                else f"encoders.{layer - 1}"
                if layer < blocks
                else f"tp_encoders.{layer - blocks}"
            )
            if part.startswith("final_layernorm."):
                norm = {blocks - 1: "after_norm", blocks + tp - 1: "tp_norm"}.get(layer)
                if norm is None:
                    raise ValueError(f"unexpected final_layernorm in layer {layer}")
                out[f"audio_encoder.{norm}.{part.split('.')[-1]}"] = w
            elif part.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                kind = part.split(".")[-1]
                qkv.setdefault(f"audio_encoder.{group}.self_attn.linear_q_k_v.{kind}", {})[
                    part.split(".")[1]
                ] = w
            else:
                out[f"audio_encoder.{group}.{_layer_part(part)}"] = w
        else:
            raise ValueError(f"unexpected checkpoint key {name!r} for the hf Fun-ASR-Nano layout")
    for name, parts in qkv.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise ValueError(f"{name}: q, k and v are not all there")
        out[name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


class FunASRNano(nn.Module):
    def __init__(self, cfg: FunASRNanoConfig, attn) -> None:
        super().__init__()
        self.config = cfg
        self.audio_encoder = SenseVoiceEncoder(cfg.encoder)
        for m in self.audio_encoder.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = cfg.encoder_eps
        self.audio_adaptor = Adaptor(cfg.adaptor)
        self.llm = Qwen3ForCausalLM(cfg.text, attn)
        self.encoder_calls = 0  # batched encoder runs (tests count them)

    @property
    def audio_dtype(self) -> torch.dtype:
        return self.audio_encoder.after_norm.weight.dtype

    @torch.inference_mode()
    def encode(self, feats: Tensor, frames: Tensor) -> AudioEncoding:
        """feats: (B, L, 560) right-padded LFR features, frames: (B,) -> the encoder and
        adaptor outputs and the rows each item puts into its prompt; every item gets what it
        would get alone."""
        self.encoder_calls += 1
        h = self.audio_encoder(feats.to(self.audio_dtype), frames)  # (B, L, d_enc)
        a, _ = self.audio_adaptor(h, frames)  # (B, L', d_llm)
        tokens = [self.config.audio_tokens(int(n)) for n in frames.tolist()]
        return AudioEncoding(h, a, frames, tokens)

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        """A checkpoint's tensors in its layout; every weight must be there."""
        if self.config.layout == "hf":
            weights = from_hf_names(weights, self.config)
        else:
            weights = {
                k: v for k, v in weights.items() if not k.startswith(IGNORED_FUNASR_PREFIXES)
            }
        llm = {k[len("llm.") :]: v for k, v in weights.items() if k.startswith("llm.")}
        self.llm.load_weights(llm)
        audio = {k: v for k, v in weights.items() if not k.startswith("llm.")}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("llm.")}
        missing = sorted(set(own) - set(audio))
        unexpected = sorted(set(audio) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"weights do not match Fun-ASR-Nano: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, w in audio.items():
                if w.shape != own[name].shape:
                    raise ValueError(f"{name}: checkpoint shape {tuple(w.shape)} != model's")
                own[name].copy_(w)
