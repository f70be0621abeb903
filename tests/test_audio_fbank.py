"""FunASR fbank + LFR + CMVN front end (audio/fbank.py): parity with funasr's WavFrontend and
WavFrontendOnline (the committed golden outputs of tests/fixtures/make_paraformer_golden.py), LFR
shapes and padding, am.mvn parsing, batch invariance, and incremental == one-shot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi
from safetensors.numpy import load_file

from audio.fbank import (
    FEAT_DIM,
    FRAME_SHIFT,
    StreamingWavFrontend,
    WavFrontend,
    cmvn,
    fbank,
    frames_for_samples,
    lfr,
    lfr_frames,
    num_frames,
    read_mvn,
    stable_lfr_frames,
)
from tests.tiny_models import paraformer_am_mvn_text, paraformer_audio, paraformer_cmvn

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "paraformer"
GOLDEN = json.loads((GOLDEN_DIR / "golden.json").read_text(encoding="utf-8"))
STORED = load_file(str(GOLDEN_DIR / "golden.safetensors"))
FEATURE_CLIPS = list(GOLDEN["features"])
TOL = 1e-4  # the parity target; measured on CPU: 0 (bitwise) for every stored value
STREAM_TOL = 1e-6  # incremental vs one-shot, arbitrary cuts (see test_incremental_...)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def am_mvn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("paraformer") / "am.mvn"
    path.write_text(paraformer_am_mvn_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def frontend(am_mvn: Path) -> WavFrontend:
    return WavFrontend.from_mvn_file(am_mvn)


def stages(frontend: WavFrontend, wav: np.ndarray) -> dict[str, torch.Tensor]:
    """Our fbank, LFR and CMVN outputs of one clip, as (T, D) tensors."""
    x = torch.from_numpy(wav)
    feats, frames = fbank(x)
    if len(wav) < 400:  # FunASR's offline one-frame quirk; WavFrontend applies it
        feats = kaldi.fbank(
            x[None] * 32768,
            num_mel_bins=80,
            frame_length=len(wav) / 16,
            frame_shift=10,
            dither=0.0,
            energy_floor=0.0,
            window_type="hamming",
            sample_frequency=16000,
        )[None]
        frames = torch.tensor([1])
    stacked, _ = lfr(feats, frames)
    final, _ = frontend(x)
    assert torch.equal(final, cmvn(stacked, frontend.shift, frontend.scale))
    return {"fbank": feats[0], "lfr": stacked[0], "cmvn": final[0]}


def check_stage(x: torch.Tensor, entry: dict, key: str) -> float:
    """x against a stored stage (rows, per-frame and per-dimension means, float64 sums);
    returns the largest difference seen."""
    assert list(x.shape) == entry["shape"], key
    worst = float(np.abs(x[entry["rows"]].numpy() - STORED[f"{key}/rows"]).max())
    frame_mean = x.double().mean(1).float().numpy()
    worst = max(worst, float(np.abs(frame_mean - STORED[f"{key}/frame_mean"]).max()))
    if f"{key}/dim_mean" in STORED:
        dim_mean = x.double().mean(0).float().numpy()
        worst = max(worst, float(np.abs(dim_mean - STORED[f"{key}/dim_mean"]).max()))
    assert worst <= TOL, (key, worst)
    assert float(x.double().sum()) == pytest.approx(entry["sum"], rel=1e-6, abs=1e-3), key
    assert float(x.double().square().sum()) == pytest.approx(entry["sum_sq"], rel=1e-6), key
    return worst


def test_golden_records_the_reference_setup() -> None:
    versions = GOLDEN["versions"]
    assert versions["funasr"] == "1.4.16" and versions["fbank_backend"] == "torchaudio"
    assert versions["torch"].startswith("2.11.0")
    config = GOLDEN["checkpoints"]["offline"]["config"]["frontend_conf"]
    assert config["dither"] == 0.0 and (config["lfr_m"], config["lfr_n"]) == (7, 6)
    assert config["n_mels"] == 80 and config["window"] == "hamming"


@pytest.mark.parametrize("clip", FEATURE_CLIPS)
def test_stages_match_funasr_wavfrontend(frontend: WavFrontend, clip: str) -> None:
    entry = GOLDEN["features"][clip]
    wav = paraformer_audio(clip)
    assert len(wav) == entry["samples"]
    assert float(np.sum(wav, dtype=np.float64)) == pytest.approx(entry["audio_sum"], abs=1e-4)
    ours = stages(frontend, wav)
    for stage in ("fbank", "lfr", "cmvn"):
        check_stage(ours[stage], entry[stage], f"features/{clip}/{stage}")
    assert frames_for_samples(len(wav)) == (entry["fbank_frames"], entry["lfr_frames"])


def test_frame_counts_include_a_non_multiple_of_six() -> None:
    counts = {clip: GOLDEN["features"][clip]["fbank_frames"] for clip in FEATURE_CLIPS}
    assert counts["hello"] % 6 == 0 and counts["weather"] % 6 == 2 and counts["tiny"] == 1
    for clip, t in counts.items():
        n = GOLDEN["features"][clip]["samples"]
        assert t == (num_frames(n) or 1), clip
        assert GOLDEN["features"][clip]["lfr_frames"] == lfr_frames(t) == -(-t // 6)


def test_fbank_is_torchaudio_kaldi_bitwise() -> None:
    x = torch.from_numpy(paraformer_audio("weather"))
    ref = kaldi.fbank(
        x[None] * 32768,
        num_mel_bins=80,
        frame_length=25,
        frame_shift=10,
        dither=0.0,
        energy_floor=0.0,
        window_type="hamming",
        sample_frequency=16000,
        snip_edges=True,
    )
    ours, frames = fbank(x)
    assert frames.tolist() == [len(ref)] and torch.equal(ours[0], ref)


@pytest.mark.parametrize("n", [0, 1, 399, 400, 401, 559, 560, 4800, 9600])
def test_num_frames_is_snip_edges(n: int) -> None:
    x = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(n))
    feats, frames = fbank(x)
    assert feats.shape == (1, num_frames(n), 80) and frames.tolist() == [num_frames(n)]
    assert num_frames(n) == (0 if n < 400 else 1 + (n - 400) // 160)


def test_lfr_indices_and_padding() -> None:
    # Frame i holds the value i: LFR row j must hold frames clamp(6j - 3 + k, 0, T - 1).
    for t in range(1, 20):
        feats = torch.arange(t, dtype=torch.float32)[None, :, None]  # (1, T, 1)
        out, frames = lfr(feats)
        assert out.shape == (1, -(-t // 6), 7) and frames.tolist() == [-(-t // 6)]
        for j in range(out.shape[1]):
            want = [min(max(6 * j - 3 + k, 0), t - 1) for k in range(7)]
            assert out[0, j].tolist() == want, (t, j)
    # The 80-dim layout is frame-major: row j = [frame(6j-3), ..., frame(6j+3)].
    feats = torch.randn(1, 13, 80, generator=torch.Generator().manual_seed(0))
    out, _ = lfr(feats)
    assert torch.equal(out[0, 1].reshape(7, 80), feats[0, 3:10])
    assert torch.equal(out[0, 0, :240].reshape(3, 80), feats[0, :1].expand(3, 80))
    assert torch.equal(out[0, 2, -3 * 80 :].reshape(3, 80), feats[0, 12:13].expand(3, 80))


def test_lfr_batch_pads_each_item_with_its_own_last_frame() -> None:
    feats = torch.randn(3, 20, 80, generator=torch.Generator().manual_seed(1))
    frames = torch.tensor([20, 13, 0])
    out, out_frames = lfr(feats, frames)
    assert out.shape == (3, 4, 560) and out_frames.tolist() == [4, 3, 0]
    for b, t in enumerate(frames.tolist()):
        alone, _ = lfr(feats[b : b + 1, :t])
        assert torch.equal(out[b, : alone.shape[1]], alone[0])
        assert not out[b, alone.shape[1] :].any()


def test_read_mvn(am_mvn: Path, tmp_path: Path) -> None:
    shift, scale = read_mvn(am_mvn)
    assert shift.shape == scale.shape == (FEAT_DIM,) and shift.dtype == torch.float32
    ref_shift, ref_scale = paraformer_cmvn()
    assert torch.equal(shift, torch.tensor(ref_shift, dtype=torch.float32))
    assert torch.equal(scale, torch.tensor(ref_scale, dtype=torch.float32))
    assert torch.equal(shift[:80], shift[80:160])  # tiled over the 7 LFR frames
    text = am_mvn.read_text(encoding="utf-8").splitlines()
    assert text[0] == "<Nnet>" and text[3] == "<AddShift> 560 560" and text[-1] == "</Nnet>"
    bad = tmp_path / "bad.mvn"
    bad.write_text("<Nnet>\n<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 2 ]\n</Nnet>\n")
    with pytest.raises(ValueError):
        read_mvn(bad)


def test_cmvn_is_add_then_scale() -> None:
    x = torch.randn(2, 5, 560, generator=torch.Generator().manual_seed(2))
    shift, scale = torch.randn(560), torch.rand(560)
    ref = x.clone()
    ref += shift  # FunASR's apply_cmvn, in place, float32
    ref *= scale
    assert torch.equal(cmvn(x, shift, scale), ref)


def test_batch_equals_one_by_one(frontend: WavFrontend) -> None:
    wavs = [paraformer_audio(c) for c in ("hello", "weather", "tone_short", "tiny")]
    wavs.append(np.zeros(0, dtype=np.float32))
    lengths = torch.tensor([len(w) for w in wavs])
    x = torch.randn(len(wavs), int(lengths.max()))  # what lies past a length must not matter
    for b, w in enumerate(wavs):
        x[b, : len(w)] = torch.from_numpy(w)
    feats, frames = frontend(x, lengths)
    for b, w in enumerate(wavs):
        alone, alone_frames = frontend(torch.from_numpy(w))
        n = int(frames[b])
        assert n == int(alone_frames[0]) == frames_for_samples(len(w))[1]
        assert torch.equal(feats[b, :n], alone[0]), b
        assert not feats[b, n:].any(), b


def feed(stream: StreamingWavFrontend, wav: np.ndarray, cuts: list[int]) -> list[torch.Tensor]:
    """Feeds wav cut at `cuts`, the last piece final; returns each call's output."""
    edges = [0, *cuts, len(wav)]
    outs = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        outs.append(stream.accept(torch.from_numpy(wav[a:b]), is_final=i == len(edges) - 2))
    return outs


