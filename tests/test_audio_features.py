"""Whisper log-mel front end (audio/features.py): parity with HF's WhisperFeatureExtractor (the
committed golden outputs of tests/fixtures/make_whisper_golden.py), frame counts, the prefix
property a streaming cache relies on, the clamp floor, and batch invariance."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from safetensors.numpy import load_file

from audio.features import (
    HOP,
    clamp_floor,
    final_frames,
    log_mel,
    mel_filters,
    normalize,
    whisper_features,
)

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-4  # the parity target; measured on CPU: 0 on stored frames, <= 2.4e-7 on summaries
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _load_golden_script() -> ModuleType:
    path = FIXTURES / "make_whisper_golden.py"
    spec = importlib.util.spec_from_file_location("make_whisper_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOLDEN = _load_golden_script()
CASES = GOLDEN.make_cases()
STORED = load_file(str(FIXTURES / "whisper" / "golden.safetensors"))
META = json.loads((FIXTURES / "whisper" / "golden.json").read_text())["cases"]
SINGLES = [name for name, case in CASES.items() if len(case["wavs"]) == 1]
BATCHES = [name for name, case in CASES.items() if len(case["wavs"]) > 1]


def _batch(wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (B, N) batch and (B,) lengths, as the reference pads."""
    x = torch.zeros(len(wavs), max(len(w) for w in wavs))
    for b, w in enumerate(wavs):
        x[b, : len(w)] = torch.from_numpy(w)
    return x, torch.tensor([len(w) for w in wavs])


def _check_item(feats: torch.Tensor, key: str, upto: int | None = None) -> None:
    """feats (n_mels, T) against the stored outputs of item `key`, on frames < upto (default
    all): the stored full frames, per-frame mean and max over mels, and (all frames) mel means."""
    feats = feats.float().cpu()
    upto = feats.shape[1] if upto is None else upto
    idx = STORED[f"{key}.frames"]
    keep = idx < upto
    diff = np.abs(feats[:, idx[keep]].numpy() - STORED[f"{key}.features"][:, keep])
    assert diff.max(initial=0.0) <= TOL, (key, diff.max())
    mean, peak = feats.mean(dim=0).numpy(), feats.amax(dim=0).numpy()
    assert np.abs(mean - STORED[f"{key}.frame_mean"])[:upto].max(initial=0.0) <= TOL, key
    assert np.abs(peak - STORED[f"{key}.frame_max"])[:upto].max(initial=0.0) <= TOL, key
    if upto == feats.shape[1]:
        assert np.abs(feats.mean(dim=1).numpy() - STORED[f"{key}.mel_mean"]).max() <= TOL, key


def test_inputs_are_the_references() -> None:
    # Same decode (soundfile, libsndfile) and the same seeded signals as when the fixture was made.
    for name, case in CASES.items():
        for wav, item in zip(case["wavs"], META[name]["items"], strict=True):
            assert wav.dtype == np.float32 and len(wav) == item["samples"], name
            assert np.sum(wav, dtype=np.float64) == pytest.approx(item["sum"], abs=1e-4), name
            assert np.sum(np.square(wav, dtype=np.float64)) == pytest.approx(
                item["sum_sq"], rel=1e-6
            ), name


def test_mel_filters_are_slaney() -> None:
    for n_mels in (128, 80):
        filters = mel_filters(n_mels)
        assert filters.shape == (n_mels, 201) and filters.dtype == torch.float32
        # torchaudio builds the same bank in float32; ours is rounded once from float64.
        ta = AF.melscale_fbanks(201, 0.0, 8000.0, n_mels, 16000, norm="slaney", mel_scale="slaney")
        assert (filters - ta.T).abs().max() < 2e-7
    assert mel_filters(128) is mel_filters(128, "cpu")  # cached per (n_mels, device)


