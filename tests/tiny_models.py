"""Tiny random checkpoints in the real Hugging Face formats, for parity tests.

`build_qwen3` writes a complete Qwen3 folder (config, generation config, tokenizer files,
safetensors weights with HF's key names, single file or sharded with an index). Weights come
from numpy's legacy `RandomState`, whose streams are stable across numpy versions, so the
project's environment and the reference environment (tests/fixtures/make_ref_env.sh) build
bit-identical checkpoints. tests/fixtures/make_qwen3_golden.py records HF transformers' outputs
for them; tests/test_tiny_models.py guards the builder against drifting from those fixtures.

Depends only on numpy, safetensors, tokenizers and the standard library.
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
    h, inter = QWEN3_DIMS["hidden_size"], QWEN3_DIMS["intermediate_size"]
    d = QWEN3_DIMS["head_dim"]
    q, kv = QWEN3_DIMS["num_attention_heads"] * d, QWEN3_DIMS["num_key_value_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, h)}
    for i in range(QWEN3_DIMS["num_hidden_layers"]):
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
