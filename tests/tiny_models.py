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
