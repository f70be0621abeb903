"""Tiny random checkpoints in the real Hugging Face formats, for parity tests.

`build_qwen3` writes a complete Qwen3 folder (config, generation config, tokenizer files,
safetensors weights with HF's key names, single file or sharded with an index). Weights come
from numpy's legacy `RandomState`, whose streams are stable across numpy versions, so the
project's environment and the reference environment (tests/fixtures/make_ref_env.sh) build
bit-identical checkpoints. tests/fixtures/make_qwen3_golden.py records HF transformers' outputs
for them; tests/test_tiny_models.py guards the builder against drifting from those fixtures.

`build_qwen3_asr` does the same for Qwen3-ASR, in the released (qwen-asr) layout or the
transformers 5 "-hf" layout (see its section below), and `qwen3_asr_audio` makes the test audio
of its fixtures (tests/fixtures/make_qwen3_asr_golden.py).

Depends only on numpy, safetensors, tokenizers and the standard library (and soundfile, for
`qwen3_asr_audio` only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tokenizers import Tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
QWEN3_TOKENIZER_DIR = FIXTURES / "qwen3"
QWEN3_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

# Architecture of the tiny Qwen3 (Qwen3-0.6B's layout, shrunk).
QWEN3_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}

# Standard deviations of the random weights. Chosen so that every part matters (attention, MLP,
# the q/k norms) and the logits have a spread of a few units, with clear top-2 margins.
EMBED_STD = 0.5
MATRIX_STD = 0.25
LM_HEAD_STD = 0.5
NORM_NOISE_STD = 0.2


def qwen3_config(vocab_size: int, bos_id: int, eos_id: int, *, tie: bool) -> dict[str, object]:
    """config.json in the layout of Qwen/Qwen3-0.6B's (its fields and transformers_version)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        **QWEN3_DIMS,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 512,
        "max_window_layers": QWEN3_DIMS["num_hidden_layers"],
        "model_type": "qwen3",
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": tie,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def qwen3_generation_config(bos_id: int, eos_ids: list[int], pad_id: int) -> dict[str, object]:
    """generation_config.json as Qwen3 ships it (its sampling defaults included)."""
    return {
        "bos_token_id": bos_id,
        "do_sample": True,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "transformers_version": "4.51.0",
    }


def qwen3_weight_shapes(vocab_size: int, *, tie: bool) -> dict[str, tuple[int, ...]]:
    """HF key names and shapes, in state-dict order (the order the weights are drawn in)."""
    return qwen3_weight_shapes_for(QWEN3_DIMS, vocab_size, tie=tie)


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Float32 weights from RandomState(seed), drawn in the order of `shapes`."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # RMSNorm weights: around 1, noisy enough to matter
            value = 1.0 + NORM_NOISE_STD * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            value = EMBED_STD * rng.standard_normal(shape)
        elif name == "lm_head.weight":
            value = LM_HEAD_STD * rng.standard_normal(shape)
        else:
            value = MATRIX_STD * rng.standard_normal(shape)
        out[name] = value.astype(np.float32)
    return out


def tokenizer_vocab_size(tokenizer_json: Path) -> int:
    return Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)


def _token_id(tok: Tokenizer, token: str) -> int:
    id_ = tok.token_to_id(token)
    if id_ is None:
        raise ValueError(f"{token} is not in the tokenizer")
    return id_


