"""Synthetic Qwen3-ASR for the bench: random weights in a released shape, a byte-level tokenizer,
speech-like audio, and a writer that saves the model as a checkpoint in the released layout.

- Shapes: `qwen3-asr-0.6b` (Qwen/Qwen3-ASR-0.6B: the AuT encoder, 18 layers of 896, and a
  Qwen3-0.6B decoder with an untied lm_head) and `tiny` (the test checkpoints' dimensions).
- The tokenizer is a byte-level BPE without merges (256 byte tokens, so any text encodes to its
  UTF-8 bytes) plus the Qwen3-ASR special tokens, and a minimal chat template that renders the
  prompt Qwen3-ASR's own template renders (system text, then one audio slot).
- Weights are seeded normals scaled by fan-in, so activations stay of order one at any width.
  The lm_head rows of every token but the lowercase letters and the space are zero: greedy output
  of the random decoder is then lowercase text, which re-encodes to the same ids, so the rollback
  prefix grows like a real transcript's. The compute is that of the real shape.
- `save_checkpoint` writes config.json (`thinker_config`), model.safetensors (`thinker.*` keys)
  and the tokenizer and processor files qwen-asr's `Qwen3ASRModel.from_pretrained` reads, so the
  baseline and the wire server load the very weights the in-process bench runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

from engine.asr_prompt import LANGUAGES
from engine.models.qwen3_asr import Qwen3ASR, Qwen3ASRConfig
from engine.tokenizer import QWEN_SPLIT, Tokenizer
from kernels.attention import backend

SAMPLE_RATE = 16_000

# (content, special), in id order after the 256 byte tokens; `<asr_text>` is not special, so it
# survives decode(skip_special_tokens=True), as in the released tokenizer.
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<|audio_pad|>", True),
    ("<asr_text>", False),
]
NUM_BYTES = 256
# What the random decoder may emit (see the module docstring): lowercase letters and the space.
TEXT_BYTES = [ord(" "), *range(ord("a"), ord("z") + 1)]

# Qwen3-ASR's prompt, reduced to what it renders for one system text and one audio part.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', audio='') -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' and m.content is string -%}"
    "{%- set ns.system = ns.system + m.content -%}"
    "{%- elif m.content is not string -%}"
    "{%- for c in m.content if c.type == 'audio' -%}"
    "{%- set ns.audio = ns.audio + '<|audio_start|><|audio_pad|><|audio_end|>' -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' -}}"
    "{{- '<|im_start|>user\\n' + ns.audio + '<|im_end|>\\n' -}}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# WhisperFeatureExtractor as Qwen3-ASR ships it (preprocessor_config.json).
PREPROCESSOR_CONFIG = {
    "chunk_length": 30,
    "dither": 0.0,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Qwen3ASRProcessor",
    "return_attention_mask": True,
    "sampling_rate": SAMPLE_RATE,
}


@dataclass(frozen=True)
class Shape:
    audio: dict[str, int]  # AuT config fields
    text: dict[str, int]  # decoder config fields
    mrope_section: list[int]
    vocab_size: int | None = None  # None: the synthetic tokenizer's size
    rope_theta: float = 1_000_000.0
    extra: dict[str, Any] = field(default_factory=dict)


SHAPES: dict[str, Shape] = {
    "tiny": Shape(
        audio=dict(
            num_mel_bins=128,
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            downsample_hidden_size=8,
            output_dim=48,
            n_window=50,
            n_window_infer=800,
        ),
        text=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        ),
        mrope_section=[4, 2, 2],
    ),
    "qwen3-asr-0.6b": Shape(
        audio=dict(
            num_mel_bins=128,
            d_model=896,
            encoder_layers=18,
            encoder_attention_heads=14,
            encoder_ffn_dim=3584,
            downsample_hidden_size=480,
            output_dim=1024,
            n_window=50,
            n_window_infer=800,
        ),
        text=dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
        ),
        mrope_section=[24, 20, 20],
        vocab_size=151936,
    ),
}

# Random weight scales: matrices GAIN / sqrt(fan_in); biases BIAS_STD; norm weights 1 +- NORM_STD.
AUDIO_GAIN, TEXT_GAIN, LOGIT_STD = 1.5, 1.0, 2.0
EMBED_STD, BIAS_STD, NORM_STD = 0.5, 0.1, 0.2


# ---- tokenizer ----


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: the character that stands for each byte value."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    chars |= {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in chars)}
    return [chars[b] for b in range(256)]


def byte_vocab() -> dict[str, int]:
    """The BPE vocabulary: byte b has id b."""
    return {c: b for b, c in enumerate(_byte_chars())}


def token_ids() -> dict[str, int]:
    return {content: NUM_BYTES + i for i, (content, _) in enumerate(ADDED_TOKENS)}


def synthetic_tokenizer() -> Tokenizer:
    """The Qwen2-style byte-level tokenizer of the synthetic model, built in memory."""
    backend_ = Backend(models.BPE(byte_vocab(), [], unk_token=None, byte_fallback=False))
    backend_.normalizer = normalizers.NFC()
    backend_.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend_.decoder = decoders.ByteLevel()
    for content, special in ADDED_TOKENS:
        token = AddedToken(content, normalized=False, special=special)
        if special:
            backend_.add_special_tokens([token])
        else:
            backend_.add_tokens([token])
    ids = token_ids()
    assert all(backend_.token_to_id(c) == i for c, i in ids.items()), "added token ids moved"
    return Tokenizer(
        backend_,
        special_tokens=_special_tokens(),
        eos_token_ids=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        chat_template=CHAT_TEMPLATE,
    )


def _special_tokens() -> dict[str, Any]:
    return {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": [
            c for c, special in ADDED_TOKENS if special and c != "<|endoftext|>"
        ],
    }


def tokenizer_files() -> dict[str, str]:
    """The released layout's tokenizer and processor files (name -> text)."""
    ids = token_ids()
    decoder = {
        str(ids[content]): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for content, special in ADDED_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        # the attributes qwen-asr's processor reads (`tokenizer.audio_token`, ...)
        "extra_special_tokens": {
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
            "audio_token": "<|audio_pad|>",
        },
        "model_max_length": 131072,
        "processor_class": "Qwen3ASRProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    } | _special_tokens()
    return {
        "vocab.json": json.dumps(byte_vocab(), ensure_ascii=False),
        "merges.txt": "#version: 0.2\n",
        "tokenizer_config.json": json.dumps(config, indent=2),
        "chat_template.json": json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2),
        "preprocessor_config.json": json.dumps(PREPROCESSOR_CONFIG, indent=2),
    }


