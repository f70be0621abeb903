"""Sample-rate conversion to the engine's rate: one-shot and streaming, same filter, same output.

`resample` is torchaudio's band-limited sinc resampler (Hann window, 6 zero crossings, rolloff
0.99). `StreamResampler` is the same polyphase filter run on a stream: it keeps only the left
context the next output frame needs, so each chunk costs time proportional to its length, and
the concatenated output of any chunking equals `resample` of the whole signal.

The polyphase view (torchaudio's): with rates reduced by their gcd to `orig` -> `new`, output
frame j holds the `new` samples y[j*new : (j+1)*new], each a dot product of one row of the
kernel (new x taps, taps = 2*width + orig) with x[j*orig - width : j*orig - width + taps],
where x is zero before the first sample and after the last.
"""

import math
import operator

import numpy as np
import torch
import torchaudio.functional as AF

LOWPASS_FILTER_WIDTH = 6  # torchaudio's defaults, kept so both paths share one filter
ROLLOFF = 0.99


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole mono float32 signal."""
    _check_rates(src_rate, dst_rate)
    x = _mono(x)
    if src_rate == dst_rate:
        return x.copy()
    if len(x) == 0:  # torchaudio cannot reshape an empty signal
        return np.zeros(0, np.float32)
    return AF.resample(torch.from_numpy(x), src_rate, dst_rate).numpy()


def sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """torchaudio's Hann-windowed sinc kernel for gcd-reduced rates, float32, shape
    (new, 1, 2*width + orig), and width; the same float32 operations in the same order, so
    the values are identical to `torchaudio.functional.functional._get_sinc_resample_kernel`."""
    dtype = torch.float32
    base_freq = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t *= math.pi
    scale = base_freq / orig
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel *= window * scale
    return kernel, width


class StreamResampler:
    """Streaming `resample`: `process` each chunk as it arrives, `flush` at the end of the
    stream (returns the tail and readies the resampler for a new stream)."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        _check_rates(src_rate, dst_rate)
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        g = math.gcd(src_rate, dst_rate)
        self._orig, self._new = src_rate // g, dst_rate // g
        self._kernel, self._width = sinc_kernel(self._orig, self._new)
        self._taps = self._kernel.shape[-1]
        self._reset()

    def _reset(self) -> None:
        # buf holds x[start:received]; it starts with `width` zeros, x[-width:0].
        self._buf = np.zeros(self._width, np.float32)
        self._start = -self._width
        self._received = 0
        self._frame = 0  # next output frame to compute
        self._emitted = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        x = _mono(chunk)
        if self._orig == self._new:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        self._received += len(x)
        # Frame j needs x up to index j*orig + width + orig - 1.
        ready = (self._received - self._width - self._orig) // self._orig + 1
        return self._run(ready)

    def flush(self) -> np.ndarray:
        if self._orig == self._new:
            return np.zeros(0, np.float32)
        length = self._received
        # ceil(new * length / orig) computed as torchaudio does: through a default-dtype (float32)
        # tensor, which on long signals can round a few samples off the end. Kept, so both paths
        # agree sample for sample.
        target = int(torch.ceil(torch.as_tensor(self._new * length / self._orig)))
        frames = length // self._orig + 1  # torchaudio's conv yields frames 0 .. length // orig
        end = (frames - 1) * self._orig + self._taps - self._width  # x index after the last tap
        pad = end - (self._start + len(self._buf))
        if pad > 0:
            self._buf = np.concatenate([self._buf, np.zeros(pad, np.float32)])
        emitted = self._emitted
        y = self._run(frames)[: max(target - emitted, 0)]
        self._reset()
        return y

    def _run(self, stop: int) -> np.ndarray:
        """Compute frames self._frame .. stop-1 and drop input no later frame needs."""
        count = stop - self._frame
        if count <= 0:
            return np.zeros(0, np.float32)
        lo = self._frame * self._orig - self._width - self._start
        hi = lo + (count - 1) * self._orig + self._taps
        seg = torch.from_numpy(self._buf[lo:hi])[None, None]
        y = torch.nn.functional.conv1d(seg, self._kernel, stride=self._orig)  # (1, new, count)
        y = y[0].T.reshape(-1).numpy()
        self._frame = stop
        keep = self._frame * self._orig - self._width - self._start
        self._buf = self._buf[keep:].copy()
        self._start += keep
        self._emitted += len(y)
        return y


def _mono(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {x.shape}")
    return x


def _check_rates(src_rate: int, dst_rate: int) -> None:
    for r in (src_rate, dst_rate):
        try:
            ok = operator.index(r) > 0  # ints (numpy's too), not floats
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"sample rates must be positive integers, got {src_rate}, {dst_rate}")