def _split_in_order(names: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    """`shards` contiguous groups of about equal byte size, in state-dict order (as HF does)."""
    if not 1 <= shards <= len(names):
        raise ValueError(f"shards must be in 1..{len(names)}")
    target = sum(sizes.values()) / shards
    groups: list[list[str]] = [[]]
    size = 0
    for i, name in enumerate(names):
        groups_left = shards - len(groups)
        full = size >= target or len(names) - i <= groups_left
        if groups[-1] and groups_left and full:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += sizes[name]
    return groups


def save_safetensors(folder: Path, weights: dict[str, np.ndarray], shards: int = 1) -> None:
    """`model.safetensors`, or HF-style shards plus `model.safetensors.index.json`."""
    meta = {"format": "pt"}
    if shards == 1:
        save_file(weights, str(folder / "model.safetensors"), metadata=meta)
        return
    sizes = {name: int(w.nbytes) for name, w in weights.items()}
    weight_map = {}
    for k, group in enumerate(_split_in_order(list(weights), sizes, shards), start=1):
        fname = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file({n: weights[n] for n in group}, str(folder / fname), metadata=meta)
        weight_map |= dict.fromkeys(group, fname)
    index = {
        "metadata": {"total_size": sum(sizes.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    _write_json(folder / "model.safetensors.index.json", index)


def _write_json(path: Path, doc: object) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_qwen3(
    path: Path, *, seed: int = 0, tie_word_embeddings: bool = False, shards: int = 1
) -> Path:
    """Writes a complete tiny HF Qwen3 checkpoint folder at `path` and returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in QWEN3_TOKENIZER_FILES:
        shutil.copyfile(QWEN3_TOKENIZER_DIR / name, path / name)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eot, im_end = _token_id(tok, "<|endoftext|>"), _token_id(tok, "<|im_end|>")
    _write_json(path / "config.json", qwen3_config(vocab, eot, im_end, tie=tie_word_embeddings))
    _write_json(path / "generation_config.json", qwen3_generation_config(eot, [im_end, eot], eot))
    shapes = qwen3_weight_shapes(vocab, tie=tie_word_embeddings)
    save_safetensors(path, random_weights(shapes, seed), shards)
    return path


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint folder, single-file or sharded."""
    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            out |= {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    return out


def tensors_sha256(folder: Path) -> str:
    """A digest of a checkpoint's tensors (names, dtypes, shapes, bytes), not of its files."""
    h = hashlib.sha256()
    for name, t in sorted(load_tensors(folder).items()):
        h.update(f"{name}|{t.dtype.str}|{list(t.shape)}\n".encode())
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Qwen3-ASR
#
# `build_qwen3_asr` writes a tiny Qwen3-ASR folder in one of two layouts, holding the same weights:
# - "released": what qwen-asr (Qwen/Qwen3-ASR-*) ships and `Qwen3ASRForConditionalGeneration
#   .save_pretrained` writes under transformers 4.57: the verbose nested config.json
#   (`thinker_config.{audio_config,text_config}`), `thinker.audio_tower.*`, `thinker.model.*`,
#   `thinker.lm_head.weight` (untied only), and the tokenizer and processor files of
#   tests/fixtures/qwen3_asr/ (made by make_qwen3_asr_tokenizer.py);
# - "hf": what transformers 5.x's native `Qwen3ASRForConditionalGeneration.save_pretrained` writes
#   (the "-hf" checkpoints): a flat config.json, `model.audio_tower.*` (without proj1/proj2),
#   `model.multi_modal_projector.linear_{1,2}`, `model.language_model.*`, `lm_head.weight`, and
#   the processor files of tests/fixtures/qwen3_asr/hf/ (made by make_qwen3_asr_golden_hf.py).
# tests/fixtures/make_qwen3_asr_golden.py and make_qwen3_asr_golden_hf.py check both against
# the reference classes.
# ------------------------------------------------------------------------------------------------

QWEN3_ASR_DIR = FIXTURES / "qwen3_asr"
QWEN3_ASR_HF_DIR = QWEN3_ASR_DIR / "hf"
QWEN3_ASR_RELEASED_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "chat_template.json",
    "preprocessor_config.json",
)
QWEN3_ASR_HF_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
)

# Audio encoder ("AuT") and text model of the tiny Qwen3-ASR (the released layout, shrunk).
QWEN3_ASR_AUDIO_DIMS = {
    "num_mel_bins": 128,
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "downsample_hidden_size": 8,
    "output_dim": 48,
    "n_window": 50,
    "n_window_infer": 800,
}
QWEN3_ASR_TEXT_DIMS = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
QWEN3_ASR_ROPE_THETA = 1_000_000.0
QWEN3_ASR_MROPE = {"interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"}
QWEN3_ASR_MAX_POSITIONS = 65536
QWEN3_ASR_LANGUAGES = [  # qwen_asr.inference.utils.SUPPORTED_LANGUAGES, in its order
    "Chinese", "English", "Cantonese", "Arabic", "German", "French", "Spanish", "Portuguese",
    "Indonesian", "Italian", "Korean", "Russian", "Thai", "Vietnamese", "Japanese", "Turkish",
    "Hindi", "Malay", "Dutch", "Swedish", "Danish", "Finnish", "Polish", "Czech", "Filipino",
    "Persian", "Greek", "Romanian", "Hungarian", "Macedonian",
]  # fmt: skip

# Random weights of the audio tower: matrices and conv kernels get AUDIO_GAIN / sqrt(fan_in), so
# every layer keeps activations of order one; biases BIAS_STD; LayerNorm weights 1 +- noise. The
# text model reuses the Qwen3 scales above (EMBED_STD, MATRIX_STD, LM_HEAD_STD, NORM_NOISE_STD).
AUDIO_GAIN = 1.5
BIAS_STD = 0.1
# Output rows (lm_head, or the tied embedding) of byte fragments (tokens that are not complete
# UTF-8 on their own) and of control characters are scaled down, so that greedy output is mostly
# readable text with an occasional U+FFFD, as the streaming rollback fixtures need.
FRAGMENT_ROW_SCALE = 0.85

# The fields every sub-config of transformers 4.57 writes (PretrainedConfig's own attributes at
# their defaults): the released config.json is verbose because its sub-configs are saved whole.
_HF4_SUBCONFIG_DEFAULTS: dict[str, object] = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "architectures": None,
    "bad_words_ids": None,
    "begin_suppress_tokens": None,
    "bos_token_id": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "dtype": None,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "pad_token_id": None,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "suppress_tokens": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tf_legacy_loss": False,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torchscript": False,
    "typical_p": 1.0,
    "use_bfloat16": False,
}


def qwen3_asr_token_ids(folder: Path = QWEN3_ASR_DIR) -> dict[str, int]:
    """Ids of the Qwen3-ASR added tokens, from a folder's tokenizer_config.json."""
    config = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
    return {v["content"]: int(k) for k, v in config["added_tokens_decoder"].items()}


def qwen3_asr_vocab_size(folder: Path = QWEN3_ASR_DIR) -> int:
    """BPE entries plus added tokens (the tiny model's vocab_size: no padding rows)."""
    vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
    return len(vocab) + len(qwen3_asr_token_ids(folder))


def qwen3_asr_config(vocab_size: int, ids: dict[str, int], *, tie: bool) -> dict[str, object]:
    """config.json of the released layout, as qwen-asr's Qwen3ASRConfig saves it (4.57)."""
    a = QWEN3_ASR_AUDIO_DIMS
    audio = _HF4_SUBCONFIG_DEFAULTS | {
        **a,
        "activation_dropout": 0,
        "activation_function": "gelu",
        "attention_dropout": 0,
        "conv_chunksize": 500,
        "dropout": 0,
        "initializer_range": 0.02,
        "max_source_positions": 1500,
        "model_type": "qwen3_asr_audio_encoder",
        "num_hidden_layers": a["encoder_layers"],
        "scale_embedding": False,
    }
    text = _HF4_SUBCONFIG_DEFAULTS | {
        **QWEN3_ASR_TEXT_DIMS,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": QWEN3_ASR_MAX_POSITIONS,
        "model_type": "qwen3_asr_text",
        "rms_norm_eps": 1e-6,
        "rope_scaling": QWEN3_ASR_MROPE,
        "rope_theta": QWEN3_ASR_ROPE_THETA,
        "tie_word_embeddings": tie,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    thinker = {
        "audio_config": audio,
        "audio_end_token_id": ids["<|audio_end|>"],
        "audio_start_token_id": ids["<|audio_start|>"],
        "audio_token_id": ids["<|audio_pad|>"],
        "initializer_range": 0.02,
        "model_type": "qwen3_asr_thinker",
        "text_config": text,
        "user_token_id": 872,  # the class default (Qwen's "user" id); unused by the model
    }
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "dtype": "float32",
        "model_type": "qwen3_asr",
        "support_languages": QWEN3_ASR_LANGUAGES,
        "thinker_config": thinker,
        "transformers_version": "4.57.6",
    }


def qwen3_asr_hf_config(vocab_size: int, ids: dict[str, int], *, tie: bool) -> dict[str, object]:
    """config.json of the "hf" layout, as transformers 5.x's Qwen3ASRConfig saves it.

    `tie_word_embeddings` is written at both levels: 5.x ties on the top-level flag (default
    True), so an untied checkpoint needs it there too.
    """
    a, t = QWEN3_ASR_AUDIO_DIMS, QWEN3_ASR_TEXT_DIMS
    audio = {
        **a,
        "activation_dropout": 0,
        "activation_function": "gelu",
        "attention_dropout": 0,
        "conv_chunksize": 500,
        "dropout": 0,
        "initializer_range": 0.02,
        "max_position_embeddings": 13,
        "model_type": "qwen3_asr_encoder",
        "num_key_value_heads": a["encoder_attention_heads"],
        "scale_embedding": False,
    }
    text = {
        **t,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "eos_token_id": None,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "layer_types": ["full_attention"] * t["num_hidden_layers"],
        "max_position_embeddings": QWEN3_ASR_MAX_POSITIONS,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "pad_token_id": None,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": QWEN3_ASR_ROPE_THETA, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": tie,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "audio_config": audio,
        "audio_token_id": ids["<|audio_pad|>"],
        "dtype": "float32",
        "eos_token_id": [ids["<|endoftext|>"], ids["<|im_end|>"]],
        "initializer_range": 0.02,
        "model_type": "qwen3_asr",
        "pad_token_id": ids["<|im_end|>"],
        "text_config": text,
        "tie_word_embeddings": tie,
        "timestamp_token_id": 151705,  # the class default (forced aligner only); unused here
        "token_classification_bias": False,
        "transformers_version": "5.24.0",
    }


def qwen3_asr_generation_config(layout: str, ids: dict[str, int]) -> dict[str, object]:
    """generation_config.json: the released layout's carries no EOS (qwen-asr hard-codes
    <|im_end|>, <|endoftext|>); the hf one is what transformers' converter sets."""
    if layout == "released":
        return {"_from_model_config": True, "transformers_version": "4.57.6"}
    eos = [ids["<|endoftext|>"], ids["<|im_end|>"]]
    return {
        "do_sample": False,
        "eos_token_id": eos,
        "max_new_tokens": 512,
        "pad_token_id": ids["<|im_end|>"],
        "transformers_version": "5.24.0",
    }


def _audio_layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    d, ffn = QWEN3_ASR_AUDIO_DIMS["d_model"], QWEN3_ASR_AUDIO_DIMS["encoder_ffn_dim"]
    p = f"thinker.audio_tower.layers.{i}."
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):  # qwen-asr's registration order
        shapes |= {p + f"self_attn.{proj}.weight": (d, d), p + f"self_attn.{proj}.bias": (d,)}
    return shapes | {
        p + "self_attn_layer_norm.weight": (d,),
        p + "self_attn_layer_norm.bias": (d,),
        p + "fc1.weight": (ffn, d),
        p + "fc1.bias": (ffn,),
        p + "fc2.weight": (d, ffn),
        p + "fc2.bias": (d,),
        p + "final_layer_norm.weight": (d,),
        p + "final_layer_norm.bias": (d,),
    }


def _audio_tower_shapes() -> dict[str, tuple[int, ...]]:
    a = QWEN3_ASR_AUDIO_DIMS
    d, c = a["d_model"], a["downsample_hidden_size"]
    freq = (((a["num_mel_bins"] + 1) // 2 + 1) // 2 + 1) // 2  # 128 mels -> 16 after 3 convs
    p = "thinker.audio_tower."
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(a["encoder_layers"]):
        shapes |= _audio_layer_shapes(i)
    return shapes | {
        p + "ln_post.weight": (d,),
        p + "ln_post.bias": (d,),
        p + "conv2d1.weight": (c, 1, 3, 3),
        p + "conv2d1.bias": (c,),
        p + "conv2d2.weight": (c, c, 3, 3),
        p + "conv2d2.bias": (c,),
        p + "conv2d3.weight": (c, c, 3, 3),
        p + "conv2d3.bias": (c,),
        p + "conv_out.weight": (d, c * freq),
        p + "proj1.weight": (d, d),
        p + "proj1.bias": (d,),
        p + "proj2.weight": (a["output_dim"], d),
        p + "proj2.bias": (a["output_dim"],),
    }


def qwen3_asr_weight_shapes(vocab_size: int, *, tie: bool) -> dict[str, tuple[int, ...]]:
    """Released key names and shapes, in qwen-asr's state-dict order (the draw order)."""
    text = qwen3_weight_shapes_for(QWEN3_ASR_TEXT_DIMS, vocab_size, tie=True)
    shapes = _audio_tower_shapes() | {"thinker." + k: v for k, v in text.items()}
    if not tie:
        shapes["thinker.lm_head.weight"] = (vocab_size, QWEN3_ASR_TEXT_DIMS["hidden_size"])
    return shapes


def qwen3_weight_shapes_for(
    dims: dict[str, int], vocab_size: int, *, tie: bool
) -> dict[str, tuple[int, ...]]:
    """A Qwen3 decoder's HF key names and shapes for the given dimensions, in state-dict order."""
    h, inter, d = dims["hidden_size"], dims["intermediate_size"], dims["head_dim"]
    q, kv = dims["num_attention_heads"] * d, dims["num_key_value_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, h)}
    for i in range(dims["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    shapes["model.norm.weight"] = (h,)
    if not tie:
        shapes["lm_head.weight"] = (vocab_size, h)
    return shapes


def _asr_std(name: str, shape: tuple[int, ...]) -> float:
    """Standard deviation of a random Qwen3-ASR weight (see AUDIO_GAIN and the Qwen3 scales)."""
    if name.endswith("embed_tokens.weight"):
        return EMBED_STD
    if name.endswith("lm_head.weight"):
        return LM_HEAD_STD
    if name.startswith("thinker.audio_tower."):
        return AUDIO_GAIN / float(np.sqrt(np.prod(shape[1:])))
    return MATRIX_STD


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character that stands for each byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    chars |= {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in chars)}
    return {c: b for b, c in chars.items()}


def qwen3_asr_fragment_ids(folder: Path = QWEN3_ASR_DIR) -> list[int]:
    """Ids of BPE entries that are not printable text on their own: incomplete UTF-8 (byte
    fragments) or control characters other than whitespace."""
    vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
    to_byte = _byte_level_alphabet()
    out = []
    for token, id_ in vocab.items():
        try:
            text = bytes(to_byte[c] for c in token).decode("utf-8")
        except UnicodeDecodeError:
            out.append(id_)
            continue
        if any(not (ch.isprintable() or ch in " \t\n\r") for ch in text):
            out.append(id_)
    return sorted(out)


def qwen3_asr_random_weights(
    shapes: dict[str, tuple[int, ...]], seed: int, fragment_ids: list[int]
) -> dict[str, np.ndarray]:
    """Float32 weights from RandomState(seed), drawn in the order of `shapes`; the output rows
    of `fragment_ids` are then scaled by FRAGMENT_ROW_SCALE."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in shapes.items():
        noise = rng.standard_normal(shape)
        if name.endswith(".bias"):
            value = BIAS_STD * noise
        elif len(shape) == 1:  # LayerNorm / RMSNorm weights: around 1
            value = 1.0 + NORM_NOISE_STD * noise
        else:
            value = _asr_std(name, shape) * noise
        out[name] = value.astype(np.float32)
    head = "thinker.lm_head.weight"
    if head not in out:
        head = "thinker.model.embed_tokens.weight"
    out[head][fragment_ids] *= np.float32(FRAGMENT_ROW_SCALE)
    return out


# Released -> hf key prefixes (transformers' convert_qwen3_asr_to_hf.py, applied in this order).
QWEN3_ASR_HF_RENAMES = (
    ("thinker.model.", "model.language_model."),
    ("thinker.lm_head.", "lm_head."),
    ("thinker.", "model."),
    ("model.audio_tower.proj1.", "model.multi_modal_projector.linear_1."),
    ("model.audio_tower.proj2.", "model.multi_modal_projector.linear_2."),
)


def qwen3_asr_hf_name(name: str) -> str:
    """The "hf" layout's name of a released-layout tensor."""
    for old, new in QWEN3_ASR_HF_RENAMES:
        name = name.replace(old, new)
    return name


def build_qwen3_asr(
    path: Path,
    *,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    layout: str = "released",
    shards: int = 1,
) -> Path:
    """Writes a complete tiny Qwen3-ASR checkpoint folder at `path` and returns `path`."""
    if layout not in ("released", "hf"):
        raise ValueError(f"layout must be 'released' or 'hf', not {layout!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids, vocab = qwen3_asr_token_ids(), qwen3_asr_vocab_size()
    tie = tie_word_embeddings
    shapes = qwen3_asr_weight_shapes(vocab, tie=tie)
    weights = qwen3_asr_random_weights(shapes, seed, qwen3_asr_fragment_ids())
    if layout == "released":
        files, source, config = QWEN3_ASR_RELEASED_FILES, QWEN3_ASR_DIR, qwen3_asr_config
    else:
        files, source, config = QWEN3_ASR_HF_FILES, QWEN3_ASR_HF_DIR, qwen3_asr_hf_config
        weights = {qwen3_asr_hf_name(k): v for k, v in weights.items()}
    for name in files:
        shutil.copyfile(source / name, path / name)
    _write_json(path / "config.json", config(vocab, ids, tie=tie))
    _write_json(path / "generation_config.json", qwen3_asr_generation_config(layout, ids))
    save_safetensors(path, weights, shards)
    return path


# Test audio of the Qwen3-ASR fixtures: built from committed files and seeded signals, so that the
# golden files store only outputs.
SAMPLE_RATE = 16000


def _speech(name: str) -> np.ndarray:
    import soundfile as sf  # only the audio helpers need it

    x, rate = sf.read(str(FIXTURES / f"{name}.ogg"), dtype="float32")
    assert rate == SAMPLE_RATE and x.ndim == 1
    return x


def _place(total_s: float, parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """A float32 signal of `total_s` seconds, the sum of `parts` placed at their start times."""
    out = np.zeros(round(total_s * SAMPLE_RATE), dtype=np.float32)
    for start_s, x in parts:
        a = round(start_s * SAMPLE_RATE)
        out[a : a + len(x)] += x[: len(out) - a]
    return out


def _envelope(seconds: float) -> np.ndarray:
    """A smooth on and off (sin^2) over `seconds`."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.sin(np.pi * t / seconds) ** 2


def _tone(seconds: float, freqs: list[float], amplitude: float) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    return (amplitude * _envelope(seconds) * x).astype(np.float32)


def _synthetic_12s() -> np.ndarray:
    """12 s: seeded noise, tones and both speech clips, so every 8 s attention window sees
    something different."""
    rng = np.random.RandomState(12)
    noise = (0.01 * rng.standard_normal(12 * SAMPLE_RATE)).astype(np.float32)
    burst = (0.3 * _envelope(1.0) * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    parts = [
        (0.0, noise),
        (0.3, _tone(1.8, [220.0, 330.0], 0.3)),
        (2.4, _speech("hello")),
        (5.2, _tone(1.5, [500.0, 750.0, 1125.0], 0.4)),
        (7.0, _speech("weather")),
        (9.6, _tone(0.9, [3000.0], 0.2)),
        (10.8, burst),
    ]
    return _place(12.0, parts)


def qwen3_asr_audio(name: str) -> np.ndarray:
    """The named test signal (16 kHz mono float32) of the Qwen3-ASR fixtures:
    `hello_3s`: hello.ogg, then silence to 3.0 s; `silence_3s`: 3.0 s of zeros;
    `synthetic_12s`: see `_synthetic_12s`; `stream_9s`: speech, 2.5 s of silence, speech,
    silence to 9.0 s (hello.ogg at 0.5 s, weather.ogg 2.5 s after its end)."""
    if name == "hello_3s":
        return _place(3.0, [(0.0, _speech("hello"))])
    if name == "silence_3s":
        return _place(3.0, [])
    if name == "synthetic_12s":
        return _synthetic_12s()
    if name == "stream_9s":
        hello = _speech("hello")
        return _place(
            9.0, [(0.5, hello), (0.5 + len(hello) / SAMPLE_RATE + 2.5, _speech("weather"))]
        )
    raise KeyError(name)


# ------------------------------------------------------------------------------------------------
# Paraformer and Paraformer-streaming (FunASR)
#
# `build_paraformer` writes a tiny model folder in the layout of the released FunASR checkpoints
# (funasr/paraformer-zh, funasr/paraformer-zh-streaming): config.yaml, configuration.json,
# model.pt (a plain torch state dict with FunASR's key names, written with torch.save from numpy,
# without funasr), am.mvn (Kaldi nnet text), tokens.json and seg_dict. The offline and streaming
# models have the same tensors (FunASR's ParaformerStreaming keeps Paraformer's key names); their
# config.yaml differ as the released ones do: SANMEncoderChunkOpt with `input_layer: pe_online`
# and the SCAMA chunk settings, a causal decoder FSMN (`sanm_shfit: 5`) and WavFrontendOnline.
# tests/fixtures/make_paraformer_golden.py checks both against funasr's classes and records its
# outputs on `paraformer_audio` clips.
# ------------------------------------------------------------------------------------------------

PARAFORMER_ENCODER_DIMS = {
    "output_size": 32,
    "attention_heads": 2,
    "linear_units": 64,
    "num_blocks": 3,
    "kernel_size": 11,
}
PARAFORMER_DECODER_DIMS = {
    "attention_heads": 2,
    "linear_units": 64,
    "num_blocks": 2,
    "att_layer_num": 2,
    "kernel_size": 11,
}
PARAFORMER_N_MELS, PARAFORMER_LFR_M, PARAFORMER_LFR_N = 80, 7, 6
PARAFORMER_FEAT_DIM = PARAFORMER_N_MELS * PARAFORMER_LFR_M  # 560
# The SCAMA chunk settings of the released paraformer-zh-streaming encoder_conf (training-time
# masks; inference takes chunk_size=[0, 10, 5] from the caller instead).
PARAFORMER_STREAMING_CHUNKS = {
    "chunk_size": [12, 15],
    "stride": [8, 10],
    "pad_left": [0, 0],
    "encoder_att_look_back_factor": [4, 4],
    "decoder_att_look_back_factor": [1, 1],
}
PARAFORMER_TOKENS = [
    "<blank>", "<s>", "</s>",
    "你", "好", "今", "天", "气", "很", "不", "错", "我", "们", "说", "话", "的", "是",
    "一", "二", "三", "四", "0", "1", "2", "3",
    "a", "b", "c", "d", "e", "h", "i", "k", "l", "o", "r", "s", "t", "w",
    "hel@@", "lo", "wor@@", "ld", "wea@@", "ther", "to@@", "day", "the", "is", "good",
    "it's", "'",
    "<unk>",
]  # fmt: skip
# seg_dict: word -> pieces, as the released file maps English words to BPE pieces (CharTokenizer
# uses it to encode text only; decoding ignores it).
PARAFORMER_SEG_DICT = {
    "hello": "hel@@ lo",
    "world": "wor@@ ld",
    "weather": "wea@@ ther",
    "today": "to@@ day",
    "the": "the",
    "is": "is",
    "good": "good",
    "it's": "it's",
    **{ch: ch for ch in "你好今天气很不错我们说话的是一二三四"},
}

# Random weights: matrices and convolutions PARAFORMER_GAIN / sqrt(fan_in), biases BIAS_STD,
# LayerNorm weights 1 +- NORM_NOISE_STD. The output layer gets a larger gain so that the decoder's
# argmax has clear margins, and the CIF predictor's output gain and bias set how often CIF fires:
# a few tokens per second of speech (sum of alphas), not zero.
PARAFORMER_GAIN = 1.0
PARAFORMER_OUTPUT_GAIN = 3.0
PARAFORMER_CIF_GAIN = 3.0
PARAFORMER_CIF_BIAS = -2.1


def paraformer_config(*, streaming: bool = False) -> dict[str, object]:
    """config.yaml of the tiny model, in the released files' layout (dimensions shrunk)."""
    enc, dec = PARAFORMER_ENCODER_DIMS, PARAFORMER_DECODER_DIMS
    encoder_conf: dict[str, object] = {
        "output_size": enc["output_size"],
        "attention_heads": enc["attention_heads"],
        "linear_units": enc["linear_units"],
        "num_blocks": enc["num_blocks"],
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe_online" if streaming else "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": enc["kernel_size"],
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    }
    if streaming:
        encoder_conf |= PARAFORMER_STREAMING_CHUNKS
    decoder_conf = {
        "attention_heads": dec["attention_heads"],
        "linear_units": dec["linear_units"],
        "num_blocks": dec["num_blocks"],
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "att_layer_num": dec["att_layer_num"],
        "kernel_size": dec["kernel_size"],
        "sanm_shfit": 5 if streaming else 0,  # streaming: a causal FSMN memory in the decoder
    }
    return {
        "model": "ParaformerStreaming" if streaming else "Paraformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoderChunkOpt" if streaming else "SANMEncoder",
        "encoder_conf": encoder_conf,
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": decoder_conf,
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": enc["output_size"],
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontendOnline" if streaming else "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": PARAFORMER_N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "dither": 0.0,  # WavFrontend defaults to 1.0 (random): parity needs 0
            "lfr_m": PARAFORMER_LFR_M,
            "lfr_n": PARAFORMER_LFR_N,
        },
        "specaug": "SpecAugLFR",  # training only
        "specaug_conf": {
            "apply_time_warp": False,
            "time_warp_window": 5,
            "time_warp_mode": "bicubic",
            "apply_freq_mask": True,
            "freq_mask_width_range": [0, 30],
            "lfr_rate": 6,
            "num_freq_mask": 1,
            "apply_time_mask": True,
            "time_mask_width_range": [0, 12],
            "num_time_mask": 1,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {
            "dropout_rate": 0.0,
            "ctc_type": "builtin",
            "reduce": True,
            "ignore_nan_grad": True,
        },
        "normalize": None,
    }


def _yaml_scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _yaml_lines(doc: dict[str, object], indent: int) -> list[str]:
    pad, lines = " " * indent, []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key}:", *_yaml_lines(value, indent + 4)]
        elif isinstance(value, list):
            lines += [f"{pad}{key}:", *(f"{pad}- {_yaml_scalar(v)}" for v in value)]
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(value)}")
    return lines


def paraformer_config_yaml(config: dict[str, object]) -> str:
    """YAML text in the released files' style: 4-space indents, block lists, a blank line
    between top-level sections (a section is a key and, when it has one, its `_conf`)."""
    out: list[str] = []
    previous = None
    for key, value in config.items():
        if out and key != f"{previous}_conf":
            out.append("")
        out += _yaml_lines({key: value}, 0)
        previous = key
    return "\n".join(out) + "\n"


def paraformer_configuration_json(*, streaming: bool = False) -> dict[str, object]:
    """configuration.json as funasr/paraformer-zh ships it (its file_path_metas)."""
    name = "online" if streaming else "pytorch"
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {
            "ms": f"iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-{name}",
            "hf": "",
        },
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"token_list": "tokens.json", "seg_dict_file": "seg_dict"},
            "frontend_conf": {"cmvn_file": "am.mvn"},
        },
    }


def _sanm_encoder_layer_shapes(p: str, d_in: int, d: int, ffn: int, k: int) -> dict:
    return {
        p + "self_attn.linear_out.weight": (d, d),
        p + "self_attn.linear_out.bias": (d,),
        p + "self_attn.linear_q_k_v.weight": (3 * d, d_in),
        p + "self_attn.linear_q_k_v.bias": (3 * d,),
        p + "self_attn.fsmn_block.weight": (d, 1, k),
        p + "feed_forward.w_1.weight": (ffn, d),
        p + "feed_forward.w_1.bias": (ffn,),
        p + "feed_forward.w_2.weight": (d, ffn),
        p + "feed_forward.w_2.bias": (d,),
        p + "norm1.weight": (d_in,),
        p + "norm1.bias": (d_in,),
        p + "norm2.weight": (d,),
        p + "norm2.bias": (d,),
    }


def _sanm_decoder_ffn_shapes(p: str, d: int, ffn: int) -> dict:
    """PositionwiseFeedForwardDecoderSANM: w_1 -> ReLU -> LayerNorm(norm) -> w_2 (no bias)."""
    return {
        p + "feed_forward.w_1.weight": (ffn, d),
        p + "feed_forward.w_1.bias": (ffn,),
        p + "feed_forward.w_2.weight": (d, ffn),
        p + "feed_forward.norm.weight": (ffn,),
        p + "feed_forward.norm.bias": (ffn,),
    }


def _sanm_decoder_layer_shapes(p: str, d: int, ffn: int, k: int) -> dict:
    shapes = {
        p + "self_attn.fsmn_block.weight": (d, 1, k),
        p + "src_attn.linear_q.weight": (d, d),
        p + "src_attn.linear_q.bias": (d,),
        p + "src_attn.linear_k_v.weight": (2 * d, d),
        p + "src_attn.linear_k_v.bias": (2 * d,),
        p + "src_attn.linear_out.weight": (d, d),
        p + "src_attn.linear_out.bias": (d,),
    }
    shapes |= _sanm_decoder_ffn_shapes(p, d, ffn)
    for norm in ("norm1", "norm2", "norm3"):
        shapes |= {p + f"{norm}.weight": (d,), p + f"{norm}.bias": (d,)}
    return shapes


def paraformer_weight_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """FunASR's key names and shapes, in its state-dict order (the draw order). The same for
    Paraformer and ParaformerStreaming (checked by make_paraformer_golden.py)."""
    enc, dec = PARAFORMER_ENCODER_DIMS, PARAFORMER_DECODER_DIMS
    d, k = enc["output_size"], enc["kernel_size"]
    shapes = _sanm_encoder_layer_shapes(
        "encoder.encoders0.0.", PARAFORMER_FEAT_DIM, d, enc["linear_units"], k
    )
    for i in range(enc["num_blocks"] - 1):
        shapes |= _sanm_encoder_layer_shapes(f"encoder.encoders.{i}.", d, d, enc["linear_units"], k)
    shapes |= {"encoder.after_norm.weight": (d,), "encoder.after_norm.bias": (d,)}
    shapes |= {
        "decoder.embed.0.weight": (vocab_size, d),
        "decoder.after_norm.weight": (d,),
        "decoder.after_norm.bias": (d,),
        "decoder.output_layer.weight": (vocab_size, d),
        "decoder.output_layer.bias": (vocab_size,),
    }
    ffn = dec["linear_units"]
    for i in range(dec["att_layer_num"]):
        shapes |= _sanm_decoder_layer_shapes(f"decoder.decoders.{i}.", d, ffn, dec["kernel_size"])
    # decoders2 (num_blocks - att_layer_num FSMN-only layers) is empty here, as in the release.
    shapes |= _sanm_decoder_ffn_shapes("decoder.decoders3.0.", d, ffn)
    shapes |= {"decoder.decoders3.0.norm1.weight": (d,), "decoder.decoders3.0.norm1.bias": (d,)}
    return shapes | {
        "predictor.cif_conv1d.weight": (d, d, 3),
        "predictor.cif_conv1d.bias": (d,),
        "predictor.cif_output.weight": (1, d),
        "predictor.cif_output.bias": (1,),
    }


def _paraformer_value(name: str, shape: tuple[int, ...], noise: np.ndarray) -> np.ndarray:
    """One weight from its standard-normal draw (see PARAFORMER_GAIN and friends)."""
    fan_in = float(np.prod(shape[1:])) if len(shape) > 1 else 1.0
    if name == "predictor.cif_output.bias":
        return PARAFORMER_CIF_BIAS + BIAS_STD * noise
    if name.endswith(".bias"):
        return BIAS_STD * noise
    if len(shape) == 1:  # LayerNorm weights
        return 1.0 + NORM_NOISE_STD * noise
    if name == "decoder.embed.0.weight":  # target embeddings: training only
        return noise
    if name == "decoder.output_layer.weight":
        return PARAFORMER_OUTPUT_GAIN / np.sqrt(fan_in) * noise
    if name == "predictor.cif_output.weight":
        return PARAFORMER_CIF_GAIN / np.sqrt(fan_in) * noise
    return PARAFORMER_GAIN / np.sqrt(fan_in) * noise


def paraformer_random_weights(
    shapes: dict[str, tuple[int, ...]], seed: int
) -> dict[str, np.ndarray]:
    """Float32 weights from RandomState(seed), drawn in the order of `shapes`."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in shapes.items():
        value = _paraformer_value(name, shape, rng.standard_normal(shape))
        out[name] = np.asarray(value, dtype=np.float32)
    return out


def paraformer_cmvn() -> tuple[np.ndarray, np.ndarray]:
    """The am.mvn vectors (AddShift, Rescale), 560 each: a per-mel mean and inverse standard
    deviation of log-mel fbank of speech (made up, but of realistic size), tiled over the 7
    LFR frames as the released file is. Float64, rounded to the 6 decimals written."""
    k = np.arange(PARAFORMER_N_MELS) / (PARAFORMER_N_MELS - 1)
    rng = np.random.RandomState(560)
    mean = 11.0 + 6.0 * np.sqrt(k) + 0.3 * rng.standard_normal(PARAFORMER_N_MELS)
    inv_std = 0.3 - 0.1 * np.sqrt(k) + 0.01 * rng.standard_normal(PARAFORMER_N_MELS)
    shift = np.round(np.tile(-mean, PARAFORMER_LFR_M), 6)
    scale = np.round(np.tile(inv_std, PARAFORMER_LFR_M), 6)
    return shift, scale


def paraformer_am_mvn_text() -> str:
    """am.mvn in the Kaldi nnet text layout of the released file."""
    shift, scale = paraformer_cmvn()
    n = PARAFORMER_FEAT_DIM

    def vector(v: np.ndarray) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{x:.6f}" for x in v) + " ]"

    lines = [
        "<Nnet>",
        f"<Splice> {n} {n}",
        "[ 0 ]",
        f"<AddShift> {n} {n}",
        vector(shift),
        f"<Rescale> {n} {n}",
        vector(scale),
        "</Nnet>",
    ]
    return "\n".join(lines) + "\n"


def save_paraformer_state_dict(path: Path, weights: dict[str, np.ndarray]) -> None:
    """model.pt: a plain torch state dict, as the released files hold (torch.save of a dict in
    state-dict order). The bytes depend on the file name (torch names the archive after it)."""
    import torch  # torch writes the checkpoint format; both environments have it

    torch.save({name: torch.from_numpy(w) for name, w in weights.items()}, str(path))


def build_paraformer(path: Path, *, seed: int = 0, streaming: bool = False) -> Path:
    """Writes a complete tiny FunASR Paraformer (or ParaformerStreaming) folder at `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = paraformer_config(streaming=streaming)
    (path / "config.yaml").write_text(paraformer_config_yaml(config), encoding="utf-8")
    _write_json(path / "configuration.json", paraformer_configuration_json(streaming=streaming))
    (path / "tokens.json").write_text(json.dumps(PARAFORMER_TOKENS) + "\n", encoding="utf-8")
    seg = "".join(f"{word} {pieces}\n" for word, pieces in PARAFORMER_SEG_DICT.items())
    (path / "seg_dict").write_text(seg, encoding="utf-8")
    (path / "am.mvn").write_text(paraformer_am_mvn_text(), encoding="utf-8")
    shapes = paraformer_weight_shapes(len(PARAFORMER_TOKENS))
    save_paraformer_state_dict(path / "model.pt", paraformer_random_weights(shapes, seed))
    return path


def load_paraformer_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The tensors of a folder's model.pt, as numpy arrays, in file order."""
    import torch

    state = torch.load(str(Path(folder) / "model.pt"), map_location="cpu", weights_only=True)
    return {name: t.numpy() for name, t in state.items()}


def paraformer_tensors_sha256(folder: Path) -> str:
    """tensors_sha256 of a Paraformer folder's model.pt (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(load_paraformer_tensors(folder).items()):
        h.update(f"{name}|{t.dtype.str}|{list(t.shape)}\n".encode())
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()


def paraformer_audio(name: str) -> np.ndarray:
    """The named test signal (16 kHz mono float32) of the Paraformer fixtures:
    `hello`, `weather`: the committed clips (36877 and 36196 samples: 228 and 224 fbank frames);
    `tone_short`: 0.3 s of tones and seeded noise (28 frames); `tiny`: 300 samples of noise
    (under one 400-sample window); `silence_1s`: zeros; `speech_4s`: 4.0 s of quiet seeded noise
    with hello.ogg at 0.25 s and weather.ogg at 2.6 s (cut at 4 s)."""
    if name in ("hello", "weather"):
        return _speech(name)
    if name == "tone_short":
        noise = 0.01 * np.random.RandomState(3).standard_normal(4800)
        return (_tone(0.3, [300.0, 1200.0, 3100.0], 0.3) + noise).astype(np.float32)
    if name == "tiny":
        return (0.05 * np.random.RandomState(5).standard_normal(300)).astype(np.float32)
    if name == "silence_1s":
        return np.zeros(SAMPLE_RATE, dtype=np.float32)
    if name == "speech_4s":
        noise = (0.003 * np.random.RandomState(4).standard_normal(4 * SAMPLE_RATE)).astype(
            np.float32
        )
        return _place(4.0, [(0.0, noise), (0.25, _speech("hello")), (2.6, _speech("weather"))])
    raise KeyError(name)


# ------------------------------------------------------------------------------------------------
# SenseVoiceSmall (FunASR)
#
# `build_sensevoice` writes a tiny model folder in the layout of the released FunAudioLLM/
# SenseVoiceSmall: config.yaml (model SenseVoiceSmall, encoder SenseVoiceEncoderSmall, tokenizer
# SentencepiecesTokenizer with `bpemodel: null`, frontend WavFrontend with `cmvn_file: null`),
# configuration.json (whose file_path_metas name the model, the config, the `.bpe.model` and
# am.mvn), model.pt (FunASR's key names: `encoder.*`, `ctc.ctc_lo.*`, `embed.weight`), am.mvn
# (the Paraformer builder's) and `chn_jpn_yue_eng_ko_spectok.bpe.model`: a copy of the committed
# tests/fixtures/sensevoice/tiny.bpe.model, a SentencePiece BPE model of 120 pieces that
# `sensevoice_bpe_model` trains on SENSEVOICE_CORPUS (deterministic: one thread, no sampling;
# identity normalisation keeps it at 2 KB), with the rich tags as user-defined pieces, as the
# released model has them. The file is committed so that every environment (whatever its
# sentencepiece version) builds the same vocabulary; tests/test_tiny_models.py checks that the
# trainer still makes it. tests/fixtures/make_sensevoice_golden.py checks the folder against
# funasr's classes and records its outputs on `paraformer_audio` clips.
#
# Random weights, with the query path planted: a trained SenseVoice answers its four query frames
# with tags (`<|zh|><|NEUTRAL|><|Speech|><|woitn|>`) and then transcribes. Random weights alone
# would decode the query frames to arbitrary pieces, so ten model channels (the last ten of d)
# are set aside to carry the queries to the CTC head, and nothing else writes them:
# - each query embedding row has a large marker in its own input channel (SENSEVOICE_MARKER);
#   after `encoders0.norm1` that channel is about 20 on the query frame and O(1) on speech;
# - in `encoders0`, the value rows of the reserved channels read only the markers of their
#   queries (SENSEVOICE_MARKS), and the FSMN taps, attention output and FFN output of those
#   channels are zero, so each reserved channel leaves `encoders0` as its queries' markers;
# - every later layer (`encoders`, `tp_encoders`) has zero value, attention-output and FFN-output
#   rows for them, so the residual stream carries them unchanged to `tp_norm`;
# - the CTC rows of the tags read their channel with gain SENSEVOICE_TAG_GAIN (and their random
#   row, so that NEUTRAL vs HAPPY and Speech vs BGM, which share a channel, depend on the audio);
#   no other row reads a reserved channel; tags get bias SENSEVOICE_TAG_BIAS (the rest of the
#   tags, never planted, a bias that keeps them silent), and blank SENSEVOICE_BLANK_BIAS, so that
#   about half the speech frames are blank.
# So the query frames decode to a language tag that follows the language query (auto leans to
# zh), an emotion, an event and the itn tag that follows use_itn; the queries' keys and values
# differ, so the transcript changes a little with them too, as in the trained model.
# ------------------------------------------------------------------------------------------------

SENSEVOICE_ENCODER_DIMS = {
    "output_size": 32,
    "attention_heads": 2,
    "linear_units": 64,
    "num_blocks": 3,
    "tp_blocks": 2,
    "kernel_size": 11,
}
SENSEVOICE_BPE_FILE = "chn_jpn_yue_eng_ko_spectok.bpe.model"
SENSEVOICE_BPE_FIXTURE = FIXTURES / "sensevoice" / "tiny.bpe.model"
SENSEVOICE_VOCAB_SIZE = 120
SENSEVOICE_EMBED_ROWS = 16  # 7 + len(lid_dict) + len(textnorm_dict), as SenseVoiceSmall has
# The rich tags (user-defined pieces), in the order of funasr's postprocess_utils tables.
SENSEVOICE_TAGS = [
    "<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>",
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|FEARFUL|>", "<|DISGUSTED|>",
    "<|SURPRISED|>", "<|EMO_UNKNOWN|>",
    "<|Speech|>", "<|BGM|>", "<|Applause|>", "<|Laughter|>", "<|Cry|>", "<|Sneeze|>",
    "<|Breath|>", "<|Cough|>", "<|Event_UNK|>",
    "<|withitn|>", "<|woitn|>",
]  # fmt: skip
SENSEVOICE_CORPUS = [
    "hello world", "the weather is good today", "it's a good day",
    "what is the weather like today", "we talk about the weather every day",
    "hello there, how are you?", "good morning world", "one two three four",
    "i think it's going to rain", "is it good? yes, it is good.", "call me at 10:30 on the 2nd",
    "it is 2024 now", "今天天气很不错", "你好", "我们说话", "你好，今天天气很好。", "是的",
    "一二三四", "我们的天气很好", "不错不错", "hello 你好 world", "the 3 of us talk",
    "四个人说话", "ok, 好的!",
]  # fmt: skip
# Query embedding rows (SenseVoiceSmall.lid_dict / textnorm_dict; 1 and 2: the fixed queries).
SENSEVOICE_QUERIES = {
    "auto": 0, "event": 1, "emotion": 2, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12,
    "nospeech": 13, "withitn": 14, "woitn": 15,
}  # fmt: skip
# The reserved channels, one per entry (channel d - 10 + i): the tags whose CTC rows read it and
# the markers it is made of ({query row: weight}). Output frame 1 is the emotion, frame 2 the
# event (the trained model's order).
SENSEVOICE_MARKS: list[tuple[list[str], dict[int, float]]] = [
    (["<|zh|>"], {0: 1.0, 3: 1.0}),  # auto leans to zh
    (["<|en|>"], {0: 0.6, 4: 1.0}),
    (["<|yue|>"], {7: 1.0}),
    (["<|ja|>"], {11: 1.0}),
    (["<|ko|>"], {12: 1.0}),
    (["<|nospeech|>"], {13: 1.0}),
    (["<|NEUTRAL|>", "<|HAPPY|>"], {1: 1.0}),
    (["<|Speech|>", "<|BGM|>"], {2: 1.0}),
    (["<|withitn|>"], {14: 1.0}),
    (["<|woitn|>"], {15: 1.0}),
]
SENSEVOICE_MARKER = 40.0  # added to a query row's marker channel (before the sqrt(d) scale)
SENSEVOICE_MARK_WEIGHT = 0.25  # value-row weight of a marker (times SENSEVOICE_MARKS' weight)
SENSEVOICE_NORM_GAIN = 4.0  # after_norm / tp_norm weight of the reserved channels
SENSEVOICE_TAG_GAIN = 3.0
SENSEVOICE_TAG_BIAS = -8.0
SENSEVOICE_SILENT_TAG_BIAS = -10.0
SENSEVOICE_BLANK_BIAS = 7.0
SENSEVOICE_GAIN = 1.0  # matrices: gain / sqrt(fan_in)
SENSEVOICE_OUTPUT_GAIN = 3.0  # ctc_lo


def sensevoice_marker_channel(query: int) -> int:
    """The input channel (of 560) of a query row's marker."""
    return 11 + 34 * query


def sensevoice_bpe_model() -> bytes:
    """Trains the tiny SentencePiece BPE model on SENSEVOICE_CORPUS -> its serialized bytes
    (what SENSEVOICE_BPE_FIXTURE holds; make_sensevoice_golden.py writes it)."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENSEVOICE_CORPUS),
        model_writer=out,
        model_type="bpe",
        vocab_size=SENSEVOICE_VOCAB_SIZE,
        character_coverage=1.0,
        user_defined_symbols=SENSEVOICE_TAGS,
        split_digits=True,
        normalization_rule_name="identity",
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return out.getvalue()


def sensevoice_pieces(model: bytes | None = None) -> list[str]:
    """The pieces of the tiny BPE model, by id (0 <unk> = the CTC blank, 1 <s>, 2 </s>)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model or SENSEVOICE_BPE_FIXTURE.read_bytes())
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def sensevoice_config() -> dict[str, object]:
    """config.yaml of the tiny model, in the released file's layout (dimensions shrunk)."""
    enc = SENSEVOICE_ENCODER_DIMS
    return {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": {
            **enc,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": PARAFORMER_N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": PARAFORMER_LFR_M,
            "lfr_n": PARAFORMER_LFR_N,
            "cmvn_file": None,
            "dither": 0.0,  # not in the released file (funasr's default is 1.0): parity needs 0
        },
        "dataset": "SenseVoiceCTCDataset",
        "dataset_conf": {
            "index_ds": "IndexDSJsonl",
            "batch_sampler": "EspnetStyleBatchSampler",
            "batch_type": "token",
            "batch_size": 14000,
            "sos": "${model_conf.sos}",
            "eos": "${model_conf.eos}",
        },
    }


def sensevoice_configuration_json() -> dict[str, object]:
    """configuration.json as FunAudioLLM/SenseVoiceSmall ships it (its file_path_metas)."""
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "", "hf": ""},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"bpemodel": SENSEVOICE_BPE_FILE},
            "frontend_conf": {"cmvn_file": "am.mvn"},
        },
    }


def sensevoice_weight_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """FunASR's key names and shapes, in its state-dict order (the draw order): the encoder
    (encoders0, encoders, tp_encoders, after_norm, tp_norm), ctc.ctc_lo, embed."""
    enc = SENSEVOICE_ENCODER_DIMS
    d, k, ffn = enc["output_size"], enc["kernel_size"], enc["linear_units"]
    shapes = _sanm_encoder_layer_shapes("encoder.encoders0.0.", PARAFORMER_FEAT_DIM, d, ffn, k)
    for i in range(enc["num_blocks"] - 1):
        shapes |= _sanm_encoder_layer_shapes(f"encoder.encoders.{i}.", d, d, ffn, k)
    for i in range(enc["tp_blocks"]):
        shapes |= _sanm_encoder_layer_shapes(f"encoder.tp_encoders.{i}.", d, d, ffn, k)
    for norm in ("after_norm", "tp_norm"):
        shapes |= {f"encoder.{norm}.weight": (d,), f"encoder.{norm}.bias": (d,)}
    return shapes | {
        "ctc.ctc_lo.weight": (vocab_size, d),
        "ctc.ctc_lo.bias": (vocab_size,),
        "embed.weight": (SENSEVOICE_EMBED_ROWS, PARAFORMER_FEAT_DIM),
    }


def _sensevoice_value(name: str, shape: tuple[int, ...], noise: np.ndarray) -> np.ndarray:
    fan_in = float(np.prod(shape[1:])) if len(shape) > 1 else 1.0
    if name == "embed.weight":  # query rows: of the size of CMVN'd features
        return noise
    if name.endswith(".bias"):
        return BIAS_STD * noise
    if len(shape) == 1:  # LayerNorm weights
        return 1.0 + NORM_NOISE_STD * noise
    gain = SENSEVOICE_OUTPUT_GAIN if name == "ctc.ctc_lo.weight" else SENSEVOICE_GAIN
    return gain / np.sqrt(fan_in) * noise


def _plant_sensevoice_queries(w: dict[str, np.ndarray], pieces: list[str]) -> None:
    """The query path (see the section's comment), in place."""
    enc = SENSEVOICE_ENCODER_DIMS
    d = enc["output_size"]
    first = d - len(SENSEVOICE_MARKS)
    reserved = np.arange(first, d)
    for query in set(SENSEVOICE_QUERIES.values()):
        w["embed.weight"][query, sensevoice_marker_channel(query)] += SENSEVOICE_MARKER
    layers = ["encoder.encoders0.0."]
    layers += [f"encoder.encoders.{i}." for i in range(enc["num_blocks"] - 1)]
    layers += [f"encoder.tp_encoders.{i}." for i in range(enc["tp_blocks"])]
    for p in layers:
        w[p + "self_attn.linear_q_k_v.weight"][2 * d + reserved] = 0.0  # value rows
        w[p + "self_attn.linear_q_k_v.bias"][2 * d + reserved] = 0.0
        w[p + "self_attn.fsmn_block.weight"][reserved] = 0.0
        for out in ("self_attn.linear_out", "feed_forward.w_2"):
            w[p + out + ".weight"][reserved] = 0.0
            w[p + out + ".bias"][reserved] = 0.0
    qkv = w["encoder.encoders0.0.self_attn.linear_q_k_v.weight"]
    for norm in ("after_norm", "tp_norm"):
        w[f"encoder.{norm}.weight"][reserved] = SENSEVOICE_NORM_GAIN
    head, bias = w["ctc.ctc_lo.weight"], w["ctc.ctc_lo.bias"]
    head[:, reserved] = 0.0
    for tag in SENSEVOICE_TAGS:
        bias[pieces.index(tag)] = SENSEVOICE_SILENT_TAG_BIAS
    for channel, (tags, markers) in enumerate(SENSEVOICE_MARKS, start=first):
        for query, weight in markers.items():
            qkv[2 * d + channel, sensevoice_marker_channel(query)] = SENSEVOICE_MARK_WEIGHT * weight
        for tag in tags:
            head[pieces.index(tag), channel] = SENSEVOICE_TAG_GAIN
            bias[pieces.index(tag)] = SENSEVOICE_TAG_BIAS
    bias[0] = SENSEVOICE_BLANK_BIAS


def sensevoice_random_weights(
    shapes: dict[str, tuple[int, ...]], seed: int, pieces: list[str]
) -> dict[str, np.ndarray]:
    """Float32 weights from RandomState(seed), drawn in the order of `shapes`, then the query
    path planted."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in shapes.items():
        out[name] = _sensevoice_value(name, shape, rng.standard_normal(shape)).astype(np.float64)
    _plant_sensevoice_queries(out, pieces)
    return {name: w.astype(np.float32) for name, w in out.items()}


def build_sensevoice(path: Path, *, seed: int = 0) -> Path:
    """Writes a complete tiny FunASR SenseVoiceSmall folder at `path` and returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = SENSEVOICE_BPE_FIXTURE.read_bytes()
    (path / SENSEVOICE_BPE_FILE).write_bytes(bpe)
    pieces = sensevoice_pieces(bpe)
    config = sensevoice_config()
    (path / "config.yaml").write_text(paraformer_config_yaml(config), encoding="utf-8")
    _write_json(path / "configuration.json", sensevoice_configuration_json())
    (path / "am.mvn").write_text(paraformer_am_mvn_text(), encoding="utf-8")
    shapes = sensevoice_weight_shapes(len(pieces))
    weights = sensevoice_random_weights(shapes, seed, pieces)
    save_paraformer_state_dict(path / "model.pt", weights)
    return path


# ------------------------------------------------------------------------------------------------
# FireRedASR2 (AED and LLM)
#
# `build_fireredasr2` writes a tiny model folder in the layout of the released
# FireRedTeam/FireRedASR2-AED and FireRedASR2-LLM folders, as fasr-asr-firered's bundled
# `fireredasr2` package (FireRedAsr2.from_pretrained) reads them, without that package:
# - both: `cmvn.ark` (Kaldi global CMVN stats, a binary double matrix 2 x 81: sums and sums of
#   squares of 80 log-mel dims, the frame count in [0, 80]; written here in Kaldi's binary
#   format), `dict.txt` (`token id` per line: <blank> <unk> <pad> <sos> <eos>, then Chinese
#   characters, then the English SentencePiece pieces, upper case, as the tokenizer upper-cases
#   English before SentencePiece), `train_bpe1000.model` (a copy of the committed
#   tests/fixtures/fireredasr2/train_bpe1000.model, trained by `fireredasr2_bpe_model`) and an
#   empty `config.yaml` (0 bytes, as released);
# - AED: `model.pth.tar`, a torch.save of {"args": argparse.Namespace, "model_state_dict": ...}
#   with FireRedAsrAed's state-dict keys in its order, the positional-encoding buffers and the
#   tied `decoder.tgt_word_prj.weight` (the same tensor as `decoder.tgt_word_emb.weight`)
#   included, as `model.state_dict()` has them;
# - LLM: `asr_encoder.pth.tar` ({"args": the AED Namespace} only, as the released 1.47 kB file),
#   `model.pth.tar` ({"args": the LLM training Namespace, "model_state_dict": the encoder
#   (`encoder.*`, AED key names), the LoRA pairs of the LLM (`llm.base_model.model.model.layers.
#   N.{self_attn.{q,k,v,o}_proj,mlp.{gate,up,down}_proj}.lora_{A,B}.default.weight`, which the
#   package merges into the base weights with the fixed scale 16 / 64) and the adapter
#   (`encoder_projector.linear{1,2}`)}), and `Qwen2-7B-Instruct/`: a tiny Qwen2 (config.json,
#   generation_config.json and tokenizer_config.json in the layout of Qwen/Qwen2-7B-Instruct's,
#   two safetensors shards with an index, and the byte-level BPE of tests/fixtures/qwen3 with
#   Qwen2's three special tokens; `<speech>` is not in it: the package adds it when it loads the
#   tokenizer, as the next id).
# tests/fixtures/make_fireredasr2_golden.py checks both against the package's classes and records
# its outputs on `fireredasr2_audio` clips.
#
# Random weights: matrices and convolutions FIRERED_GAIN / sqrt(fan_in), biases BIAS_STD,
# LayerNorm weights 1 +- NORM_NOISE_STD. Two things are planted so that decoding looks like
# decoding: the CTC blank gets a bias (FIRERED_BLANK_BIAS), so that some frames are blank and
# some are not, and the attention decoder can end its hypotheses: one model channel
# (FIRERED_EOS_CHANNEL, a sinusoid of the decoder's positional encoding that rises over the first
# ~50 positions) is written by nothing but that encoding (its column of the embedding and its
# rows of every layer's output projections are zero), and only the <eos> row of the tied
# embedding reads it (FIRERED_EOS_GAIN), so <eos> becomes likely after a dozen or two tokens.
# ------------------------------------------------------------------------------------------------

FIREREDASR2_DIR = FIXTURES / "fireredasr2"
FIREREDASR2_BPE_FILE = "train_bpe1000.model"
FIREREDASR2_BPE_FIXTURE = FIREREDASR2_DIR / FIREREDASR2_BPE_FILE
FIREREDASR2_LLM_DIR = "Qwen2-7B-Instruct"
FIREREDASR2_SPECIALS = ["<blank>", "<unk>", "<pad>", "<sos>", "<eos>"]  # ids 0..4
FIREREDASR2_CHARS = "你好今天气很不错我们说话的是一二三四请转写音频为文字"
FIREREDASR2_BPE_VOCAB_SIZE = 64
FIREREDASR2_BPE_CORPUS = [
    "HELLO WORLD", "THE WEATHER IS GOOD TODAY", "IT'S A GOOD DAY", "HELLO THERE HOW ARE YOU",
    "WHAT IS THE WEATHER LIKE TODAY", "WE TALK ABOUT THE WEATHER EVERY DAY",
    "GOOD MORNING WORLD", "I THINK IT IS GOING TO RAIN", "IS IT GOOD YES IT IS GOOD",
    "HELLO AGAIN WORLD", "THE DOG AND THE CAT", "OK THANK YOU",
]  # fmt: skip
FIREREDASR2_AED_DIMS = {
    "idim": 80,
    "d_model": 32,
    "n_head": 4,
    "n_layers_enc": 2,
    "n_layers_dec": 2,
    "kernel_size": 33,
    "pe_maxlen": 5000,
}
FIREREDASR2_ENCODER_PE_LEN = 5000  # RelPositionalEncoding's max_len (not pe_maxlen): 2 * 5000 - 1
FIREREDASR2_SUBSAMPLE_CHANNELS = 32  # Conv2dSubsampling's out_channels
FIREREDASR2_LLM_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
FIREREDASR2_LORA_RANK = 8  # the released LoRA has r 64; the package's merge scale is 16/64 anyway
FIREREDASR2_LORA_MODULES = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]  # fmt: skip
FIREREDASR2_LLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's vocabulary has "assistant" as one token, which the package looks up when it builds a
# prompt; the tiny BPE has no such merge, so it is an added (non-special) token here.
FIREREDASR2_LLM_WORDS = ["assistant"]
FIREREDASR2_SPEECH_TOKEN = "<speech>"
FIREREDASR2_CMVN_FRAMES = 1_234_567.0

FIRERED_GAIN = 1.0
FIRERED_DECODER_OUT_GAIN = 1.0  # decoder attention / MLP output projections
FIRERED_CROSS_QK_GAIN = 3.0  # decoder cross-attention queries and keys (sharper attention)
FIRERED_READ_CHANNELS = 14  # decoder channels 0..13 are read by the output projection
FIRERED_READ_NORM = 0.3  # norm of each embedding row's read part (the rest: input only)
FIRERED_OUT_NORM_GAIN = 15.0  # decoder.layer_norm_out.weight of the read channels (+-)
FIRERED_CTC_GAIN = 3.0
FIRERED_BLANK_BIAS = 8.5
FIRERED_EMBED_STD = 0.5
FIRERED_POS_BIAS_STD = 0.3
FIRERED_EOS_CHANNELS = (12, 13)  # sin and cos(t * 10000^(-12/32)) of the decoder PE
FIRERED_EOS_GAIN = 3.0
FIRERED_LORA_STD = 0.4
FIRERED_TIED = ("decoder.tgt_word_emb.weight", "decoder.tgt_word_prj.weight")


def fireredasr2_bpe_model() -> bytes:
    """Trains the tiny SentencePiece BPE model on FIREREDASR2_BPE_CORPUS -> its serialized bytes
    (what FIREREDASR2_BPE_FIXTURE holds; make_fireredasr2_golden.py writes it)."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(FIREREDASR2_BPE_CORPUS),
        model_writer=out,
        model_type="bpe",
        vocab_size=FIREREDASR2_BPE_VOCAB_SIZE,
        character_coverage=1.0,
        normalization_rule_name="identity",
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return out.getvalue()


def fireredasr2_tokens(model: bytes | None = None) -> list[str]:
    """dict.txt's tokens by id: the five specials, the Chinese characters, then every
    SentencePiece piece but <unk>, <s> and </s>."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model or FIREREDASR2_BPE_FIXTURE.read_bytes())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    pieces = [p for i, p in enumerate(pieces) if not (sp.is_unknown(i) or sp.is_control(i))]
    return FIREREDASR2_SPECIALS + list(FIREREDASR2_CHARS) + pieces


def fireredasr2_dict_text(tokens: list[str]) -> str:
    return "".join(f"{token} {i}\n" for i, token in enumerate(tokens))


def fireredasr2_aed_args(vocab_size: int) -> argparse.Namespace:
    """The AED `args` Namespace (model.pth.tar, asr_encoder.pth.tar): the fields
    FireRedAsrAed.from_args reads, plus blank_id, with the released ids."""
    d = FIREREDASR2_AED_DIMS
    return argparse.Namespace(
        idim=d["idim"],
        odim=vocab_size,
        d_model=d["d_model"],
        n_head=d["n_head"],
        n_layers_enc=d["n_layers_enc"],
        n_layers_dec=d["n_layers_dec"],
        kernel_size=d["kernel_size"],
        pe_maxlen=d["pe_maxlen"],
        residual_dropout=0.1,
        dropout_rate=0.1,
        sos_id=3,
        eos_id=4,
        pad_id=2,
        blank_id=0,
    )


def fireredasr2_llm_args() -> argparse.Namespace:
    """The LLM model.pth.tar `args`: what FireRedAsrLlm.from_args reads. The loader overwrites
    encoder_path, llm_dir and use_fp16 (True: the LLM runs in bfloat16) and from_args sets
    freeze_llm; use_flash_attn False selects eager attention."""
    return argparse.Namespace(
        encoder_path="asr_encoder.pth.tar",
        llm_dir=FIREREDASR2_LLM_DIR,
        freeze_encoder=False,
        freeze_llm=False,
        use_lora=True,
        use_flash_attn=False,
        use_fp16=False,
        encoder_downsample_rate=2,
    )


def _conformer_block_shapes(p: str, d: int, heads: int, k: int) -> dict[str, tuple[int, ...]]:
    ffn = {".net.0.weight": (d,), ".net.0.bias": (d,), ".net.1.weight": (4 * d, d),
           ".net.1.bias": (4 * d,), ".net.4.weight": (d, 4 * d), ".net.4.bias": (d,)}  # fmt: skip
    shapes = {p + "ffn1" + s: v for s, v in ffn.items()}
    for bias in ("pos_bias_u", "pos_bias_v"):
        shapes[p + f"mhsa.{bias}"] = (heads, d // heads)
    for w in ("w_qs", "w_ks", "w_vs"):
        shapes[p + f"mhsa.{w}.weight"] = (d, d)
    for norm in ("layer_norm_q", "layer_norm_k", "layer_norm_v"):
        shapes |= {p + f"mhsa.{norm}.weight": (d,), p + f"mhsa.{norm}.bias": (d,)}
    shapes |= {p + "mhsa.fc.weight": (d, d), p + "mhsa.linear_pos.weight": (d, d)}
    shapes |= {
        p + "conv.pre_layer_norm.weight": (d,),
        p + "conv.pre_layer_norm.bias": (d,),
        p + "conv.pointwise_conv1.weight": (4 * d, d, 1),
        p + "conv.depthwise_conv.weight": (2 * d, 1, k),
        p + "conv.batch_norm.weight": (2 * d,),
        p + "conv.batch_norm.bias": (2 * d,),
        p + "conv.pointwise_conv2.weight": (d, 2 * d, 1),
    }
    shapes |= {p + "ffn2" + s: v for s, v in ffn.items()}
    return shapes | {p + "layer_norm.weight": (d,), p + "layer_norm.bias": (d,)}


def fireredasr2_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """ConformerEncoder's state-dict keys (under `encoder.`) and shapes, in its order."""
    dims = FIREREDASR2_AED_DIMS
    d, c = dims["d_model"], FIREREDASR2_SUBSAMPLE_CHANNELS
    freq = ((dims["idim"] - 1) // 2 - 1) // 2  # 80 mels -> 19 after the two stride-2 convs
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.input_preprocessor.conv.0.weight": (c, 1, 3, 3),
        "encoder.input_preprocessor.conv.0.bias": (c,),
        "encoder.input_preprocessor.conv.2.weight": (c, c, 3, 3),
        "encoder.input_preprocessor.conv.2.bias": (c,),
        "encoder.input_preprocessor.out.weight": (d, c * freq),
        "encoder.input_preprocessor.out.bias": (d,),
        "encoder.positional_encoding.pe": (1, 2 * FIREREDASR2_ENCODER_PE_LEN - 1, d),
    }
    for i in range(dims["n_layers_enc"]):
        p = f"encoder.layer_stack.{i}."
        shapes |= _conformer_block_shapes(p, d, dims["n_head"], dims["kernel_size"])
    return shapes


def _decoder_attention_shapes(p: str, d: int) -> dict[str, tuple[int, ...]]:
    return {
        p + "w_qs.weight": (d, d),
        p + "w_qs.bias": (d,),
        p + "w_ks.weight": (d, d),  # no bias
        p + "w_vs.weight": (d, d),
        p + "w_vs.bias": (d,),
        p + "fc.weight": (d, d),
        p + "fc.bias": (d,),
    }


def fireredasr2_aed_weight_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """FireRedAsrAed's state-dict keys and shapes, in its order (the draw order): the encoder,
    the decoder (its `pe` buffer, and `tgt_word_prj.weight`, tied to `tgt_word_emb.weight`,
    included), `ctc.ctc_lo`."""
    dims = FIREREDASR2_AED_DIMS
    d = dims["d_model"]
    shapes = fireredasr2_encoder_shapes()
    shapes |= {
        "decoder.tgt_word_emb.weight": (vocab_size, d),
        "decoder.positional_encoding.pe": (1, dims["pe_maxlen"], d),
    }
    for i in range(dims["n_layers_dec"]):
        p = f"decoder.layer_stack.{i}."
        for block in ("self_attn", "cross_attn"):
            shapes |= {p + f"{block}_norm.weight": (d,), p + f"{block}_norm.bias": (d,)}
            shapes |= _decoder_attention_shapes(p + f"{block}.", d)
        shapes |= {p + "mlp_norm.weight": (d,), p + "mlp_norm.bias": (d,)}
        shapes |= {
            p + "mlp.w_1.weight": (4 * d, d),
            p + "mlp.w_1.bias": (4 * d,),
            p + "mlp.w_2.weight": (d, 4 * d),
            p + "mlp.w_2.bias": (d,),
        }
    shapes |= {
        "decoder.tgt_word_prj.weight": (vocab_size, d),
        "decoder.layer_norm_out.weight": (d,),
        "decoder.layer_norm_out.bias": (d,),
    }
    return shapes | {"ctc.ctc_lo.weight": (vocab_size, d), "ctc.ctc_lo.bias": (vocab_size,)}


def fireredasr2_sinusoid_pe(length: int, d: int) -> np.ndarray:
    """(length, d) sin/cos table, computed with torch exactly as the package's
    PositionalEncoding and RelPositionalEncoding do (so the buffers are bit-identical)."""
    import torch

    position = torch.arange(0, length).unsqueeze(1).float()
    div_term = torch.exp(
        torch.arange(0, d, 2).float() * -(torch.log(torch.tensor(10000.0)).item() / d)
    )
    pe = torch.zeros(length, d)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.numpy()


def fireredasr2_rel_pe(d: int, max_len: int = FIREREDASR2_ENCODER_PE_LEN) -> np.ndarray:
    """RelPositionalEncoding's `pe` buffer, (1, 2 max_len - 1, d): positions max_len - 1 .. 0
    (flipped), then -1 .. -(max_len - 1)."""
    import torch

    position = torch.arange(0, max_len).unsqueeze(1).float()
    div_term = torch.exp(
        torch.arange(0, d, 2).float() * -(torch.log(torch.tensor(10000.0)).item() / d)
    )
    positive, negative = torch.zeros(max_len, d), torch.zeros(max_len, d)
    positive[:, 0::2] = torch.sin(position * div_term)
    positive[:, 1::2] = torch.cos(position * div_term)
    negative[:, 0::2] = torch.sin(-1 * position * div_term)
    negative[:, 1::2] = torch.cos(-1 * position * div_term)
    pe = torch.cat([torch.flip(positive, [0]), negative[1:]])
    return pe.unsqueeze(0).numpy()


def _firered_value(name: str, shape: tuple[int, ...], noise: np.ndarray) -> np.ndarray:
    """One random weight from its standard-normal draw (see the section's comment)."""
    fan_in = float(np.prod(shape[1:])) if len(shape) > 1 else 1.0
    if name.endswith(".bias"):
        return BIAS_STD * noise
    if len(shape) == 1:  # LayerNorm weights
        return 1.0 + NORM_NOISE_STD * noise
    if name.endswith(("pos_bias_u", "pos_bias_v")):
        return FIRERED_POS_BIAS_STD * noise
    if name == "decoder.tgt_word_emb.weight":
        return FIRERED_EMBED_STD * noise
    if ".lora_" in name:
        return FIRERED_LORA_STD * noise
    gain = FIRERED_CTC_GAIN if name == "ctc.ctc_lo.weight" else FIRERED_GAIN
    if name.startswith("decoder.layer_stack.") and name.endswith(("fc.weight", "w_2.weight")):
        gain = FIRERED_DECODER_OUT_GAIN
    if name.endswith(("cross_attn.w_qs.weight", "cross_attn.w_ks.weight")):
        gain = FIRERED_CROSS_QK_GAIN
    return gain / np.sqrt(fan_in) * noise


def _firered_buffer(name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The positional-encoding buffers (not random), or None for a weight."""
    if name == "encoder.positional_encoding.pe":
        return fireredasr2_rel_pe(shape[-1])
    if name == "decoder.positional_encoding.pe":
        return fireredasr2_sinusoid_pe(shape[1], shape[2])[None]
    return None


def _plant_fireredasr2_decoder(w: dict[str, np.ndarray], eos_id: int) -> None:
    """The blank bias, the read/write split of the tied embedding and the end-of-hypothesis
    channels (see the section's comment), in place."""
    w["ctc.ctc_lo.bias"][0] += FIRERED_BLANK_BIAS
    d = FIREREDASR2_AED_DIMS["d_model"]
    read, write = np.arange(FIRERED_READ_CHANNELS), np.arange(FIRERED_READ_CHANNELS, d)
    emb, norm = w["decoder.tgt_word_emb.weight"], w["decoder.layer_norm_out.weight"]
    rows = emb[:, read]  # every token's read part gets the same norm: none is favoured
    emb[:, read] = rows / np.linalg.norm(rows, axis=1, keepdims=True) * FIRERED_READ_NORM
    signs = np.where(read % 2 == 0, 1.0, -1.0)
    norm[read] *= FIRERED_OUT_NORM_GAIN * signs
    norm[write] = 0.0
    w["decoder.layer_norm_out.bias"][:] = 0.0
    eos = list(FIRERED_EOS_CHANNELS)
    norm[eos] = [FIRERED_OUT_NORM_GAIN, -FIRERED_OUT_NORM_GAIN]
    emb[:, eos] = 0.0
    emb[eos_id, eos] = FIRERED_EOS_GAIN
    outputs = ("attn.fc.weight", "attn.fc.bias", "mlp.w_2.weight", "mlp.w_2.bias")
    for name, value in w.items():
        if name.startswith("decoder.layer_stack.") and name.endswith(outputs):
            value[eos] = 0.0
            if name.endswith(".bias"):
                value[read] = 0.0


def fireredasr2_random_weights(
    shapes: dict[str, tuple[int, ...]], seed: int, eos_id: int | None = None
) -> dict[str, np.ndarray]:
    """Float32 weights from RandomState(seed), drawn in the order of `shapes` (the buffers are
    computed, and the tied `decoder.tgt_word_prj.weight` is the embedding's array), then the
    decoder plants when `eos_id` is given."""
    rng = np.random.RandomState(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        buffer = _firered_buffer(name, shape)
        if buffer is not None:
            out[name] = buffer
        elif name == FIRERED_TIED[1]:
            out[name] = out[FIRERED_TIED[0]]
        else:
            out[name] = _firered_value(name, shape, rng.standard_normal(shape))
    if eos_id is not None:
        _plant_fireredasr2_decoder(out, eos_id)
    out = {name: np.asarray(w, dtype=np.float32) for name, w in out.items()}
    if FIRERED_TIED[1] in out:
        out[FIRERED_TIED[1]] = out[FIRERED_TIED[0]]
    return out


def fireredasr2_cmvn_stats() -> np.ndarray:
    """cmvn.ark's (2, 81) float64 stats: per-dim means of 10.5 .. 16 and standard deviations of
    2.5 .. 4 (the size of the released model's), times FIREREDASR2_CMVN_FRAMES frames."""
    n_mels = FIREREDASR2_AED_DIMS["idim"]
    k = np.arange(n_mels) / (n_mels - 1)
    rng = np.random.RandomState(81)
    mean = 10.5 + 5.5 * np.sqrt(k) + 0.2 * rng.standard_normal(n_mels)
    std = 4.0 - 1.5 * k + 0.1 * rng.standard_normal(n_mels)
    n = FIREREDASR2_CMVN_FRAMES
    stats = np.zeros((2, n_mels + 1))
    stats[0, :n_mels], stats[0, n_mels] = mean * n, n
    stats[1, :n_mels] = (std**2 + mean**2) * n
    return stats


def kaldi_binary_matrix(m: np.ndarray) -> bytes:
    """A Kaldi binary double matrix ("\\0B", "DM ", int32 rows and cols, float64 data), as
    compute-cmvn-stats writes a global cmvn.ark (no archive key)."""
    import struct

    rows, cols = m.shape
    head = b"\0BDM " + struct.pack("<bi", 4, rows) + struct.pack("<bi", 4, cols)
    return head + np.ascontiguousarray(m, dtype="<f8").tobytes()


def _torch_save(path: Path, doc: dict[str, object]) -> None:
    import torch  # torch writes the checkpoint format; both environments have it

    torch.save(doc, str(path))


def _state_dict(weights: dict[str, np.ndarray]) -> dict[str, object]:
    """Torch tensors in order; names holding the same array share one tensor (the tied
    output projection), as `model.state_dict()` has them."""
    import torch

    tensors: dict[int, object] = {}
    return {name: tensors.setdefault(id(w), torch.from_numpy(w)) for name, w in weights.items()}


def _write_common_files(path: Path) -> list[str]:
    bpe = FIREREDASR2_BPE_FIXTURE.read_bytes()
    (path / FIREREDASR2_BPE_FILE).write_bytes(bpe)
    tokens = fireredasr2_tokens(bpe)
    (path / "dict.txt").write_text(fireredasr2_dict_text(tokens), encoding="utf-8")
    (path / "cmvn.ark").write_bytes(kaldi_binary_matrix(fireredasr2_cmvn_stats()))
    (path / "config.yaml").write_bytes(b"")
    return tokens


def build_fireredasr2(path: Path, *, seed: int = 0, variant: str = "aed") -> Path:
    """Writes a complete tiny FireRedASR2 folder ("aed" or "llm") at `path` and returns it."""
    if variant not in ("aed", "llm"):
        raise ValueError(f"variant must be 'aed' or 'llm', not {variant!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokens = _write_common_files(path)
    args = fireredasr2_aed_args(len(tokens))
    if variant == "aed":
        shapes = fireredasr2_aed_weight_shapes(len(tokens))
        weights = fireredasr2_random_weights(shapes, seed, eos_id=args.eos_id)
        doc = {"args": args, "model_state_dict": _state_dict(weights)}
        _torch_save(path / "model.pth.tar", doc)
        return path
    _torch_save(path / "asr_encoder.pth.tar", {"args": args})
    llm_dir = build_fireredasr2_qwen2(path / FIREREDASR2_LLM_DIR, seed=seed + 1)
    weights = fireredasr2_random_weights(fireredasr2_llm_weight_shapes(), seed)
    doc = {"args": fireredasr2_llm_args(), "model_state_dict": _state_dict(weights)}
    _torch_save(path / "model.pth.tar", doc)
    assert llm_dir.is_dir()
    return path


def fireredasr2_qwen2_weight_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Qwen2ForCausalLM's HF key names and shapes (q/k/v with biases, no q/k norms), in
    state-dict order."""
    dims = FIREREDASR2_LLM_DIMS
    h, inter = dims["hidden_size"], dims["intermediate_size"]
    head_dim = h // dims["num_attention_heads"]
    q, kv = h, dims["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, h)}
    for i in range(dims["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    return shapes | {"model.norm.weight": (h,), "lm_head.weight": (vocab_size, h)}


def fireredasr2_lora_shapes() -> dict[str, tuple[int, ...]]:
    """The LoRA pairs of the LLM in model.pth.tar (peft's key names under `llm.`): A is
    (r, in), B is (out, r), for each layer's q, k, v, o, gate, up and down projections."""
    base = fireredasr2_qwen2_weight_shapes(1)
    r = FIREREDASR2_LORA_RANK
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(FIREREDASR2_LLM_DIMS["num_hidden_layers"]):
        for module in FIREREDASR2_LORA_MODULES:
            out_dim, in_dim = base[f"model.layers.{i}.{module}.weight"]
            p = f"llm.base_model.model.model.layers.{i}.{module}."
            shapes |= {p + "lora_A.default.weight": (r, in_dim)}
            shapes |= {p + "lora_B.default.weight": (out_dim, r)}
    return shapes


def fireredasr2_llm_weight_shapes() -> dict[str, tuple[int, ...]]:
    """The LLM model.pth.tar's state dict, in FireRedAsrLlm's module order (encoder, llm,
    encoder_projector): the encoder with its `pe` buffer, the LoRA pairs, the adapter."""
    d, h = FIREREDASR2_AED_DIMS["d_model"], FIREREDASR2_LLM_DIMS["hidden_size"]
    ds = fireredasr2_llm_args().encoder_downsample_rate
    adapter = {
        "encoder_projector.linear1.weight": (h, d * ds),
        "encoder_projector.linear1.bias": (h,),
        "encoder_projector.linear2.weight": (h, h),
        "encoder_projector.linear2.bias": (h,),
    }
    return fireredasr2_encoder_shapes() | fireredasr2_lora_shapes() | adapter


def fireredasr2_qwen2_token_ids() -> dict[str, int]:
    """Ids of Qwen2's special tokens after the BPE vocabulary, and of `<speech>`, which the
    package adds when it loads the tokenizer (the next id)."""
    first = len(json.loads((QWEN3_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8")))
    names = [*FIREREDASR2_LLM_SPECIALS, *FIREREDASR2_LLM_WORDS, FIREREDASR2_SPEECH_TOKEN]
    return {name: first + i for i, name in enumerate(names)}


QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _qwen2_added_token(id_: int, content: str) -> dict[str, object]:
    return {"id": id_, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False,
            "special": content not in FIREREDASR2_LLM_WORDS}  # fmt: skip


def fireredasr2_qwen2_tokenizer_files() -> dict[str, str]:
    """Qwen2-7B-Instruct's tokenizer files for the tiny BPE: tokenizer.json (the qwen3
    fixture's, with Qwen2's three special tokens and "assistant"), vocab.json, merges.txt and
    tokenizer_config.json (Qwen2-7B-Instruct's fields and chat template)."""
    ids = fireredasr2_qwen2_token_ids()
    doc = json.loads((QWEN3_TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    added = [*FIREREDASR2_LLM_SPECIALS, *FIREREDASR2_LLM_WORDS]
    doc["added_tokens"] = [_qwen2_added_token(ids[t], t) for t in added]
    decoder = {str(ids[t]): {k: v for k, v in _qwen2_added_token(ids[t], t).items() if k != "id"}
               for t in added}  # fmt: skip
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }

    def dump(x: object) -> str:
        return json.dumps(x, ensure_ascii=False, indent=2) + "\n"

    return {
        "tokenizer.json": dump(doc),
        "tokenizer_config.json": dump(config),
        "vocab.json": (QWEN3_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"),
        "merges.txt": (QWEN3_TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8"),
    }


def fireredasr2_qwen2_config(vocab_size: int) -> dict[str, object]:
    """config.json in the layout of Qwen/Qwen2-7B-Instruct's (dimensions shrunk, float32)."""
    ids = fireredasr2_qwen2_token_ids()
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        **FIREREDASR2_LLM_DIMS,
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "model_type": "qwen2",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def fireredasr2_qwen2_generation_config() -> dict[str, object]:
    """generation_config.json as Qwen2-7B-Instruct ships it (sampling defaults included; the
    package's generate() call overrides do_sample, eos_token_id and repetition_penalty)."""
    ids = fireredasr2_qwen2_token_ids()
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.37.0",
    }


def fireredasr2_qwen2_random_weights(
    shapes: dict[str, tuple[int, ...]], seed: int
) -> dict[str, np.ndarray]:
    """Float32 weights from RandomState(seed) in the order of `shapes`, with the Qwen3 scales
    (EMBED_STD, MATRIX_STD, LM_HEAD_STD, NORM_NOISE_STD, BIAS_STD); lm_head rows of byte
    fragments are scaled by FRAGMENT_ROW_SCALE (mostly readable output)."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in shapes.items():
        noise = rng.standard_normal(shape)
        if name.endswith(".bias"):
            value = BIAS_STD * noise
        elif len(shape) == 1:
            value = 1.0 + NORM_NOISE_STD * noise
        elif name == "model.embed_tokens.weight":
            value = EMBED_STD * noise
        elif name == "lm_head.weight":
            value = LM_HEAD_STD * noise
        else:
            value = MATRIX_STD * noise
        out[name] = value.astype(np.float32)
    out["lm_head.weight"][qwen3_asr_fragment_ids(QWEN3_TOKENIZER_DIR)] *= np.float32(
        FRAGMENT_ROW_SCALE
    )
    return out


def build_fireredasr2_qwen2(path: Path, *, seed: int = 1) -> Path:
    """The tiny `Qwen2-7B-Instruct/` folder of the LLM variant (two shards and an index)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, text in fireredasr2_qwen2_tokenizer_files().items():
        (path / name).write_text(text, encoding="utf-8")
    vocab = len(fireredasr2_qwen2_token_ids())
    vocab += len(json.loads((QWEN3_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8")))
    _write_json(path / "config.json", fireredasr2_qwen2_config(vocab))
    _write_json(path / "generation_config.json", fireredasr2_qwen2_generation_config())
    weights = fireredasr2_qwen2_random_weights(fireredasr2_qwen2_weight_shapes(vocab), seed)
    save_safetensors(path, weights, shards=2)
    return path


def load_fireredasr2_checkpoint(path: Path) -> tuple[argparse.Namespace, dict[str, np.ndarray]]:
    """(args, state dict as numpy arrays) of a model.pth.tar / asr_encoder.pth.tar, read with
    torch.load(weights_only=True), argparse.Namespace allowed: no reference package needed."""
    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        doc = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {name: t.numpy() for name, t in doc.get("model_state_dict", {}).items()}
    return doc["args"], state


def fireredasr2_tensors_sha256(folder: Path) -> str:
    """A digest of a FireRedASR2 folder's checkpoints: each .pth.tar's args and tensors (names,
    dtypes, shapes, bytes), and, for the LLM variant, the Qwen2 folder's tensors."""
    h = hashlib.sha256()
    for file in sorted(Path(folder).glob("*.pth.tar")):
        args, state = load_fireredasr2_checkpoint(file)
        h.update(f"{file.name}|{sorted(vars(args).items())}\n".encode())
        for name, t in state.items():
            h.update(f"{name}|{t.dtype.str}|{list(t.shape)}\n".encode())
            h.update(np.ascontiguousarray(t).tobytes())
    llm = Path(folder) / FIREREDASR2_LLM_DIR
    if llm.is_dir():
        h.update(tensors_sha256(llm).encode())
    return h.hexdigest()


def fireredasr2_audio(name: str) -> np.ndarray:
    """The named test signal of the FireRedASR2 fixtures, as the package reads audio: 16 kHz
    int16 samples (kaldiio.load_mat of a PCM16 wav). `paraformer_audio`'s clips (`hello`,
    `weather`, `tone_short`, `tiny`, `silence_1s`, `speech_4s`) rounded to int16; the .ogg
    clips decode to exact int16 values, so x / 32768 gives back the float clip."""
    x = paraformer_audio(name).astype(np.float64) * 32768.0
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


# ------------------------------------------------------------------------------------------------
# Fun-ASR-Nano (FunASR)
#
# `build_fun_asr_nano` writes a tiny Fun-ASR-Nano folder in one of two layouts, holding the same
# weights:
# - "funasr": what FunAudioLLM/Fun-ASR-Nano-2512 ships for funasr's FunASRNano: config.yaml
#   (model FunASRNano, audio_encoder SenseVoiceEncoderSmall, audio_adaptor Transformer with
#   `use_low_frame_rate: true`, llm Qwen3-0.6b with `init_param_path: Qwen3-0.6B`, frontend
#   WavFrontend without CMVN, tokenizer HuggingfaceTokenizer), configuration.json (its
#   file_path_metas point funasr at model.pt, config.yaml and the Qwen3-0.6B/ folder), model.pt
#   (funasr's key names: `audio_encoder.*`, `llm.model.*`, `llm.lm_head.weight` (tied, stored as
#   funasr's state dict stores it), `audio_adaptor.*`) and Qwen3-0.6B/ (config.json,
#   generation_config.json and the tokenizer files: the tiny Qwen3 tokenizer of
#   tests/fixtures/qwen3 plus Qwen3's `<|object_ref_start|>`, the -hf audio placeholder);
# - "hf": what transformers 5.x's native `FunAsrNanoForConditionalGeneration.save_pretrained`
#   writes (the "-hf" checkpoints): a config.json with audio_config / adaptor_config /
#   text_config, model.safetensors (`model.audio_tower.layers.N.*` with the fused q/k/v split,
#   `model.multi_modal_projector.*`, `model.language_model.*`; lm_head tied, not stored),
#   generation_config.json and the processor files of tests/fixtures/fun_asr_nano/hf/ (made by
#   make_fun_asr_nano_golden_hf... see tests/fixtures/make_fun_asr_nano_golden.py).
# tests/fixtures/make_fun_asr_nano_golden.py checks the funasr layout against funasr's classes
# and records its outputs on `qwen3_asr_audio` clips.
# ------------------------------------------------------------------------------------------------

FUN_ASR_NANO_DIR = FIXTURES / "fun_asr_nano"
FUN_ASR_NANO_HF_DIR = FUN_ASR_NANO_DIR / "hf"
FUN_ASR_NANO_LLM_DIR = "Qwen3-0.6B"  # the LLM folder inside the model folder
FUN_ASR_NANO_AUDIO_TOKEN = "<|object_ref_start|>"  # Qwen3's id 151646; the -hf audio placeholder
FUN_ASR_NANO_HF_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
)
FUN_ASR_NANO_ENCODER_DIMS = {  # SenseVoiceEncoderSmall, shrunk (the release: 512, 4, 2048, 50, 20)
    "output_size": 32,
    "attention_heads": 2,
    "linear_units": 64,
    "num_blocks": 3,
    "tp_blocks": 2,
    "kernel_size": 11,
}
FUN_ASR_NANO_ADAPTOR_CONF = {  # the release: ffn_dim 2048, llm_dim 1024, encoder_dim 512
    "downsample_rate": 1,
    "use_low_frame_rate": True,
    "ffn_dim": 64,
    "llm_dim": QWEN3_DIMS["hidden_size"],
    "encoder_dim": FUN_ASR_NANO_ENCODER_DIMS["output_size"],
    "n_layer": 2,
}
FUN_ASR_NANO_ADAPTOR_HEADS = 8  # funasr's Transformer adaptor default (attention_heads)
# Random weights: the encoder as SenseVoice's (SENSEVOICE_GAIN / sqrt(fan_in), BIAS_STD,
# LayerNorm weights 1 +- NORM_NOISE_STD), the adaptor's matrices with FUN_ASR_NANO_ADAPTOR_GAIN;
# the LLM as the tiny Qwen3's (tied), with the rows of byte fragments and control characters
# scaled down (as for Qwen3-ASR), so that greedy output is mostly readable text.
FUN_ASR_NANO_ADAPTOR_GAIN = 1.5
FUN_ASR_NANO_FRAGMENT_ROW_SCALE = 0.6


def fun_asr_nano_tokenizer_files(dest: Path) -> None:
    """The tokenizer files of the Qwen3-0.6B/ folder: tests/fixtures/qwen3's tiny tokenizer with
    `<|object_ref_start|>` added after its tokens (special, as in Qwen3)."""
    tok = json.loads((QWEN3_TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    new_id = max(t["id"] for t in tok["added_tokens"]) + 1
    entry = {
        "id": new_id,
        "content": FUN_ASR_NANO_AUDIO_TOKEN,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
    tok["added_tokens"].append(entry)
    (dest / "tokenizer.json").write_text(
        json.dumps(tok, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    config = json.loads((QWEN3_TOKENIZER_DIR / "tokenizer_config.json").read_text("utf-8"))
    config["added_tokens_decoder"][str(new_id)] = {
        k: v for k, v in entry.items() if k not in ("id",)
    }
    (dest / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(QWEN3_TOKENIZER_DIR / name, dest / name)


def fun_asr_nano_token_ids() -> dict[str, int]:
    """Ids of the added tokens of the Fun-ASR-Nano tokenizer (the tiny Qwen3's plus one)."""
    config = json.loads((QWEN3_TOKENIZER_DIR / "tokenizer_config.json").read_text("utf-8"))
    ids = {v["content"]: int(k) for k, v in config["added_tokens_decoder"].items()}
    return ids | {FUN_ASR_NANO_AUDIO_TOKEN: max(ids.values()) + 1}


def fun_asr_nano_vocab_size() -> int:
    return max(fun_asr_nano_token_ids().values()) + 1


def fun_asr_nano_config() -> dict[str, object]:
    """config.yaml of the tiny model, in the released file's layout (dimensions shrunk)."""
    enc = FUN_ASR_NANO_ENCODER_DIMS
    return {
        "model": "FunASRNano",
        "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": {
            **enc,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "freeze": True,
        },
        "llm": "Qwen3-0.6b",
        "llm_conf": {
            "hub": "hf",
            "freeze": True,
            "llm_dtype": "fp32",  # the release says bf16; parity runs in float32
            "init_param_path": FUN_ASR_NANO_LLM_DIR,
            "use_lora": False,
        },
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": FUN_ASR_NANO_ADAPTOR_CONF,
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": PARAFORMER_N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": PARAFORMER_LFR_M,
            "lfr_n": PARAFORMER_LFR_N,
            "cmvn_file": None,
            "dither": 0.0,  # funasr's default is 1.0 (random): parity needs 0
        },
        "tokenizer": "HuggingfaceTokenizer",
        "tokenizer_conf": {"init_param_path": FUN_ASR_NANO_LLM_DIR},
    }


def fun_asr_nano_configuration_json() -> dict[str, object]:
    """configuration.json: file_path_metas that resolve the model, the config and the LLM
    folder (funasr joins them to the model folder)."""
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "", "hf": ""},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"init_param_path": FUN_ASR_NANO_LLM_DIR},
            "llm_conf": {"init_param_path": FUN_ASR_NANO_LLM_DIR},
        },
    }


def _transformer_adaptor_shapes(p: str) -> dict[str, tuple[int, ...]]:
    """funasr's llm_asr Transformer adaptor: linear1, linear2, then EncoderLayers (8-head
    MultiHeadedAttention, FFN llm_dim -> llm_dim // 4 -> llm_dim)."""
    a = FUN_ASR_NANO_ADAPTOR_CONF
    e, f, d = a["encoder_dim"] * a["downsample_rate"], a["ffn_dim"], a["llm_dim"]
    shapes: dict[str, tuple[int, ...]] = {
        p + "linear1.weight": (f, e),
        p + "linear1.bias": (f,),
        p + "linear2.weight": (d, f),
        p + "linear2.bias": (d,),
    }
    for i in range(a["n_layer"]):
        b = f"{p}blocks.{i}."
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            shapes |= {b + f"self_attn.{proj}.weight": (d, d), b + f"self_attn.{proj}.bias": (d,)}
        shapes |= {
            b + "feed_forward.w_1.weight": (d // 4, d),
            b + "feed_forward.w_1.bias": (d // 4,),
            b + "feed_forward.w_2.weight": (d, d // 4),
            b + "feed_forward.w_2.bias": (d,),
            b + "norm1.weight": (d,),
            b + "norm1.bias": (d,),
            b + "norm2.weight": (d,),
            b + "norm2.bias": (d,),
        }
    return shapes


def fun_asr_nano_weight_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """funasr's key names and shapes, in FunASRNano's state-dict order: audio_encoder, llm
    (llm.lm_head.weight last: tied, the embedding's values), audio_adaptor."""
    enc = FUN_ASR_NANO_ENCODER_DIMS
    d, k, ffn = enc["output_size"], enc["kernel_size"], enc["linear_units"]
    p = "audio_encoder."
    shapes = _sanm_encoder_layer_shapes(p + "encoders0.0.", PARAFORMER_FEAT_DIM, d, ffn, k)
    for i in range(enc["num_blocks"] - 1):
        shapes |= _sanm_encoder_layer_shapes(f"{p}encoders.{i}.", d, d, ffn, k)
    for i in range(enc["tp_blocks"]):
        shapes |= _sanm_encoder_layer_shapes(f"{p}tp_encoders.{i}.", d, d, ffn, k)
    for norm in ("after_norm", "tp_norm"):
        shapes |= {f"{p}{norm}.weight": (d,), f"{p}{norm}.bias": (d,)}
    llm = qwen3_weight_shapes_for(QWEN3_DIMS, vocab_size, tie=False)
    shapes |= {"llm." + name: shape for name, shape in llm.items()}
    return shapes | _transformer_adaptor_shapes("audio_adaptor.")


def _fun_asr_nano_value(name: str, shape: tuple[int, ...], noise: np.ndarray) -> np.ndarray:
    if name.startswith("llm."):
        if len(shape) == 1:
            return 1.0 + NORM_NOISE_STD * noise
        return (EMBED_STD if name.endswith("embed_tokens.weight") else MATRIX_STD) * noise
    if name.endswith(".bias"):
        return BIAS_STD * noise
    if len(shape) == 1:  # LayerNorm weights
        return 1.0 + NORM_NOISE_STD * noise
    fan_in = float(np.prod(shape[1:]))
    gain = FUN_ASR_NANO_ADAPTOR_GAIN if name.startswith("audio_adaptor.") else SENSEVOICE_GAIN
    return gain / np.sqrt(fan_in) * noise


def fun_asr_nano_random_weights(seed: int) -> dict[str, np.ndarray]:
    """Float32 weights from RandomState(seed), drawn in state-dict order (the tied lm_head is
    not drawn: it is the embedding); fragment rows of the embedding scaled down."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in fun_asr_nano_weight_shapes(fun_asr_nano_vocab_size()).items():
        if name == "llm.lm_head.weight":
            out[name] = None  # filled below, keeping the state-dict order
            continue
        out[name] = _fun_asr_nano_value(name, shape, rng.standard_normal(shape)).astype(np.float32)
    embed = out["llm.model.embed_tokens.weight"]
    embed[qwen3_asr_fragment_ids(QWEN3_TOKENIZER_DIR)] *= np.float32(
        FUN_ASR_NANO_FRAGMENT_ROW_SCALE
    )
    out["llm.lm_head.weight"] = embed
    return out


def fun_asr_nano_llm_config(vocab_size: int, ids: dict[str, int]) -> dict[str, object]:
    """Qwen3-0.6B/config.json: the tiny Qwen3's, tied as Qwen3-0.6B is; EOS <|im_end|>."""
    return qwen3_config(vocab_size, ids["<|endoftext|>"], ids["<|im_end|>"], tie=True)


def save_fun_asr_nano_state_dict(path: Path, weights: dict[str, np.ndarray]) -> None:
    """model.pt as funasr saves a FunASRNano state dict: the tied lm_head shares the
    embedding's storage."""
    import torch

    state = {}
    for name, w in weights.items():
        if name == "llm.lm_head.weight":
            state[name] = state["llm.model.embed_tokens.weight"]
        else:
            state[name] = torch.from_numpy(w)
    torch.save(state, str(path))


# funasr key -> hf key, for the encoder: layer index i of `model.audio_tower.layers`
_FUN_ASR_NANO_HF_PARTS = (
    ("self_attn.linear_out.", "self_attn.o_proj."),
    ("self_attn.fsmn_block.", "self_attn.fsmn.conv."),
    ("feed_forward.w_1.", "mlp.fc1."),
    ("feed_forward.w_2.", "mlp.fc2."),
    ("self_attn.linear_q.", "self_attn.q_proj."),
    ("self_attn.linear_k.", "self_attn.k_proj."),
    ("self_attn.linear_v.", "self_attn.v_proj."),
    ("norm1.", "input_layernorm."),
    ("norm2.", "post_attention_layernorm."),
)


def _hf_part(rest: str) -> str:
    for old, new in _FUN_ASR_NANO_HF_PARTS:
        if rest.startswith(old):
            return new + rest[len(old) :]
    raise KeyError(rest)


def fun_asr_nano_hf_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The "hf" layout's tensors of funasr-layout weights (transformers 5.x's names): the fused
    q/k/v of a SAN-M layer split in three, after_norm / tp_norm as the final_layernorm of the
    last transcription / timestamp layer, the tied lm_head dropped."""
    enc = FUN_ASR_NANO_ENCODER_DIMS
    blocks, tp = enc["num_blocks"], enc["tp_blocks"]
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if name == "llm.lm_head.weight":
            continue
        if name.startswith("llm.model."):
            out["model.language_model." + name[len("llm.model.") :]] = w
            continue
        if name.startswith("audio_adaptor."):
            rest = name[len("audio_adaptor.") :]
            p = "model.multi_modal_projector."
            if rest.startswith("linear1."):
                out[p + "linear_1." + rest[len("linear1.") :]] = w
            elif rest.startswith("linear2."):
                out[p + "linear_2." + rest[len("linear2.") :]] = w
            else:
                _, i, part = rest.split(".", 2)
                out[f"{p}layers.{i}.{_hf_part(part)}"] = w
            continue
        rest = name[len("audio_encoder.") :]
        p = "model.audio_tower.layers."
        if rest.startswith("after_norm."):
            out[f"{p}{blocks - 1}.final_layernorm.{rest.split('.')[-1]}"] = w
            continue
        if rest.startswith("tp_norm."):
            out[f"{p}{blocks + tp - 1}.final_layernorm.{rest.split('.')[-1]}"] = w
            continue
        group, i, part = rest.split(".", 2)
        layer = {"encoders0": 0, "encoders": 1 + int(i), "tp_encoders": blocks + int(i)}[group]
        if part.startswith("self_attn.linear_q_k_v."):
            kind = part.split(".")[-1]
            for proj, piece in zip(("q_proj", "k_proj", "v_proj"), np.split(w, 3), strict=True):
                out[f"{p}{layer}.self_attn.{proj}.{kind}"] = np.ascontiguousarray(piece)
            continue
        out[f"{p}{layer}.{_hf_part(part)}"] = w
    return out


def fun_asr_nano_hf_config(vocab_size: int, ids: dict[str, int]) -> dict[str, object]:
    """config.json of the "hf" layout, as transformers 5.x's FunAsrNanoConfig saves it."""
    enc, a, t = FUN_ASR_NANO_ENCODER_DIMS, FUN_ASR_NANO_ADAPTOR_CONF, QWEN3_DIMS
    audio = {
        "attention_dropout": 0.1,
        "fsmn_kernel_size": enc["kernel_size"],
        "hidden_act": "relu",
        "hidden_dropout": 0.1,
        "hidden_size": enc["output_size"],
        "intermediate_size": enc["linear_units"],
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": 2049,
        "model_type": "fun_asr_nano_encoder",
        "num_attention_heads": enc["attention_heads"],
        "num_hidden_layers": enc["num_blocks"] + enc["tp_blocks"],
        "num_mel_bins": PARAFORMER_N_MELS,
        "num_stacked_frames": PARAFORMER_LFR_M,
        "num_timestamp_prediction_layers": enc["tp_blocks"],
    }
    adaptor = {
        "attention_dropout": 0.0,
        "hidden_act": "relu",
        "hidden_dropout": 0.0,
        "hidden_size": a["llm_dim"],
        "intermediate_size": a["llm_dim"] // 4,
        "layer_norm_eps": 1e-12,  # funasr's adaptor LayerNorm
        "model_type": "",  # FunAsrNanoAdaptorConfig has none
        "num_attention_heads": FUN_ASR_NANO_ADAPTOR_HEADS,
        "num_hidden_layers": a["n_layer"],
        "projector_hidden_act": "relu",
        "projector_hidden_size": a["ffn_dim"],
    }
    text = {
        **t,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "layer_types": ["full_attention"] * t["num_hidden_layers"],
        "max_position_embeddings": 512,
        "max_window_layers": t["num_hidden_layers"],
        "model_type": "qwen3",
        "pad_token_id": None,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": True,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    return {
        "adaptor_config": adaptor,
        "architectures": ["FunAsrNanoForConditionalGeneration"],
        "audio_config": audio,
        "audio_token_id": ids[FUN_ASR_NANO_AUDIO_TOKEN],
        "dtype": "float32",
        "initializer_range": 0.02,
        "model_type": "fun_asr_nano",
        "text_config": text,
        "tie_word_embeddings": True,
        "transformers_version": "5.24.0",
    }


def fun_asr_nano_hf_generation_config(ids: dict[str, int]) -> dict[str, object]:
    """generation_config.json of the "hf" layout: greedy, EOS <|im_end|> (Qwen3-0.6B's)."""
    return {
        "do_sample": False,
        "eos_token_id": [ids["<|im_end|>"]],
        "max_new_tokens": 512,
        "pad_token_id": ids["<|endoftext|>"],
        "transformers_version": "5.24.0",
    }


def build_fun_asr_nano(path: Path, *, seed: int = 0, layout: str = "funasr") -> Path:
    """Writes a complete tiny Fun-ASR-Nano folder at `path` and returns `path`."""
    if layout not in ("funasr", "hf"):
        raise ValueError(f"layout must be 'funasr' or 'hf', not {layout!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids, vocab = fun_asr_nano_token_ids(), fun_asr_nano_vocab_size()
    weights = fun_asr_nano_random_weights(seed)
    if layout == "hf":
        for name in FUN_ASR_NANO_HF_FILES:
            shutil.copyfile(FUN_ASR_NANO_HF_DIR / name, path / name)
        _write_json(path / "config.json", fun_asr_nano_hf_config(vocab, ids))
        _write_json(path / "generation_config.json", fun_asr_nano_hf_generation_config(ids))
        save_safetensors(path, fun_asr_nano_hf_weights(weights))
        return path
    config = fun_asr_nano_config()
    (path / "config.yaml").write_text(paraformer_config_yaml(config), encoding="utf-8")
    _write_json(path / "configuration.json", fun_asr_nano_configuration_json())
    llm = path / FUN_ASR_NANO_LLM_DIR
    llm.mkdir(exist_ok=True)
    fun_asr_nano_tokenizer_files(llm)
    _write_json(llm / "config.json", fun_asr_nano_llm_config(vocab, ids))
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    _write_json(
        llm / "generation_config.json",
        qwen3_generation_config(ids["<|endoftext|>"], eos, ids["<|endoftext|>"]),
    )
    save_fun_asr_nano_state_dict(path / "model.pt", weights)
    return path