@pytest.mark.parametrize("name", SINGLES)
def test_single_items_match_reference(name: str) -> None:
    (wav,) = CASES[name]["wavs"]
    feats, frames = whisper_features(torch.from_numpy(wav).to(DEVICE))
    assert feats.shape == (1, 128, len(wav) // HOP) and feats.device.type == DEVICE
    assert frames.tolist() == [int(STORED[f"{name}.0.mask"].sum())] == [len(wav) // HOP]
    _check_item(feats[0], f"{name}.0")


@pytest.mark.parametrize("name", BATCHES)
def test_hf_batch_matches_reference_padded_batch(name: str) -> None:
    # Every frame of the reference's padded batch, padding included, and its attention mask.
    x, lengths = _batch(CASES[name]["wavs"])
    feats, frames = whisper_features(x.to(DEVICE), lengths, hf_batch=True)
    for b in range(len(lengths)):
        mask = STORED[f"{name}.{b}.mask"]
        assert frames[b].item() == mask.sum() and mask[: frames[b]].all(), (name, b)
        _check_item(feats[b], f"{name}.{b}")


def test_default_batch_gives_each_item_its_reference_alone() -> None:
    # pad = [weather, hello], pad_click = [click, tone]: each item as the reference gives it alone.
    for name, alone in (("pad", ["weather", "hello"]), ("pad_click", ["click", None])):
        x, lengths = _batch(CASES[name]["wavs"])
        feats, frames = whisper_features(x.to(DEVICE), lengths)
        assert frames.tolist() == (lengths // HOP).tolist()
        for b, single in enumerate(alone):
            key = f"{single}.0" if single else f"{name}.{b}"  # the longest item is never padded
            _check_item(feats[b, :, : frames[b]], key)


def test_reference_padding_quirks() -> None:
    # What the reference's padded batch does to a shorter item, pinned on the stored outputs,
    # and that hf_batch=False (the default) departs from it in exactly these ways.
    weather = META["weather"]["items"][0]
    in_batch = META["pad"]["items"][0]
    # (3) the mask counts ceil(36196 / 160) = 227 frames, alone 226 = 36196 // 160
    assert (in_batch["valid_frames"], weather["valid_frames"]) == (227, 226)
    # (1) 36196 % 160 = 36 < 40: the last valid frame sees 4 padding zeros, not reflected samples
    x, lengths = _batch(CASES["pad"]["wavs"])
    ours, _ = whisper_features(x, lengths)
    hf, _ = whisper_features(x, lengths, hf_batch=True)
    frame_diff = (ours[0] - hf[0]).abs().amax(dim=0)[:226]  # (226,)
    assert frame_diff[:225].max() == 0 and 1e-6 < frame_diff[225] < 1e-3
    # (2) the clamp max spans the padded row: frames past the click item's 50 valid frames see
    # its click, so its floor in the batch is far above its floor alone.
    click, click_in_batch = META["click"]["items"][0], META["pad_click"]["items"][0]
    assert click_in_batch["row_max"] > click_in_batch["valid_max"] > click["row_max"] + 3
    x, lengths = _batch(CASES["pad_click"]["wavs"])
    ours, _ = whisper_features(x, lengths)
    hf, _ = whisper_features(x, lengths, hf_batch=True)
    assert 4 * ours[0].max() - 4 == pytest.approx(click["row_max"], abs=TOL)
    assert 4 * hf[0].max() - 4 == pytest.approx(click_in_batch["row_max"], abs=TOL)


@pytest.mark.parametrize("name", SINGLES)
def test_clamp_floor_is_reference_max_minus_8(name: str) -> None:
    (wav,) = CASES[name]["wavs"]
    floor = clamp_floor(log_mel(torch.from_numpy(wav)))
    assert floor.item() + 8 == pytest.approx(META[name]["items"][0]["row_max"], abs=TOL)


@pytest.mark.parametrize("n", [0, 1, 159, 160, 200, 201, 399, 400, 4800, 16000, 16159, 16160])
def test_frame_count_is_n_over_hop(n: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    feats, frames = whisper_features(x)
    assert feats.shape == (1, 128, n // HOP) and frames.tolist() == [n // HOP]
    assert log_mel(x, n_mels=80).shape == (1, 80, n // HOP)
    assert torch.isfinite(feats).all()


def test_prefix_frames_are_final() -> None:
    # Frame t reads samples (160t - 200, 160t + 200): a prefix of n samples already has its final
    # value for every frame but, when n % 160 < 40, the last one. Equal up to float32 rounding:
    # the FFT part is bitwise the same, the mel matmul may round differently with the frame count.
    x = 0.1 * torch.randn(6000, generator=torch.Generator().manual_seed(0))
    whole = log_mel(x)  # (1, 128, 37)
    for n in [*range(200, 6000, 97), 320, 360, 399, 400, 480, 5920]:
        prefix = log_mel(x[:n])
        k = final_frames(n)
        assert prefix.shape[2] == n // HOP and k == n // HOP - (n % HOP < 40)
        assert (prefix[..., :k] - whole[..., :k]).abs().max() <= 1e-6, n
        if n % HOP <= 20:  # the last frame's window runs 20+ samples past the cut: it moves
            assert (prefix[..., k] - whole[..., k]).abs().max() > 1e-5, n
    # A batch of prefixes, each padded at its own end, gives each prefix's frames.
    lengths = torch.tensor([6000, 4321, 250])
    rows = log_mel(x.expand(3, -1), lengths)
    for b, n in enumerate(lengths.tolist()):
        alone = log_mel(x[:n])
        assert (rows[b : b + 1, :, : n // HOP] - alone).abs().max() <= 1e-6


def test_clamp_floor_rises_with_louder_frame() -> None:
    # The burst case: the floor before the burst is far below the floor after it, in the
    # reference as here, so every earlier frame that sat on the old floor moves.
    (burst,) = CASES["burst"]["wavs"]
    before = META["burst_prefix"]["items"][0]["row_max"]
    after = META["burst"]["items"][0]["row_max"]
    assert after > before + 4
    n = GOLDEN.BURST_PREFIX
    whole = log_mel(torch.from_numpy(burst))  # (1, 128, 150)
    floor_before = clamp_floor(whole, torch.tensor([n // HOP]))
    floor_after = clamp_floor(whole)
    assert floor_before.item() + 8 == pytest.approx(before, abs=TOL)
    assert floor_after.item() + 8 == pytest.approx(after, abs=TOL)
    moved = (
        normalize(whole, floor=floor_after)[..., : n // HOP]
        != normalize(whole, floor=floor_before)[..., : n // HOP]
    )
    assert moved.all()  # the noise before the burst sits below the new floor
    # A quieter frame appended moves nothing; a louder one raises the floor.
    quiet = log_mel(torch.cat([torch.from_numpy(burst), torch.zeros(1600)]))
    assert clamp_floor(quiet).item() == pytest.approx(floor_after.item(), abs=1e-6)
    loud = log_mel(torch.cat([torch.from_numpy(burst), torch.full((1600,), 0.9)]))
    assert clamp_floor(loud).item() > floor_after.item() + 0.5


def test_batched_equals_one_by_one() -> None:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([16000, 4801, 12345, 9999, 230])
    x = 0.2 * torch.randn(len(lengths), 16000, generator=gen)
    x[1, 2000:2400] *= 20  # one loud item, so floors differ across the batch
    noisy_padding = x.clone()  # what lies past each length must not matter
    x[torch.arange(16000)[None] >= lengths[:, None]] = 0.0
    feats, frames = whisper_features(x, lengths)
    assert torch.equal(feats, whisper_features(noisy_padding, lengths)[0])
    for b, n in enumerate(lengths.tolist()):
        alone, alone_frames = whisper_features(x[b, :n])
        assert frames[b] == alone_frames[0] == n // HOP
        assert (feats[b, :, : n // HOP] - alone[0]).abs().max() <= 1e-6, b
        # padding frames hold the item's floor: what silence gives
        silence = feats[b, :, : n // HOP].amax() - 2 if n >= HOP else -3.5  # (m - 8 + 4) / 4
        padding = feats[b, :, n // HOP :]
        assert padding.numel() == 0 or (padding - silence).abs().max() <= 1e-6, b


def test_runs_on_device() -> None:
    # cuda when there is one, else cpu; the same features as on the cpu.
    (wav,) = CASES["hello"]["wavs"]
    x, lengths = _batch([wav[:20000], wav])
    on_cpu, _ = whisper_features(x, lengths)
    there, frames = whisper_features(x.to(DEVICE), lengths.to(DEVICE))
    assert there.device.type == DEVICE and there.dtype == torch.float32
    assert frames.device.type == DEVICE
    assert (there.cpu() - on_cpu).abs().max() <= TOL
    assert mel_filters(128, DEVICE).device.type == DEVICE
