"""The tiny checkpoint builders, and their agreement with the committed golden fixtures.

Runs in the project environment (no transformers, no funasr). The golden files come from
tests/fixtures/make_qwen3_golden.py, make_qwen3_asr_golden.py, make_paraformer_golden.py and
make_sensevoice_golden.py (run in the reference environment, .venv-ref/) and
make_qwen3_asr_golden_hf.py (.venv-ref5/, transformers 5).
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
    PARAFORMER_DECODER_DIMS,
    PARAFORMER_ENCODER_DIMS,
    PARAFORMER_FEAT_DIM,
    PARAFORMER_TOKENS,
    QWEN3_ASR_AUDIO_DIMS,
    QWEN3_ASR_DIR,
    QWEN3_ASR_HF_DIR,
    QWEN3_ASR_HF_FILES,
    QWEN3_ASR_RELEASED_FILES,
    QWEN3_DIMS,
    QWEN3_TOKENIZER_DIR,
    SENSEVOICE_BPE_FILE,
    SENSEVOICE_BPE_FIXTURE,
    SENSEVOICE_ENCODER_DIMS,
    SENSEVOICE_MARKS,
    SENSEVOICE_QUERIES,
    SENSEVOICE_TAGS,
    build_paraformer,
    build_qwen3,
    build_qwen3_asr,
    build_sensevoice,
    load_paraformer_tensors,
    load_tensors,
    paraformer_cmvn,
    paraformer_config,
    paraformer_tensors_sha256,
    paraformer_weight_shapes,
    qwen3_asr_fragment_ids,
    qwen3_asr_hf_name,
    qwen3_asr_token_ids,
    qwen3_asr_vocab_size,
    sensevoice_bpe_model,
    sensevoice_config,
    sensevoice_marker_channel,
    sensevoice_pieces,
    sensevoice_weight_shapes,
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


# ------------------------------------------------------------------------------------------------
# Qwen3-ASR: the builder, its two layouts, and the golden files of make_qwen3_asr_golden.py
# (qwen-asr, released layout) and make_qwen3_asr_golden_hf.py (transformers 5, hf layout).
# ------------------------------------------------------------------------------------------------

ASR_GOLDEN_JSON = QWEN3_ASR_DIR / "golden.json"
ASR_GOLDEN_TENSORS = QWEN3_ASR_DIR / "golden.safetensors"
ASR_GOLDEN_HF_JSON = QWEN3_ASR_DIR / "golden_hf.json"
ASR_CHECKPOINTS = ["untied", "tied"]


def load_fixture_script(name: str):
    path = QWEN3_ASR_DIR.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def asr_golden() -> dict:
    return read_json(ASR_GOLDEN_JSON)


@pytest.fixture(scope="module")
def asr_golden_hf() -> dict:
    return read_json(ASR_GOLDEN_HF_JSON)


@pytest.fixture(scope="module")
def asr_tensors() -> dict[str, np.ndarray]:
    return load_file(str(ASR_GOLDEN_TENSORS))


def audio_tokens(mel_frames: int) -> int:
    """Qwen3-ASR's encoder output length: 13 per full 100-frame chunk, plus the tail's."""
    tail = mel_frames % 100
    for _ in range(3):
        tail = (tail - 1) // 2 + 1 if tail else 0
    return mel_frames // 100 * 13 + tail


def released_keys(tie: bool) -> set[str]:
    a = QWEN3_ASR_AUDIO_DIMS
    tower = {f"thinker.audio_tower.{m}.{p}" for m in ("ln_post", "proj1", "proj2")
             for p in ("weight", "bias")}  # fmt: skip
    tower |= {f"thinker.audio_tower.conv2d{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    tower.add("thinker.audio_tower.conv_out.weight")
    for i in range(a["encoder_layers"]):
        mods = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "out_proj")]
        mods += ["self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"]
        tower |= {
            f"thinker.audio_tower.layers.{i}.{m}.{p}" for m in mods for p in ("weight", "bias")
        }
    text = {"thinker." + k for i in range(2) for k in layer_keys(i)}
    text |= {"thinker.model.embed_tokens.weight", "thinker.model.norm.weight"}
    return tower | text | (set() if tie else {"thinker.lm_head.weight"})


@pytest.mark.parametrize("tie", [False, True])
def test_qwen3_asr_released_keys_and_config(tmp_path: Path, tie: bool) -> None:
    folder = build_qwen3_asr(tmp_path, tie_word_embeddings=tie)
    tensors = load_tensors(folder)
    assert set(tensors) == released_keys(tie)
    assert all(t.dtype == np.float32 for t in tensors.values())
    config = read_json(folder / "config.json")
    thinker = config["thinker_config"]
    text, audio = thinker["text_config"], thinker["audio_config"]
    ids = qwen3_asr_token_ids()
    assert config["model_type"] == "qwen3_asr"
    assert config["architectures"] == ["Qwen3ASRForConditionalGeneration"]
    assert (thinker["audio_token_id"], thinker["audio_start_token_id"]) == (
        ids["<|audio_pad|>"],
        ids["<|audio_start|>"],
    )
    assert thinker["audio_end_token_id"] == ids["<|audio_end|>"]
    assert text["vocab_size"] == qwen3_asr_vocab_size() == max(ids.values()) + 1
    assert text["tie_word_embeddings"] is tie
    assert sum(text["rope_scaling"]["mrope_section"]) == text["head_dim"] // 2
    assert audio["n_window"] * 2 * 8 == audio["n_window_infer"] == 800
    assert tensors["thinker.model.embed_tokens.weight"].shape == (text["vocab_size"], 48)
    assert tensors["thinker.audio_tower.conv_out.weight"].shape == (32, 8 * 16)
    assert tensors["thinker.audio_tower.proj2.weight"].shape == (48, 32)
    names = sorted(p.name for p in folder.iterdir())
    expected = [*QWEN3_ASR_RELEASED_FILES, "config.json", "generation_config.json"]
    assert names == sorted([*expected, "model.safetensors"])


@pytest.mark.parametrize("tie", [False, True])
def test_qwen3_asr_layouts_hold_the_same_tensors(tmp_path: Path, tie: bool) -> None:
    released = load_tensors(build_qwen3_asr(tmp_path / "r", seed=5, tie_word_embeddings=tie))
    hf_folder = build_qwen3_asr(tmp_path / "h", seed=5, tie_word_embeddings=tie, layout="hf")
    hf = load_tensors(hf_folder)
    assert set(hf) == {qwen3_asr_hf_name(k) for k in released}
    for name, value in released.items():
        np.testing.assert_array_equal(hf[qwen3_asr_hf_name(name)], value)
    assert ("lm_head.weight" in hf) is not tie
    assert "model.multi_modal_projector.linear_2.weight" in hf
    assert not any("proj1" in k or "proj2" in k or k.startswith("thinker.") for k in hf)
    config = read_json(hf_folder / "config.json")
    assert config["tie_word_embeddings"] is config["text_config"]["tie_word_embeddings"] is tie
    assert config["text_config"]["vocab_size"] == qwen3_asr_vocab_size()
    assert config["audio_token_id"] == qwen3_asr_token_ids()["<|audio_pad|>"]
    for name in QWEN3_ASR_HF_FILES:
        assert (hf_folder / name).read_bytes() == (QWEN3_ASR_HF_DIR / name).read_bytes()


@pytest.mark.parametrize("layout", ["released", "hf"])
def test_qwen3_asr_build_is_deterministic(tmp_path: Path, layout: str) -> None:
    a = build_qwen3_asr(tmp_path / "a", seed=3, layout=layout)
    b = build_qwen3_asr(tmp_path / "b", seed=3, layout=layout)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert (mismatch, errors) == ([], [])
    c = build_qwen3_asr(tmp_path / "c", seed=4, layout=layout)
    assert tensors_sha256(c) != tensors_sha256(a)
    sharded = build_qwen3_asr(tmp_path / "s", seed=3, layout=layout, shards=2)
    assert (sharded / "model.safetensors.index.json").exists()
    assert tensors_sha256(sharded) == tensors_sha256(a)


def test_qwen3_asr_output_rows_of_byte_fragments_are_scaled(tmp_path: Path) -> None:
    fragments = qwen3_asr_fragment_ids()
    vocab = read_json(QWEN3_ASR_DIR / "vocab.json")
    assert len(vocab) + 7 == qwen3_asr_vocab_size()
    assert vocab["Ġ"] not in fragments and vocab["Ċ"] not in fragments  # space, newline
    assert vocab["ä"] in fragments and vocab["Ā"] in fragments  # a lead byte, a NUL
    head = load_tensors(build_qwen3_asr(tmp_path))["thinker.lm_head.weight"]
    norms = np.linalg.norm(head, axis=1)
    others = np.setdiff1d(np.arange(len(norms)), fragments)
    assert norms[fragments].mean() < 0.95 * norms[others].mean()


def test_qwen3_asr_tokenizer_fixture_is_what_its_script_makes(tmp_path: Path) -> None:
    load_fixture_script("make_qwen3_asr_tokenizer").write_all(tmp_path)
    for name in QWEN3_ASR_RELEASED_FILES:
        assert (tmp_path / name).read_bytes() == (QWEN3_ASR_DIR / name).read_bytes(), name


def test_qwen3_asr_tokenizer_matches_the_reference(asr_golden: dict) -> None:
    script = load_fixture_script("make_qwen3_asr_tokenizer")
    tok = script.load_tokenizer(QWEN3_ASR_DIR)  # from vocab.json + merges.txt, as transformers
    hf_tok = Tokenizer.from_file(str(QWEN3_ASR_HF_DIR / "tokenizer.json"))
    reference = asr_golden["checkpoints"]["untied"]["tokenizer"]
    assert tok.get_vocab_size() == hf_tok.get_vocab_size() == reference["vocab_size"]
    for item in reference["encodings"]:
        assert tok.encode(item["text"]).ids == item["ids"] == hf_tok.encode(item["text"]).ids
        assert tok.decode(item["ids"], skip_special_tokens=False) == item["decoded"]
        assert tok.decode(item["ids"], skip_special_tokens=True) == item["decoded_skip_special"]
    asr_text = tok.token_to_id("<asr_text>")
    assert tok.decode([asr_text], skip_special_tokens=True) == "<asr_text>"  # not special
    for name, text in reference["prompts"].items():
        prompt = asr_golden["checkpoints"]["untied"]["prompts"][name]
        assert prompt["text"] == text
        a, b = prompt["audio_span"]
        pads = tok.encode(text).ids
        assert prompt["input_ids"][:a] + prompt["input_ids"][b - 1 :] == pads  # one pad in text


def test_qwen3_asr_chat_template_renders_qwen_asr_prompts(asr_golden: dict) -> None:
    jinja2 = pytest.importorskip("jinja2")
    template = read_json(QWEN3_ASR_DIR / "chat_template.json")["chat_template"]
    render = jinja2.Environment().from_string(template).render
    for prompt in asr_golden["checkpoints"]["untied"]["prompts"].values():
        messages = [
            {"role": "system", "content": prompt["context"]},
            {"role": "user", "content": [{"type": "audio", "audio": ""}]},
        ]
        text = render(messages=messages, add_generation_prompt=True)
        if prompt["language"]:
            text += f"language {prompt['language']}<asr_text>"
        assert text == prompt["text"]


def test_qwen3_asr_golden_versions_and_size(asr_golden: dict, asr_golden_hf: dict) -> None:
    assert asr_golden["versions"]["transformers"] == "4.57.6"
    assert asr_golden["versions"]["qwen-asr"] == "0.0.6"
    assert asr_golden_hf["versions"]["transformers"].startswith("5.")
    files = [p for p in QWEN3_ASR_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 250_000, "Qwen3-ASR fixtures should stay KBs"


@pytest.mark.parametrize("name", ASR_CHECKPOINTS)
def test_qwen3_asr_golden_matches_builder(
    tmp_path: Path, asr_golden: dict, asr_golden_hf: dict, name: str
) -> None:
    entry, hf_entry = asr_golden["checkpoints"][name], asr_golden_hf["checkpoints"][name]
    released = build_qwen3_asr(tmp_path / "r", **entry["build"])
    hf = build_qwen3_asr(tmp_path / "h", layout="hf", **hf_entry["build"])
    regenerate = "regenerate the Qwen3-ASR fixtures (tests/fixtures/make_qwen3_asr_golden.py)"
    assert read_json(released / "config.json") == entry["config"], regenerate
    assert read_json(released / "generation_config.json") == entry["generation_config"]
    assert tensors_sha256(released) == entry["tensors_sha256"], regenerate
    assert hf_entry["released_tensors_sha256"] == entry["tensors_sha256"]
    assert read_json(hf / "config.json") == hf_entry["config"], regenerate
    assert read_json(hf / "generation_config.json") == hf_entry["generation_config"]
    assert tensors_sha256(hf) == hf_entry["tensors_sha256"], regenerate
    assert sorted(load_tensors(hf)) == hf_entry["tensor_names"]
    assert entry["check"]["loading_info"] == {
        "missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []
    }  # fmt: skip


def test_qwen3_asr_golden_hf_agrees_with_the_released_reference(asr_golden_hf: dict) -> None:
    for entry in asr_golden_hf["checkpoints"].values():
        assert entry["ties_without_top_level_flag"] is True  # why the flag is written at the top
        for prompt in entry["prompts"].values():
            assert prompt["same_ids"] and prompt["logits_max_abs"] < 1e-4
        assert all(g["same_ids"] for g in entry["greedy"].values())
    untied = asr_golden_hf["checkpoints"]["untied"]
    assert untied["features"]["frame_mean_max_abs"] < 1e-5
    for clip in untied["encoder"].values():
        assert clip["vs_windowed_max_abs"] < 1e-4


def check_logits(case: dict, tensors: dict[str, np.ndarray], vocab: int) -> None:
    logits = tensors[case["logits"]]
    assert logits.dtype == np.float32 and logits.shape == (8, vocab)
    assert case["logits_start"] + 8 == len(case["input_ids"])
    assert np.isfinite(logits).all()
    assert case["logits_min_top2_margin"] > 1e-3


def check_run(case: dict, vocab: int, eos: set[int], limit: int) -> None:
    """A greedy run: ids in the vocab, EOS only last, one top-2 margin per step, no near-tie."""
    ids = case["generated_ids"]
    assert 1 <= len(ids) <= limit and len(case["top2_margins"]) == len(ids)
    assert all(0 <= t < vocab for t in ids)
    assert not eos & set(ids[:-1])
    assert case["stopped_at_eos"] == (ids[-1] in eos)
    assert case["stopped_at_eos"] or len(ids) == limit
    assert min(case["top2_margins"]) > 1e-3  # a tie would make the greedy ids fragile


def check_audio_span(case_ids: list[int], span: list[int], pad: int, frames: int) -> None:
    a, b = span
    assert b - a == audio_tokens(frames)
    assert case_ids[a:b] == [pad] * (b - a) and pad not in case_ids[:a] + case_ids[b:]


@pytest.mark.parametrize("name", ASR_CHECKPOINTS)
def test_qwen3_asr_golden_shapes_match_config(
    asr_golden: dict, asr_tensors: dict, name: str
) -> None:
    entry = asr_golden["checkpoints"][name]
    thinker = entry["config"]["thinker_config"]
    vocab, pad = thinker["text_config"]["vocab_size"], thinker["audio_token_id"]
    ids = qwen3_asr_token_ids()
    eos = {ids["<|im_end|>"], ids["<|endoftext|>"]}
    for prompt in entry["prompts"].values():
        check_logits(prompt, asr_tensors, vocab)
        check_audio_span(prompt["input_ids"], prompt["audio_span"], pad, 300)
    for case in entry["greedy"].values():
        check_run(case, vocab, eos, 24)
        seconds = {"hello_3s": 3, "silence_3s": 3, "synthetic_12s": 12}[case["audio"]]
        check_audio_span(case["input_ids"], case["audio_span"], pad, seconds * 100)
    assert entry["min_top2_margin"]["greedy"] > 1e-3


def test_qwen3_asr_golden_encoder_and_features(asr_golden: dict, asr_tensors: dict) -> None:
    entry = asr_golden["checkpoints"]["untied"]
    audio = entry["config"]["thinker_config"]["audio_config"]
    for clip in entry["encoder"].values():
        n = audio_tokens(clip["mel_frames"])
        assert clip["audio_tokens"] == n
        for key in ("full", "windowed"):
            assert asr_tensors[clip[key]].shape == (n, audio["output_dim"])
    hello, synthetic = entry["encoder"]["hello_3s"], entry["encoder"]["synthetic_12s"]
    np.testing.assert_array_equal(asr_tensors[hello["full"]], asr_tensors[hello["windowed"]])
    assert asr_tensors[hello["ln_post"]].shape == (39, audio["d_model"])
    full, windowed = asr_tensors[synthetic["full"]], asr_tensors[synthetic["windowed"]]
    assert synthetic["mel_frames"] == 1200 and full.shape[0] == 156
    assert np.abs(full - windowed).max() > 0.1  # the 8 s windows matter for the 12 s clip
    features = entry["features"]
    assert features["shape"] == [128, 300] and features["valid_frames"] == 300
    assert asr_tensors[features["frames"]].shape == (128, 15)
    assert asr_tensors[features["frame_mean"]].shape == (300,)
    assert asr_tensors[features["mel_mean"]].shape == (128,)


def test_qwen3_asr_golden_streaming_steps(asr_golden: dict) -> None:
    """The recorded streaming runs follow qwen-asr's algorithm: 2 s chunks, whole audio
    re-fed, prompt = prompt_raw + prefix, prefix empty for the first 2 chunks, raw = prefix +
    generated text, and a rolled-back prefix that never ends inside a character."""
    entry = asr_golden["checkpoints"]["untied"]
    spec = asr_golden["streaming"]
    tok = load_fixture_script("make_qwen3_asr_tokenizer").load_tokenizer(QWEN3_ASR_DIR)
    pad = entry["config"]["thinker_config"]["audio_token_id"]
    ids = qwen3_asr_token_ids()
    eos = {ids["<|im_end|>"], ids["<|endoftext|>"]}
    vocab = qwen3_asr_vocab_size()
    ks = []
    for run in entry["streaming"].values():
        steps = run["steps"]
        assert [s["audio_samples"] for s in steps] == [32000, 64000, 96000, 128000, 144000]
        assert [s["finish"] for s in steps] == [False] * 4 + [True]
        previous = ""
        for i, step in enumerate(steps):
            assert step["chunk_id"] == i and step["previous_raw"] == previous
            if i < spec["unfixed_chunk_num"]:
                assert step["prefix"] == "" and step["rollback_k"] == 0
            else:
                assert step["rollback_k"] >= spec["unfixed_token_num"]
                assert previous.startswith(step["prefix"]) and "\ufffd" not in step["prefix"]
                assert step["previous_raw_ids"] == tok.encode(previous).ids
                kept = step["previous_raw_ids"][
                    : len(step["previous_raw_ids"]) - step["rollback_k"]
                ]
                assert tok.decode(kept, skip_special_tokens=False) == step["prefix"]
            prompt_ids = tok.encode(run["prompt_raw"] + step["prefix"]).ids
            a, b = step["audio_span"]
            assert step["prompt_ids"][:a] + step["prompt_ids"][b - 1 :] == prompt_ids
            check_audio_span(
                step["prompt_ids"], step["audio_span"], pad, step["audio_samples"] // 160
            )
            check_run(step, vocab, eos, spec["max_new_tokens"])
            assert step["raw"] == step["prefix"] + step["generated_text"]
            previous = step["raw"]
            ks.append(step["rollback_k"])
    assert max(ks) > spec["unfixed_token_num"], "a U+FFFD rollback case is covered"


# ------------------------------------------------------------------------------------------------
# Paraformer / Paraformer-streaming (FunASR)
# ------------------------------------------------------------------------------------------------

PARAFORMER_DIR = QWEN3_ASR_DIR.parent / "paraformer"
PARAFORMER_FILES = ["am.mvn", "config.yaml", "configuration.json", "model.pt", "seg_dict",
                    "tokens.json"]  # fmt: skip
PARAFORMER_BUILDS = {"offline": False, "streaming": True}


@pytest.fixture(scope="module")
def paraformer_golden() -> dict:
    return read_json(PARAFORMER_DIR / "golden.json")


@pytest.fixture(scope="module")
def paraformer_tensors() -> dict[str, np.ndarray]:
    return load_file(str(PARAFORMER_DIR / "golden.safetensors"))


@pytest.mark.parametrize("streaming", [False, True])
def test_paraformer_build_is_deterministic(tmp_path: Path, streaming: bool) -> None:
    a = build_paraformer(tmp_path / "a", seed=3, streaming=streaming)
    b = build_paraformer(tmp_path / "b", seed=3, streaming=streaming)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) == PARAFORMER_FILES
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert (mismatch, errors) == ([], [])  # model.pt too: torch.save is deterministic
    other = build_paraformer(tmp_path / "c", seed=4, streaming=streaming)
    assert paraformer_tensors_sha256(other) != paraformer_tensors_sha256(a)


def test_paraformer_offline_and_streaming_hold_the_same_tensors(tmp_path: Path) -> None:
    offline = build_paraformer(tmp_path / "offline")
    streaming = build_paraformer(tmp_path / "streaming", streaming=True)
    assert paraformer_tensors_sha256(offline) == paraformer_tensors_sha256(streaming)
    assert (offline / "am.mvn").read_bytes() == (streaming / "am.mvn").read_bytes()
    assert (offline / "config.yaml").read_bytes() != (streaming / "config.yaml").read_bytes()


@pytest.mark.parametrize("streaming", [False, True])
def test_paraformer_config_files_load_without_funasr(tmp_path: Path, streaming: bool) -> None:
    yaml = pytest.importorskip("yaml")
    from audio.fbank import read_mvn

    folder = build_paraformer(tmp_path / "m", streaming=streaming)
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert config == paraformer_config(streaming=streaming)
    enc, dec = config["encoder_conf"], config["decoder_conf"]
    assert config["model"] == ("ParaformerStreaming" if streaming else "Paraformer")
    assert config["encoder"] == ("SANMEncoderChunkOpt" if streaming else "SANMEncoder")
    assert enc["input_layer"] == ("pe_online" if streaming else "pe")
    assert config["frontend"] == ("WavFrontendOnline" if streaming else "WavFrontend")
    assert dec["sanm_shfit"] == (5 if streaming else 0)
    assert config["frontend_conf"]["dither"] == 0.0
    if streaming:
        assert enc["chunk_size"] == [12, 15] and enc["stride"] == [8, 10]
        assert enc["encoder_att_look_back_factor"] == [4, 4]
    # configuration.json names the files, as the released one does
    metas = read_json(folder / "configuration.json")["file_path_metas"]
    assert metas["init_param"] == "model.pt" and metas["config"] == "config.yaml"
    assert metas["tokenizer_conf"] == {"token_list": "tokens.json", "seg_dict_file": "seg_dict"}
    assert metas["frontend_conf"] == {"cmvn_file": "am.mvn"}
    tokens = read_json(folder / "tokens.json")
    assert tokens == PARAFORMER_TOKENS and tokens[:3] == ["<blank>", "<s>", "</s>"]
    assert tokens[-1] == config["tokenizer_conf"]["unk_symbol"] == "<unk>"
    seg = dict(line.split(" ", 1) for line in (folder / "seg_dict").read_text().splitlines())
    assert seg["hello"] == "hel@@ lo" and all(p in tokens for v in seg.values() for p in v.split())
    shift, scale = read_mvn(folder / "am.mvn")
    assert np.array_equal(shift.numpy(), paraformer_cmvn()[0].astype(np.float32))
    assert np.array_equal(scale.numpy(), paraformer_cmvn()[1].astype(np.float32))


@pytest.mark.parametrize("streaming", [False, True])
def test_paraformer_tensors_load_without_funasr(tmp_path: Path, streaming: bool) -> None:
    folder = build_paraformer(tmp_path / "m", streaming=streaming)
    tensors = load_paraformer_tensors(folder)  # torch.load(weights_only=True): a plain dict
    shapes = paraformer_weight_shapes(len(PARAFORMER_TOKENS))
    assert [(k, v.shape) for k, v in tensors.items()] == list(shapes.items())
    assert all(t.dtype == np.float32 for t in tensors.values()) and len(tensors) == 93
    d, vocab = PARAFORMER_ENCODER_DIMS["output_size"], len(PARAFORMER_TOKENS)
    qkv = tensors["encoder.encoders0.0.self_attn.linear_q_k_v.weight"]
    assert qkv.shape == (3 * d, PARAFORMER_FEAT_DIM)
    assert tensors["decoder.output_layer.weight"].shape == (vocab, d)
    assert tensors["predictor.cif_conv1d.weight"].shape == (d, d, 3)
    layers = PARAFORMER_ENCODER_DIMS["num_blocks"] - 1
    assert sum(k.startswith("encoder.encoders.") for k in tensors) == 13 * layers
    layers = PARAFORMER_DECODER_DIMS["att_layer_num"]
    assert sum(k.startswith("decoder.decoders.") for k in tensors) == 18 * layers


@pytest.mark.parametrize("name", list(PARAFORMER_BUILDS))
def test_paraformer_golden_matches_builder(
    tmp_path: Path, paraformer_golden: dict, name: str
) -> None:
    entry = paraformer_golden["checkpoints"][name]
    folder = build_paraformer(tmp_path / name, **entry["build"])
    assert entry["build"]["streaming"] == PARAFORMER_BUILDS[name]
    assert entry["tensors_sha256"] == paraformer_tensors_sha256(folder)
    assert entry["config"] == paraformer_config(streaming=PARAFORMER_BUILDS[name])
    assert entry["check"]["num_tensors"] == len(load_paraformer_tensors(folder))


def test_paraformer_golden_versions_and_size(paraformer_golden: dict) -> None:
    versions = paraformer_golden["versions"]
    assert versions["funasr"] == "1.4.16" and versions["fbank_backend"] == "torchaudio"
    size = sum(p.stat().st_size for p in PARAFORMER_DIR.glob("golden.*"))
    assert size < 250_000


def test_paraformer_golden_shapes_match_config(
    paraformer_golden: dict, paraformer_tensors: dict[str, np.ndarray]
) -> None:
    d, vocab = PARAFORMER_ENCODER_DIMS["output_size"], len(PARAFORMER_TOKENS)
    assert PARAFORMER_DECODER_DIMS["att_layer_num"] == PARAFORMER_DECODER_DIMS["num_blocks"]
    fired = 0
    for clip, case in paraformer_golden["offline"].items():
        t = case["lfr_frames"]
        assert paraformer_tensors[case["encoder_out"]].shape == (t, d), clip
        assert paraformer_tensors[case["alphas"]].shape == (t + 1,), clip  # + the tail frame
        assert case["token_num"] == np.floor(case["alphas_sum"]), clip
        if case["token_ids"]:
            n = int(case["token_num"])
            assert paraformer_tensors[case["decoder_logits"]].shape == (n, vocab), clip
            assert paraformer_tensors[case["acoustic_embeds"]].shape == (n, d), clip
            assert all(0 < i < vocab and i not in (1, 2) for i in case["token_ids"]), clip
            fired += n
    assert fired >= 30, "CIF fires a few tokens per second on the speech clips"
    for name, case in paraformer_golden["streaming"].items():
        for i, call in enumerate(case["calls"]):
            for j, step in enumerate(call["steps"]):
                key = f"streaming/{name}/call{i}/step{j}"
                rows = paraformer_tensors[key + "/encoder_out"].shape[0]
                assert rows == (step["frontend_frames"] or 0) + 5, key  # 5 overlap frames
                assert paraformer_tensors[key + "/alphas_raw"].shape == (rows,), key
                if step["tokens_fired"]:
                    shape = (step["tokens_fired"], vocab)
                    assert paraformer_tensors[key + "/decoder_logprobs"].shape == shape, key


# ------------------------------------------------------------------------------------------------
# SenseVoiceSmall (FunASR)
# ------------------------------------------------------------------------------------------------

SENSEVOICE_DIR = QWEN3_ASR_DIR.parent / "sensevoice"
SENSEVOICE_FILES = sorted(["am.mvn", "config.yaml", "configuration.json", "model.pt",
                           SENSEVOICE_BPE_FILE])  # fmt: skip


@pytest.fixture(scope="module")
def sensevoice_golden() -> dict:
    return read_json(SENSEVOICE_DIR / "golden.json")


def test_sensevoice_build_is_deterministic(tmp_path: Path) -> None:
    a = build_sensevoice(tmp_path / "a", seed=3)
    b = build_sensevoice(tmp_path / "b", seed=3)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) == SENSEVOICE_FILES
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert (mismatch, errors) == ([], [])  # the trained .bpe.model too
    other = build_sensevoice(tmp_path / "c", seed=4)
    assert paraformer_tensors_sha256(other) != paraformer_tensors_sha256(a)
    assert (other / SENSEVOICE_BPE_FILE).read_bytes() == (a / SENSEVOICE_BPE_FILE).read_bytes()


def test_sensevoice_golden_matches_builder(tmp_path: Path, sensevoice_golden: dict) -> None:
    """The committed fixtures were made from what the builder writes now (same tensors, same
    config, the same SentencePiece model, so the same sentencepiece trainer)."""
    import hashlib

    entry = sensevoice_golden["checkpoint"]
    folder = build_sensevoice(tmp_path / "m", **entry["build"])
    assert entry["tensors_sha256"] == paraformer_tensors_sha256(folder)
    assert entry["config"] == sensevoice_config()
    assert entry["check"]["num_tensors"] == len(load_paraformer_tensors(folder))
    tokenizer = sensevoice_golden["tokenizer"]
    bpe = (folder / SENSEVOICE_BPE_FILE).read_bytes()
    assert hashlib.sha256(bpe).hexdigest() == tokenizer["bpe_model_sha256"], (
        "the sentencepiece trainer makes another model: regenerate the fixtures"
    )
    assert sensevoice_pieces(bpe) == tokenizer["pieces"]


def test_sensevoice_config_files_load_without_funasr(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    import sentencepiece as spm

    folder = build_sensevoice(tmp_path / "m")
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert config == sensevoice_config()
    assert config["model"] == "SenseVoiceSmall" and config["encoder"] == "SenseVoiceEncoderSmall"
    assert config["tokenizer"] == "SentencepiecesTokenizer"
    assert config["tokenizer_conf"]["bpemodel"] is None  # configuration.json names the file
    assert config["frontend_conf"]["cmvn_file"] is None and config["frontend_conf"]["dither"] == 0
    assert config["dataset_conf"]["sos"] == "${model_conf.sos}"  # OmegaConf interpolation
    metas = read_json(folder / "configuration.json")["file_path_metas"]
    assert metas["tokenizer_conf"] == {"bpemodel": SENSEVOICE_BPE_FILE}
    assert metas["frontend_conf"] == {"cmvn_file": "am.mvn"} and metas["init_param"] == "model.pt"
    sp = spm.SentencePieceProcessor(model_file=str(folder / SENSEVOICE_BPE_FILE))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert pieces[:3] == ["<unk>", "<s>", "</s>"] and len(pieces) == 120  # 0 = the CTC blank
    assert pieces[3 : 3 + len(SENSEVOICE_TAGS)] == SENSEVOICE_TAGS  # user-defined pieces
    text = "<|en|><|HAPPY|><|Speech|><|withitn|>hello"
    tags = [sp.id_to_piece(i) for i in sp.encode(text)][1:5]
    assert tags == SENSEVOICE_TAGS[1:2] + ["<|HAPPY|>", "<|Speech|>", "<|withitn|>"]
    assert sp.decode(sp.encode(text)) == text


def test_sensevoice_bpe_fixture_is_what_the_trainer_makes(sensevoice_golden: dict) -> None:
    import sentencepiece as spm

    # the trainer's bytes are the version's: pyproject.toml pins the one the fixture was made with
    assert spm.__version__ == sensevoice_golden["versions"]["sentencepiece"]
    assert sensevoice_bpe_model() == SENSEVOICE_BPE_FIXTURE.read_bytes()


def test_sensevoice_tensors_and_the_planted_query_path(tmp_path: Path) -> None:
    folder = build_sensevoice(tmp_path / "m")
    tensors = load_paraformer_tensors(folder)
    pieces = sensevoice_pieces()
    shapes = sensevoice_weight_shapes(len(pieces))
    assert [(k, v.shape) for k, v in tensors.items()] == list(shapes.items())
    assert len(tensors) == 72 and all(t.dtype == np.float32 for t in tensors.values())
    assert tensors["embed.weight"].shape == (16, PARAFORMER_FEAT_DIM)
    d = SENSEVOICE_ENCODER_DIMS["output_size"]
    reserved = list(range(d - len(SENSEVOICE_MARKS), d))
    embed = tensors["embed.weight"]
    for q in SENSEVOICE_QUERIES.values():
        assert embed[q, sensevoice_marker_channel(q)] > 30  # the marker
    for name, t in tensors.items():
        if name.endswith(("self_attn.linear_out.weight", "feed_forward.w_2.weight")):
            assert not t[reserved].any(), name  # nothing writes a reserved channel
        if name.endswith("linear_q_k_v.weight") and "encoders0" not in name:
            assert not t[2 * d + np.array(reserved)].any(), name
    head = tensors["ctc.ctc_lo.weight"]
    readers = {pieces[i] for i in np.nonzero(head[:, reserved].any(1))[0]}
    assert readers == {tag for tags, _ in SENSEVOICE_MARKS for tag in tags}


def test_sensevoice_golden_versions_size_and_shapes(sensevoice_golden: dict) -> None:
    versions = sensevoice_golden["versions"]
    assert versions["funasr"] == "1.4.16" and versions["fbank_backend"] == "torchaudio"
    size = sum(p.stat().st_size for p in SENSEVOICE_DIR.glob("golden.*"))
    assert size < 200_000
    tensors = load_file(str(SENSEVOICE_DIR / "golden.safetensors"))
    d, vocab = SENSEVOICE_ENCODER_DIMS["output_size"], sensevoice_golden["tokenizer"]["vocab_size"]
    assert sensevoice_golden["checkpoint"]["check"]["layer_norm_eps"] == [1e-5]
    for setting, cases in sensevoice_golden["model"].items():
        for clip, case in cases.items():
            n = case["frames"]
            assert n == case["lfr_frames"] + 4 == len(case["argmax"]) == len(case["top2_margins"])
            assert min(case["top2_margins"]) > 1e-3, (setting, clip)
            for name in case["tensors"]:
                width = d if name.endswith("encoder_out") else vocab
                assert tensors[name].shape == (n, width), name