# ---- model ----


def released_config(shape: Shape, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json in the released (qwen-asr) layout for a shape."""
    ids = token_ids()
    vocab = shape.vocab_size or NUM_BYTES + len(ADDED_TOKENS)
    audio = {
        **shape.audio,
        "activation_dropout": 0,
        "activation_function": "gelu",
        "attention_dropout": 0,
        "conv_chunksize": 500,
        "dropout": 0,
        "initializer_range": 0.02,
        "max_source_positions": 1500,
        "model_type": "qwen3_asr_audio_encoder",
        "num_hidden_layers": shape.audio["encoder_layers"],
        "scale_embedding": False,
    }
    text = {
        **shape.text,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 65536,
        "model_type": "qwen3_asr_text",
        "rms_norm_eps": 1e-6,
        "rope_scaling": {
            "interleaved": True,
            "mrope_section": shape.mrope_section,
            "rope_type": "default",
        },
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": vocab,
    }
    thinker = {
        "audio_config": audio,
        "audio_end_token_id": ids["<|audio_end|>"],
        "audio_start_token_id": ids["<|audio_start|>"],
        "audio_token_id": ids["<|audio_pad|>"],
        "initializer_range": 0.02,
        "model_type": "qwen3_asr_thinker",
        "text_config": text,
        "user_token_id": 872,
    }
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "dtype": str(dtype).removeprefix("torch."),
        "model_type": "qwen3_asr",
        "support_languages": list(dict.fromkeys(LANGUAGES.values())),
        "thinker_config": thinker,
        "transformers_version": "4.57.6",
    }


def build_model(
    shape: str,
    device: str,
    dtype: torch.dtype,
    seed: int = 0,
    attention_backend: str | None = None,
) -> tuple[Qwen3ASR, Tokenizer, dict[str, Any]]:
    """Random weights in a named shape: (model, tokenizer, its config.json)."""
    config = released_config(SHAPES[shape], dtype)
    cfg = Qwen3ASRConfig.from_dict(config, lm_head_stored=True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ASR(cfg, backend(attention_backend, device))
    finally:
        torch.set_default_dtype(default)
    randomize(model, seed)
    return model.eval(), synthetic_tokenizer(), config


@torch.no_grad()
def randomize(model: Qwen3ASR, seed: int) -> None:
    """Seeded weights (see the scales above), drawn on the model's device in float32."""
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    for name, p in model.named_parameters():
        w = torch.randn(p.shape, generator=g, device=device) * _std(name, tuple(p.shape))
        if p.ndim == 1 and not name.endswith("bias"):
            w += 1.0  # LayerNorm / RMSNorm weights: around 1
        p.copy_(w)
    head = model.decoder.lm_head.weight
    keep = torch.zeros(head.shape[0], dtype=torch.bool, device=device)
    keep[TEXT_BYTES] = True
    head[~keep] = 0


def _std(name: str, shape: tuple[int, ...]) -> float:
    if name.endswith("bias"):
        return BIAS_STD
    if len(shape) == 1:
        return NORM_STD
    if name.endswith("embed_tokens.weight"):
        return EMBED_STD
    fan_in = float(np.prod(shape[1:]))
    if name.endswith("lm_head.weight"):
        return LOGIT_STD / fan_in**0.5
    gain = AUDIO_GAIN if name.startswith("encoder.") else TEXT_GAIN
    return gain / fan_in**0.5


# our module names -> the released checkpoint's (engine/models/qwen3_asr.PREFIXES, reversed)
RELEASED_NAMES = [
    ("encoder.", "thinker.audio_tower."),
    ("decoder.model.", "thinker.model."),
    ("decoder.lm_head.", "thinker.lm_head."),
]


def released_state_dict(model: Qwen3ASR) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        ours, theirs = next(pair for pair in RELEASED_NAMES if name.startswith(pair[0]))
        out[theirs + name[len(ours) :]] = p.detach().to("cpu").contiguous()
    return out


def save_checkpoint(model: Qwen3ASR, config: dict[str, Any], folder: Path) -> Path:
    """Writes the model as a released-layout Qwen3-ASR checkpoint folder; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"_from_model_config": True, "transformers_version": "4.57.6"}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    for name, text in tokenizer_files().items():
        (folder / name).write_text(text, encoding="utf-8")
    save_file(released_state_dict(model), str(folder / "model.safetensors"), {"format": "pt"})
    return folder


# ---- audio ----


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like 16 kHz float32 signal: a voiced source (harmonics of a wandering pitch)
    and noise, shaped by a syllable-rate envelope with pauses, over a steady noise floor; and at
    0.2 s a short tone, its loudest sound.

    The tone fixes the log-mel peak, and so the front end's clamp floor (peak - 80 dB), from the
    first step of a segment that starts at 0: a later, louder sound would move the floor and make
    the stream re-encode its cached windows (as it does on real audio, where this is rare)."""
    rng = np.random.RandomState(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    envelope = _envelope(seconds, rng, t)
    pitch = np.interp(t, *_control(seconds, 2.0, rng, 100.0, 220.0))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(h * phase) / h for h in range(1, 7))
    hiss = rng.standard_normal(n)
    floor = 0.01 * rng.standard_normal(n)
    x = envelope * (0.2 * voiced + 0.05 * hiss) + floor
    tone = t[: int(0.3 * SAMPLE_RATE)]
    at = int(0.2 * SAMPLE_RATE)
    x[at : at + tone.size] += 0.8 * np.sin(np.pi * tone / 0.3) ** 2 * np.sin(2 * np.pi * 440 * tone)
    return x.astype(np.float32)


def _control(seconds: float, rate: float, rng, low: float, high: float):
    """Random control points `rate` per second: (times, values) for np.interp."""
    k = int(seconds * rate) + 2
    return np.arange(k) / rate, rng.uniform(low, high, k)


def _envelope(seconds: float, rng, t: np.ndarray) -> np.ndarray:
    """Syllables (about 4 a second) in phrases, with a pause in one half-second of five."""
    times, values = _control(seconds, 8.0, rng, 0.0, 1.0)
    syllables = np.interp(t, times, values) ** 2
    pause_times, gates = _control(seconds, 2.0, rng, 0.0, 1.0)
    gate = np.interp(t, pause_times, (gates > 0.2).astype(np.float64))
    return syllables * gate
