"""The AuT encoder's graph path (engine/encoder_graphs.py) on its static buffers, eagerly: the
numbers a replay computes equal the eager encoder's, whatever the bucket and its padding.
The replays themselves are checked on CUDA (tests/gpu/test_cuda_asr.py)."""

from __future__ import annotations

import pytest
import torch

from engine.asr import build_qwen3_asr
from engine.config import EngineConfig
from engine.encoder_graphs import EncoderGraphs, window_buckets
from tests.test_asr_streaming import CPU, long_audio, traced_stream
from tests.tiny_models import build_qwen3_asr as build_checkpoint


def test_window_buckets():
    assert window_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert window_buckets(6) == [1, 2, 4, 6]


def test_padded_buckets_give_the_eager_encoders_numbers(tmp_path):
    model, _ = build_qwen3_asr(build_checkpoint(tmp_path / "m", seed=0), EngineConfig(device="cpu"))
    encoder = model.encoder
    graphs = EncoderGraphs(encoder, torch.float32, max_windows=4, capture=False)
    frames = graphs.frames
    g = torch.Generator().manual_seed(0)
    n_mels = encoder.config.num_mel_bins
    # five windows: a bucket of 4, then one of 1; then three shorter ones in the 4-row buffers
    # that the longer windows filled before (their tails must read as zeros again)
    for lengths in ([frames, 350, 120, frames, 37], [frames // 2, 1, 99]):
        windows = [torch.randn(n_mels, n, generator=g) for n in lengths]
        with torch.inference_mode():
            got = graphs.run(windows)
            want = encoder.encode_windows(windows)
        assert [t.shape for t in got] == [t.shape for t in want]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert graphs.takes([torch.zeros(n_mels, frames)])
    assert not graphs.takes([torch.zeros(n_mels, frames + 1)])
    assert not graphs.takes([torch.zeros(n_mels, 0)])


@pytest.mark.anyio
async def test_a_stream_through_the_graph_path_transcribes_as_the_eager_encoder(tmp_path):
    path = build_checkpoint(tmp_path / "s", seed=0)
    audio = long_audio(12.0, burst_at=9.0)

    def buffers(worker) -> None:  # the static buffers, run eagerly: CPU has no CUDA graphs
        worker.encoder_graphs = EncoderGraphs(
            worker.model.encoder, torch.float32, max_windows=2, capture=False
        )

    eager, _ = await traced_stream(path, audio, 11 * 16000, **CPU)
    graphed, worker = await traced_stream(path, audio, 11 * 16000, buffers, **CPU)
    assert worker.encoder_graphs.calls >= len(graphed) - 1  # (not the final's, if cached)
    steps = lambda trace: [(t.encoder_tokens, t.generated_ids) for t in trace]  # noqa: E731
    assert steps(eager) == steps(graphed)