@pytest.mark.parametrize("seed", range(6))
def test_incremental_equals_one_shot(frontend: WavFrontend, seed: int) -> None:
    # Any cuts: the same frames, equal up to the rounding of the mel product, which can differ
    # by an ulp when a call adds only a few frames (measured <= 4.8e-7 after CMVN).
    wav = paraformer_audio("speech_4s")[: 20000 + 7919 * seed]
    one_shot, _ = frontend(torch.from_numpy(wav))
    rng = np.random.RandomState(seed)
    cuts = sorted(set(rng.randint(0, len(wav), size=rng.randint(1, 30)).tolist()))
    stream = frontend.stream()
    outs = feed(stream, wav, cuts)
    assert (torch.cat(outs) - one_shot[0]).abs().max() <= STREAM_TOL
    assert stream.emitted == 0 and stream.pending_samples == 0  # reset after the final call


def test_600ms_calls_are_bitwise_one_shot(frontend: WavFrontend) -> None:
    # ParaformerStreaming's 9600-sample calls: 10 LFR frames each (7 in the 6400-sample last
    # one), bitwise the one-shot features, as FunASR's own online frontend is.
    wav = paraformer_audio("speech_4s")
    one_shot, _ = frontend(torch.from_numpy(wav))
    outs = feed(frontend.stream(), wav, list(range(9600, len(wav), 9600)))
    assert [len(o) for o in outs] == [10, 10, 10, 10, 10, 10, 7]
    assert torch.equal(torch.cat(outs), one_shot[0])


