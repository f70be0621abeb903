"""The tiny checkpoint builder, and its agreement with the committed Qwen3 golden fixtures.

Runs in the project environment (no transformers). The golden files come from
tests/fixtures/make_qwen3_golden.py, run in the reference environment.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tests.tiny_models import (
    QWEN3_DIMS,
    QWEN3_TOKENIZER_DIR,
    build_qwen3,
    load_tensors,
    tensors_sha256,
)

GOLDEN_JSON = QWEN3_TOKENIZER_DIR / "golden.json"
GOLDEN_TENSORS = QWEN3_TOKENIZER_DIR / "golden.safetensors"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def golden() -> dict:
    return read_json(GOLDEN_JSON)


@pytest.fixture(scope="module")
def golden_tensors() -> dict[str, np.ndarray]:
    return load_file(str(GOLDEN_TENSORS))


def layer_keys(i: int) -> set[str]:
    p = f"model.layers.{i}."
    attn = [f"self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    attn += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    mlp = [f"mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")]
    norms = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    return {p + n for n in attn + mlp + norms}


@pytest.mark.parametrize("tie", [False, True])
def test_hf_key_names_and_shapes(tmp_path: Path, tie: bool) -> None:
    folder = build_qwen3(tmp_path, tie_word_embeddings=tie)
    tensors = load_tensors(folder)
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    expected |= {k for i in range(QWEN3_DIMS["num_hidden_layers"]) for k in layer_keys(i)}
    if not tie:
        expected.add("lm_head.weight")
    assert set(tensors) == expected
    assert all(t.dtype == np.float32 for t in tensors.values())
    vocab, h = read_json(folder / "config.json")["vocab_size"], QWEN3_DIMS["hidden_size"]
    assert tensors["model.embed_tokens.weight"].shape == (vocab, h)
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 16, h)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, h)
    assert tensors["model.layers.0.self_attn.k_norm.weight"].shape == (16,)
    assert tensors["model.layers.1.mlp.down_proj.weight"].shape == (h, 128)
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = build_qwen3(tmp_path / "a", seed=3)
    b = build_qwen3(tmp_path / "b", seed=3)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert tensors_sha256(build_qwen3(tmp_path / "c", seed=4)) != tensors_sha256(a)


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_build_matches_single_file(tmp_path: Path, shards: int) -> None:
    single = build_qwen3(tmp_path / "single", seed=0)
    sharded = build_qwen3(tmp_path / "sharded", seed=0, shards=shards)
    files = [f"model-{k:05d}-of-{shards:05d}.safetensors" for k in range(1, shards + 1)]
    assert sorted(p.name for p in sharded.glob("*.safetensors")) == files
    assert not (sharded / "model.safetensors").exists()
    index = read_json(sharded / "model.safetensors.index.json")
    assert set(index) == {"metadata", "weight_map"}
    ref = load_tensors(single)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in ref.values())
    assert set(index["weight_map"]) == set(ref)
    assert set(index["weight_map"].values()) == set(files)
    for name, file in index["weight_map"].items():
        with safe_open(str(sharded / file), framework="numpy") as f:
            np.testing.assert_array_equal(f.get_tensor(name), ref[name])
    assert tensors_sha256(sharded) == tensors_sha256(single)


def test_config_matches_tokenizer(tmp_path: Path) -> None:
    folder = build_qwen3(tmp_path)
    config = read_json(folder / "config.json")
    gen = read_json(folder / "generation_config.json")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert config["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
    assert config["model_type"] == "qwen3"
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    assert (config["bos_token_id"], config["eos_token_id"]) == (eot, im_end)
    assert gen["eos_token_id"] == [im_end, eot]
    tok_config = read_json(folder / "tokenizer_config.json")
    assert tok_config["eos_token"] == "<|im_end|>"
    assert tok_config["pad_token"] == "<|endoftext|>"
    assert tok_config["bos_token"] is None
    decoder = tok_config["added_tokens_decoder"]
    assert {v["content"]: int(k) for k, v in decoder.items()} == {
        c: tok.token_to_id(c) for c in (v["content"] for v in decoder.values())
    }
    assert not decoder[str(tok.token_to_id("<think>"))]["special"]
    vocab = read_json(folder / "vocab.json")
    assert len(vocab) == min(int(k) for k in decoder)  # added tokens follow the BPE vocabulary


def test_tokenizer_fixture_is_what_its_script_makes(tmp_path: Path) -> None:
    path = QWEN3_TOKENIZER_DIR.parent / "make_qwen3_tokenizer.py"
    spec = importlib.util.spec_from_file_location("make_qwen3_tokenizer", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_all(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (QWEN3_TOKENIZER_DIR / name).read_bytes(), name


def test_golden_recorded_versions(golden: dict) -> None:
    assert golden["versions"]["transformers"] == "4.57.6"
    assert {"torch", "tokenizers", "safetensors", "numpy"} <= set(golden["versions"])
    size = GOLDEN_JSON.stat().st_size + GOLDEN_TENSORS.stat().st_size
    assert size < 200_000, "golden fixtures should stay KBs"


@pytest.mark.parametrize("name", ["untied", "tied"])
def test_golden_matches_builder(tmp_path: Path, golden: dict, name: str) -> None:
    entry = golden["checkpoints"][name]
    folder = build_qwen3(tmp_path, **entry["build"])
    assert read_json(folder / "config.json") == entry["config"]
    assert tensors_sha256(folder) == entry["tensors_sha256"], (
        "tests/tiny_models.py no longer builds the checkpoints of the golden fixtures: "
        "regenerate them (see tests/fixtures/make_qwen3_golden.py)"
    )


def check_case(case: dict, tensors: dict[str, np.ndarray], vocab: int, steps: int) -> None:
    ids = case["input_ids"]
    logits = tensors[case["logits"]]
    assert logits.dtype == np.float32
    assert logits.shape == (min(len(ids), 8), vocab)
    assert case["logits_start"] + logits.shape[0] == len(ids)
    assert np.isfinite(logits).all()
    assert all(0 <= t < vocab for t in ids + case["greedy_ids"])
    assert len(case["greedy_ids"]) == len(case["greedy_top2_margins"]) == steps
    assert min(case["greedy_top2_margins"]) > 1e-3  # a tie would make the greedy ids fragile


@pytest.mark.parametrize("name", ["untied", "tied"])
def test_golden_shapes_match_config(golden: dict, golden_tensors: dict, name: str) -> None:
    entry = golden["checkpoints"][name]
    vocab, hidden = entry["config"]["vocab_size"], entry["config"]["hidden_size"]
    assert len(entry["prompts"]) >= 3
    lengths = [len(p["input_ids"]) for p in entry["prompts"]]
    assert len(set(lengths)) == len(lengths) and min(lengths) >= 5 and max(lengths) <= 40
    for prompt in entry["prompts"]:
        check_case(prompt, golden_tensors, vocab, steps=12)
    injected = entry["injected"]
    check_case(injected, golden_tensors, vocab, steps=8)
    a, b = injected["span"]
    assert golden_tensors[injected["embeds"]].shape == (b - a, hidden)
    assert injected["logits_start"] <= a
    pad = Tokenizer.from_file(str(QWEN3_TOKENIZER_DIR / "tokenizer.json")).token_to_id(
        "<|audio_pad|>"
    )
    assert injected["input_ids"][a:b] == [pad] * (b - a)
    assert pad not in injected["input_ids"][:a] + injected["input_ids"][b:]


def test_golden_tokenizer_encodings_match_tokenizers_library(golden: dict) -> None:
    tok = Tokenizer.from_file(str(QWEN3_TOKENIZER_DIR / "tokenizer.json"))
    for item in golden["tokenizer"]["encodings"]:
        assert tok.encode(item["text"]).ids == item["ids"], item["text"]
        assert tok.decode(item["ids"], skip_special_tokens=False) == item["decoded"]
    for chat in golden["tokenizer"]["chat"]:
        assert tok.encode(chat["text"]).ids == chat["ids"]
