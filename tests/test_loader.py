"""Finding models: specs, local folders, hub ids offline, unknown families."""

from __future__ import annotations

import pytest

from engine.loader import ModelLoadError, ModelSpec, find_family, load, parse_spec, resolve


def test_specs():
    assert parse_spec("/models/x") == ModelSpec("/models/x")
    assert parse_spec("chat=/models/x") == ModelSpec("/models/x", "chat")
    assert parse_spec("Qwen/Qwen3-0.6B").served_name == "Qwen3-0.6B"
    with pytest.raises(ModelLoadError):
        parse_spec("=/models/x")


def test_hub_id_offline_fails_clearly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="hub download failed"):
        resolve("Qwen/Qwen3-no-such-model-here")


def test_a_file_or_a_missing_folder_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="folder, not a file"):
        resolve(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve(str(tmp_path / "nope" / "deeper"))


def test_unknown_family_says_what_it_found(tmp_path):
    with pytest.raises(ModelLoadError, match="an empty folder"):
        find_family(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="model_type='llama'.*families: qwen3"):
        load(ModelSpec(str(tmp_path)))