def test_non_final_calls_emit_only_stable_frames(frontend: WavFrontend) -> None:
    # After any non-final call, exactly stable_lfr_frames(fbank frames so far) are out, and
    # those equal the one-shot features; the one-shot pass on the prefix pads at most one more.
    wav = paraformer_audio("weather")
    whole, _ = frontend(torch.from_numpy(wav))
    stream, done = frontend.stream(), 0
    for end in range(500, len(wav), 1733):
        out = stream.accept(torch.from_numpy(wav[done:end]))
        done = end
        t = num_frames(end)
        assert stream.emitted == stable_lfr_frames(t)
        assert lfr_frames(t) - stable_lfr_frames(t) == (1 if t % 6 in (1, 2, 3) else 0)
        assert stream.pending_samples == end - t * FRAME_SHIFT
        if len(out):
            ref = whole[0, stream.emitted - len(out) : stream.emitted]
            assert (out - ref).abs().max() <= STREAM_TOL


def test_streaming_matches_funasr_online_frontend(frontend: WavFrontend) -> None:
    # ParaformerStreaming.inference: prev_samples + piece split into 9600-sample chunks, each
    # through WavFrontendOnline (the last with is_final), unless a final chunk has < 960
    # samples (tail_chunk: no frontend call). Frame counts and means per chunk, as recorded.
    for name, case in GOLDEN["streaming"].items():
        wav = paraformer_audio(case["audio"])[: case["samples"]]
        stream, start, prev = frontend.stream(), 0, np.zeros(0, np.float32)
        for i, call in enumerate(case["calls"]):
            audio = np.concatenate([prev, wav[start : start + call["samples"]]])
            start += call["samples"]
            n = len(audio) // 9600 + int(call["is_final"])
            for j, step in zip(range(n), call["steps"], strict=True):
                piece = audio[j * 9600 : (j + 1) * 9600]
                final = call["is_final"] and j == n - 1
                if step["frontend_frames"] is None:
                    assert final and len(piece) < 960 and step["tail_chunk"]
                    continue
                out = stream.accept(torch.from_numpy(piece), is_final=final)
                assert len(out) == step["frontend_frames"], (name, i, j)
                key = f"streaming/{name}/call{i}/step{j}/frontend_frame_mean"
                mean = out.double().mean(1).float().numpy()
                assert np.abs(mean - STORED[key]).max() <= TOL, (name, i, j)
                assert float(out.double().sum()) == pytest.approx(step["frontend"]["sum"], rel=1e-6)
            prev = audio[n * 9600 :] if not call["is_final"] else np.zeros(0, np.float32)
        assert case["max_abs_online_minus_offline_features"] == 0.0


