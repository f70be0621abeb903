"""Whisper log-mel front end: 16 kHz float32 waveforms -> (B, n_mels, T) features, batched.

The recipe of Hugging Face's WhisperFeatureExtractor as Qwen3-ASR uses it (128 mels, no dither):
periodic Hann-400 STFT every 160 samples (center=True, reflect padding), power spectrum, the last
frame dropped (T = N // 160), Slaney mel filterbank over 0..8000 Hz, log10(clamp(min=1e-10)),
then the dynamic-range step max(x, m - 8) with m the utterance's largest value, and (x + 4) / 4.

It is split in two so a streaming caller can cache work:
- `log_mel` is the unclamped log-mel. Frame t is a function of samples (160t - 200, 160t + 200)
  only (reflected about sample 0 near the start), so once a stream holds 160t + 200 samples,
  frame t never changes again: `final_frames(n)` counts those frames. Of the n // 160 frames
  of a prefix of n samples, only the last one may still change, and only when n % 160 < 40.
  (Equal up to float32 rounding: the FFT part is bitwise the same for any signal length, but
  the mel product may round differently with the frame count, by up to ~3e-7.)
- `normalize` is the whole-utterance step. Its floor `clamp_floor` = m - 8 moves up when a louder
  frame arrives, and then every earlier frame below the new floor changes.

Batches: each row of x is an utterance of `lengths[b]` samples, padded to the row length with
anything. By default every item gets exactly what the reference gives it alone (batch
invariance). `hf_batch=True` instead reproduces the reference's own padded batch, quirks
included (see `whisper_features`).

All math is float32, on the input's device. On CUDA, cuFFT rounds differently from the CPU
(measured on an H200: within 2e-5 of the reference); a process that enables TF32 matmuls would
also run the mel product in TF32, which costs about 1e-3 relative.
"""

import functools
import math

import torch
from torch import Tensor

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP = 160  # 10 ms hop
N_MELS = 128  # Qwen3-ASR; Whisper v1/v2 use 80
N_FREQS = N_FFT // 2 + 1  # 201
PAD = N_FFT // 2  # center=True: frame t is centred on sample 160t
LOG_SILENCE = -10.0  # log10 of the 1e-10 clamp: the smallest value log_mel can produce
DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum (80 dB)


@functools.lru_cache(maxsize=16)
def _mel_filters(n_mels: int, device: torch.device) -> Tensor:
    # Built in float64 and rounded once, as the reference builds its filters in numpy float64:
    # torchaudio's melscale_fbanks (float32 throughout) is off by up to 1.6e-7 here.
    def hz_to_mel(f: Tensor) -> Tensor:  # Slaney: linear below 1 kHz, logarithmic above
        return torch.where(
            f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * torch.log(f / 1000.0) / math.log(6.4)
        )

    def mel_to_hz(m: Tensor) -> Tensor:
        return torch.where(
            m < 15.0, 200.0 * m / 3.0, 1000.0 * torch.exp(math.log(6.4) * (m - 15.0) / 27.0)
        )

    f64 = torch.float64
    edges = hz_to_mel(torch.tensor([0.0, SAMPLE_RATE / 2], dtype=f64))
    f_pts = mel_to_hz(torch.linspace(edges[0].item(), edges[1].item(), n_mels + 2, dtype=f64))
    freqs = torch.linspace(0.0, SAMPLE_RATE / 2, N_FREQS, dtype=f64)  # (201,)
    lo, mid, hi = f_pts[:-2, None], f_pts[1:-1, None], f_pts[2:, None]  # (n_mels, 1)
    rising = (freqs - lo) / (mid - lo)  # (n_mels, 201)
    falling = (hi - freqs) / (hi - mid)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters = filters * (2.0 / (hi - lo))  # Slaney norm: each triangle has unit area in Hz
    return filters.to(device=device, dtype=torch.float32)


def mel_filters(n_mels: int = N_MELS, device: torch.device | str = "cpu") -> Tensor:
    """Slaney mel filterbank (Slaney scale and norm, 0..8000 Hz), float32 (n_mels, 201); cached
    per (n_mels, device), so treat it as read-only."""
    return _mel_filters(n_mels, torch.device(device))


@functools.lru_cache(maxsize=8)
def _hann(device: torch.device) -> Tensor:
    return torch.hann_window(N_FFT, periodic=True, device=device)  # (400,)


