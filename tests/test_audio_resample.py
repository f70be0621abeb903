"""audio.resample: the streaming resampler equals the one-shot one for any chunking."""

import math

import numpy as np
import pytest
import torch
import torchaudio.functional.functional as taf
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.resample import StreamResampler, resample, sinc_kernel

RATES = [8000, 16000, 22050, 24000, 44100, 48000]


def stream(r: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Feed x in chunks of the given sizes (cycled), then flush."""
    outs, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        outs.append(r.process(x[i : i + n]))
        i, k = i + n, k + 1
    outs.append(r.flush())
    return np.concatenate(outs)


@pytest.mark.parametrize("src", [*RATES, 11025, 32000, 7])
def test_kernel_is_torchaudios(src):
    g = math.gcd(src, 16000)
    ours, width = sinc_kernel(src // g, 16000 // g)
    theirs, their_width = taf._get_sinc_resample_kernel(src, 16000, g, dtype=torch.float32)
    assert width == their_width
    assert torch.equal(ours, theirs)


@settings(max_examples=60, deadline=None)
@given(
    src=st.sampled_from([*RATES, 11025, 12000, 96000]),
    dst=st.sampled_from([16000, 16000, 8000, 48000]),
    length=st.integers(0, 4000),
    sizes=st.lists(st.integers(0, 1500) | st.sampled_from([0, 1, 2]), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_stream_equals_one_shot_for_any_chunking(src, dst, length, sizes, seed):
    if not any(sizes):
        sizes = [*sizes, 1]
    x = np.random.default_rng(seed).uniform(-1, 1, length).astype(np.float32)
    expected = resample(x, src, dst)
    got = stream(StreamResampler(src, dst), x, sizes)
    assert got.dtype == np.float32
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("src", RATES)
def test_tone_survives_and_length(src):
    seconds = 0.5
    t = np.arange(int(src * seconds)) / src
    x = (0.6 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = resample(x, src, 16000)
    assert len(y) == math.ceil(len(x) * 16000 / src)
    middle = y[2000:-2000]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    assert abs(np.argmax(spectrum) * 16000 / len(middle) - 440) < 8
    assert abs(np.abs(middle).max() - 0.6) < 0.01


def test_above_nyquist_is_removed():
    t = np.arange(48000) / 48000
    x = (0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)  # above 8 kHz
    y = stream(StreamResampler(48000, 16000), x, [960])
    assert np.abs(y[1000:-1000]).max() < 0.01


def test_identity_when_rates_equal():
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    r = StreamResampler(16000, 16000)
    y = r.process(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    assert len(r.flush()) == 0
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)


def test_state_stays_bounded_and_flush_restarts():
    x = np.random.default_rng(1).uniform(-1, 1, 44100 * 3).astype(np.float32)
    r = StreamResampler(44100, 16000)
    first = []
    for i in range(0, len(x), 441):
        first.append(r.process(x[i : i + 441]))
        # only the left context of the next output frame is kept, whatever the stream length
        assert len(r._buf) <= r._taps + 441
    first.append(r.flush())
    second = stream(r, x, [441])  # after flush the same resampler starts a fresh stream
    np.testing.assert_array_equal(np.concatenate(first), second)


def test_rejects_multichannel():
    with pytest.raises(ValueError, match="mono"):
        StreamResampler(48000, 16000).process(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((100, 2), np.float32), 48000, 16000)


def test_bad_rates():
    for src, dst in [(0, 16000), (16000, -1), (44100.5, 16000)]:
        with pytest.raises(ValueError):
            StreamResampler(src, dst)
        with pytest.raises(ValueError):
            resample(np.zeros(10, np.float32), src, dst)