def test_short_streams() -> None:
    fe = WavFrontend()
    stream = fe.stream()
    assert stream.accept(torch.zeros(399)).shape == (0, 560)
    assert stream.pending_samples == 399 and stream.pending_frames == 0
    assert stream.accept(torch.zeros(0), is_final=True).shape == (0, 560)  # never a frame
    out = stream.accept(0.1 * torch.randn(400), is_final=True)  # one frame: one LFR frame
    assert out.shape == (1, 560)
    assert [stable_lfr_frames(t) for t in range(12)] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2]


def test_runs_on_device(frontend: WavFrontend) -> None:
    wav = torch.from_numpy(paraformer_audio("hello"))
    x = torch.stack([wav, torch.roll(wav, 1000)])
    on_cpu, frames = frontend(x)
    fe = WavFrontend(frontend.shift.to(DEVICE), frontend.scale.to(DEVICE))
    there, there_frames = fe(x.to(DEVICE))
    assert there.device.type == DEVICE and there.dtype == torch.float32
    assert torch.equal(there_frames.cpu(), frames)
    assert (there.cpu() - on_cpu).abs().max() <= TOL
    stream = fe.stream()
    outs = [stream.accept(c, is_final=i == 3) for i, c in enumerate(x[0].to(DEVICE).chunk(4))]
    assert (torch.cat(outs).cpu() - on_cpu[0]).abs().max() <= TOL