def final_frames(n_samples: int) -> int:
    """How many leading frames of `log_mel` of an n-sample prefix no later sample can change:
    frame t needs samples up to 160t + 199. It is n // 160 or one less (when n % 160 < 40)."""
    return max(0, (n_samples - PAD) // HOP + 1)


def as_batch(x: Tensor) -> Tensor:
    """A waveform as a float32 (B, N) batch."""
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise ValueError(f"expected a (N,) or (B, N) waveform, got shape {tuple(x.shape)}")
    return x.float()


def _pad(x: Tensor, lengths: Tensor) -> Tensor:
    """Reflect-pads every row about its own first and last valid sample, as center=True does to
    a signal on its own; zeros past the reflected tail. (B, N) -> (B, N + 400)."""
    n = x.shape[1]
    if n == 0:  # nothing to gather from
        return x.new_zeros(x.shape[0], 2 * PAD)
    j = torch.arange(-PAD, n + PAD, device=x.device)  # (N + 400,) original sample index
    last = (lengths - 1).clamp(min=0)[:, None]  # (B, 1)
    src = j.abs()[None]  # (1, N + 400) reflect about sample 0
    src = torch.where(src > last, 2 * last - src, src)  # reflect about the last valid sample
    # torch's reflect padding needs more than 200 samples; shorter items (which the reference
    # rejects) get a clamped index instead of an error, so one short item cannot fail a batch.
    src = src.clamp(min=0).minimum(last)  # (B, N + 400)
    keep = (j[None] < lengths[:, None] + PAD) & (lengths[:, None] > 0)
    return torch.where(keep, x.gather(1, src), 0.0)


def _log_mel_padded(padded: Tensor, n_mels: int) -> Tensor:
    """(B, N + 400) already padded -> (B, n_mels, N // 160) unclamped log10 mel power."""
    window = _hann(padded.device)
    spec = torch.stft(padded, N_FFT, HOP, window=window, center=False, return_complex=True)
    power = spec[..., :-1].abs() ** 2  # (B, 201, T): Whisper drops the frame centred on sample N
    mel = mel_filters(n_mels, padded.device) @ power  # (B, n_mels, T)
    return torch.clamp(mel, min=1e-10).log10()


def _lengths(lengths: Tensor | None, x: Tensor) -> Tensor:
    if lengths is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    lengths = torch.as_tensor(lengths).long()  # checked where it lives: usually the host
    if lengths.shape != (x.shape[0],) or bool((lengths < 0).any() | (lengths > x.shape[1]).any()):
        raise ValueError(f"lengths must be (B,) = ({x.shape[0]},) and within 0..{x.shape[1]}")
    return lengths.to(x.device)


def log_mel(x: Tensor, lengths: Tensor | None = None, n_mels: int = N_MELS) -> Tensor:
    """Unclamped Whisper log-mel. x: (B, N) or (N,) waveform at 16 kHz; lengths: (B,) valid
    samples per row (default N), each row padded at its own end as if alone. Returns float32
    (B, n_mels, N // 160); frames at or past lengths // 160 are padding (mask them)."""
    x = as_batch(x)
    lengths = _lengths(lengths, x)
    return _log_mel_padded(_pad(x, lengths), n_mels)


def _prefix_mask(lengths: Tensor, n: int) -> Tensor:
    return torch.arange(n, device=lengths.device)[None] < lengths[:, None]  # (B, n)


def clamp_floor(logmel: Tensor, lengths: Tensor | None = None) -> Tensor:
    """m - 8 per utterance, m the largest value over its first lengths[b] frames (default all).
    logmel: (B, n_mels, T) from `log_mel`; lengths: (B,) valid frames. Returns (B,). An item
    with no frames gets the floor of silence, -18."""
    b, _, t = logmel.shape
    if t == 0:  # amax has nothing to reduce
        return torch.full((b,), LOG_SILENCE - DYNAMIC_RANGE, device=logmel.device)
    if lengths is None:
        peak = logmel.amax(dim=(1, 2))
    else:
        valid = _prefix_mask(torch.as_tensor(lengths, device=logmel.device), t)  # (B, T)
        peak = torch.where(valid[:, None], logmel, LOG_SILENCE).amax(dim=(1, 2))
    return peak.reshape(b) - DYNAMIC_RANGE


def normalize(logmel: Tensor, lengths: Tensor | None = None, floor: Tensor | None = None) -> Tensor:
    """Whisper's dynamic-range step: max(x, floor) then (x + 4) / 4, every frame of the row.
    floor: (B,), default clamp_floor(logmel, lengths); lengths: (B,) valid frames.
    (B, n_mels, T) -> (B, n_mels, T)."""
    if floor is None:
        floor = clamp_floor(logmel, lengths)
    return (torch.maximum(logmel, floor[:, None, None]) + 4.0) / 4.0


def whisper_features(
    x: Tensor, lengths: Tensor | None = None, n_mels: int = N_MELS, hf_batch: bool = False
) -> tuple[Tensor, Tensor]:
    """Whisper input features. x: (B, N) or (N,) waveform in [-1, 1] at 16 kHz, any device;
    lengths: (B,) valid samples per row (default N; samples past them are ignored).
    Returns float32 features (B, n_mels, N // 160) and valid frames (B,), int64.

    Default: every item is what WhisperFeatureExtractor gives it alone (valid frames
    lengths // 160, reflect padding at its own end, clamp max over its valid frames), so an
    item's features do not depend on its batch mates. Padding frames hold the item's floor,
    (m - 8 + 4) / 4, which is what silence gives.

    hf_batch=True reproduces the reference's padded batch (padding=True, zeros to the longest
    item), every frame, padding included. There, an item shorter than the row differs from
    the same item alone in three ways: (1) its last valid frame sees zeros instead of reflected
    samples when lengths % 160 < 40; (2) the clamp max runs over the whole padded row, so the
    (normally dropped) frames just past its end, which still see its last 200 samples, count;
    (3) its attention mask counts ceil(lengths / 160) frames, one more than alone whenever
    lengths % 160 != 0 (capped at the row's N // 160); `frames` returns that count."""
    x = as_batch(x)
    lengths = _lengths(lengths, x)
    n_frames = x.shape[1] // HOP
    if hf_batch:
        x = torch.where(_prefix_mask(lengths, x.shape[1]), x, 0.0)  # the reference pads with 0.0
        logmel = log_mel(x, n_mels=n_mels)  # (B, n_mels, T), reflect only at the row's end
        # Over the whole row: frames wholly in the padding are log10(1e-10) = -10, the minimum,
        # so only the frames that overlap the item can matter, as in the reference.
        frames = torch.clamp((lengths + HOP - 1) // HOP, max=n_frames)
        return normalize(logmel), frames
    logmel = log_mel(x, lengths, n_mels)
    frames = lengths // HOP
    floor = clamp_floor(logmel, frames)
    feats = normalize(logmel, floor=floor)
    valid = _prefix_mask(frames, n_frames)[:, None]  # (B, 1, T)
    return torch.where(valid, feats, (floor[:, None, None] + 4.0) / 4.0), frames
