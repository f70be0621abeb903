"""Kaldi fbank + LFR + CMVN: the front end of FunASR's Paraformer family, batched.

The math of FunASR's `WavFrontend` (funasr 1.4.16, frontends/wav_frontend.py) with the released
configs (80 mels, 25 ms / 10 ms, Hamming, LFR m=7 n=6, am.mvn CMVN, dither 0):

1. `fbank`: `torchaudio.compliance.kaldi.fbank(waveform * 32768, num_mel_bins=80,
   frame_length=25, frame_shift=10, dither=0, energy_floor=0, window_type='hamming',
   sample_frequency=16000, snip_edges=True)`: frame t covers samples [160t, 160t + 400); per
   frame remove the DC offset, pre-emphasis 0.97 (the first sample against itself), Hamming
   window, zero-pad to 512, power spectrum, Kaldi mel banks (20 Hz .. 8 kHz), log (floored at
   float32 eps). T = 1 + (N - 400) // 160 frames, none when N < 400. Vectorised here over a
   batch, and bitwise the same as torchaudio's per item on CPU (tests/test_audio_fbank.py).
2. `lfr`: low frame rate. LFR frame j stacks fbank frames 6j - 3 .. 6j + 3, clamped to
   [0, T - 1] (FunASR left-pads 3 copies of frame 0 and right-pads with the last frame), so
   (T, 80) -> (ceil(T / 6), 560), frame-major (row j = [f(6j-3), ..., f(6j+3)]).
3. `cmvn`: (x + AddShift) * Rescale, the two 560-vectors of am.mvn (`read_mvn`).

FunASR's offline WavFrontend has one more quirk, kept by `WavFrontend.__call__`: an item shorter
than one 400-sample window gets one frame over all its samples (frame_length = n / 16 ms, FFT
size the next power of two), where plain snip_edges would give none.

Streaming (`StreamingWavFrontend`) mirrors FunASR's `WavFrontendOnline`, which
ParaformerStreaming uses. Its cache semantics, and why chunked features equal one-shot ones:
- fbank frames are final as soon as their 400 samples exist (snip_edges: no padding, frames are
  independent), so nothing in fbank is unstable; the samples from frame `num_frames(n) * 160`
  on (240..399 of them) wait for the next call ("input_cache").
- LFR frame j needs fbank frames up to 6j + 3: 3 frames of right context. A non-final call emits
  only the LFR frames whose 7-frame window is complete (`stable_lfr_frames`) and keeps the fbank
  frames from the next window's start, 6 * emitted - 3 ("lfr_splice_cache"; the 3 left-pad
  copies of frame 0 are inserted once, on the first frame). Of the ceil(T / 6) frames a one-shot
  pass computes from T frames, at most one (when T % 6 is 1, 2 or 3) is padded on the right and
  would change with more audio.
- The final call emits the rest, right-padded with the last frame, exactly as the one-shot
  pass, and resets the state. So the concatenated output equals `WavFrontend` on the whole
  stream, however the stream is cut: bitwise for 600 ms calls (as FunASR's own online output
  equals its offline output, max difference 0, in tests/fixtures/paraformer/golden.json); a
  call that adds only a few frames may round the mel product differently (an ulp, <= 5e-7
  after CMVN).
With 9600-sample calls (ParaformerStreaming's 600 ms chunks) every call emits 10 LFR frames: the
first holds 58 fbank frames + 3 pad copies (61 -> 10, 1 kept), later ones 60 (320 samples
carried). ParaformerStreaming itself skips the frontend when a final call has under 960 samples
(its `tail_chunk` path): the pending samples and frames are then dropped, not flushed; a caller
that mirrors it just never makes that final `accept` call.

All math is float32 on the input's device; batched tensors are (B, T, D).
Imports only torch and torchaudio.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor

from audio.features import as_batch

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
N_FFT = 512  # the frame zero-padded to a power of two
N_MELS = 80
LFR_M, LFR_N = 7, 6
LFR_LEFT_PAD = (LFR_M - 1) // 2  # 3 copies of frame 0
LFR_RIGHT_CONTEXT = LFR_M - 1 - LFR_LEFT_PAD  # 3 frames after the window's centre
FEAT_DIM = N_MELS * LFR_M  # 560
WAVE_SCALE = 32768.0  # FunASR scales [-1, 1] samples to the int16 range before fbank
PREEMPHASIS = 0.97


def num_frames(n_samples: int) -> int:
    """fbank frames of n samples (snip_edges=True): each needs 400 samples, one every 160."""
    return 0 if n_samples < FRAME_LENGTH else 1 + (n_samples - FRAME_LENGTH) // FRAME_SHIFT


def lfr_frames(n_frames: int, lfr_n: int = LFR_N) -> int:
    """LFR frames of a whole utterance of n fbank frames: ceil(n / 6)."""
    return -(-n_frames // lfr_n)


def stable_lfr_frames(n_frames: int, lfr_m: int = LFR_M, lfr_n: int = LFR_N) -> int:
    """LFR frames of n fbank frames that need no right padding (their window is complete):
    what a non-final streaming call can emit. lfr_frames(n) - stable_lfr_frames(n) is 0 or 1."""
    padded = n_frames + (lfr_m - 1) // 2
    return 0 if n_frames == 0 or padded < lfr_m else (padded - lfr_m) // lfr_n + 1


@functools.lru_cache(maxsize=16)
def _mel_banks(n_mels: int, n_fft: int, device: torch.device) -> Tensor:
    banks, _ = kaldi.get_mel_banks(n_mels, n_fft, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks, (0, 1))  # (n_mels, n_fft // 2 + 1)
    return banks.T.contiguous().to(device=device, dtype=torch.float32)


def mel_banks(n_mels: int = N_MELS, device: torch.device | str = "cpu") -> Tensor:
    """Kaldi's mel filter bank for a 512-point FFT, (257, n_mels) float32; cached per device,
    so treat it as read-only."""
    return _mel_banks(n_mels, N_FFT, torch.device(device))


@functools.lru_cache(maxsize=8)
def _window(kind: str, device: torch.device) -> Tensor:
    """Kaldi's analysis windows: "hamming" (FunASR's configs) or "povey" (Kaldi's default, a
    Hann window to the power 0.85: kaldi-native-fbank's, FireRedASR's)."""
    if kind == "hamming":
        return torch.hamming_window(
            FRAME_LENGTH, periodic=False, alpha=0.54, beta=0.46, device=device
        )
    if kind == "povey":
        return torch.hann_window(FRAME_LENGTH, periodic=False, device=device).pow(0.85)
    raise ValueError(f"window must be 'hamming' or 'povey', not {kind!r}")


def _lengths(lengths: Tensor | None, batch: int, n: int, device: torch.device) -> Tensor:
    if lengths is None:
        return torch.full((batch,), n, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths).long()
    if lengths.shape != (batch,) or bool((lengths < 0).any() | (lengths > n).any()):
        raise ValueError(f"lengths must be (B,) = ({batch},) and within 0..{n}")
    return lengths.to(device)


def _frames_valid(frames: Tensor, t: int) -> Tensor:
    return torch.arange(t, device=frames.device)[None] < frames[:, None]  # (B, t)


def fbank(
    x: Tensor, lengths: Tensor | None = None, n_mels: int = N_MELS, window: str = "hamming"
) -> tuple[Tensor, Tensor]:
    """Kaldi log-mel fbank of FunASR's WavFrontend. x: (B, N) or (N,) samples in [-1, 1] at
    16 kHz (scaled by 32768 here); lengths: (B,) valid samples per row (default N); window:
    "hamming" (FunASR) or "povey" (Kaldi's default, FireRedASR's).
    Returns float32 (B, T, n_mels), T = num_frames(N), and frames (B,) = num_frames(lengths);
    rows at or past an item's frame count are zeros."""
    x = as_batch(x)
    b, n = x.shape
    lengths = _lengths(lengths, b, n, x.device)
    frames = torch.where(lengths >= FRAME_LENGTH, 1 + (lengths - FRAME_LENGTH) // FRAME_SHIFT, 0)
    t = num_frames(n)
    if t == 0:
        return x.new_zeros(b, 0, n_mels), frames
    w = (x * WAVE_SCALE).unfold(1, FRAME_LENGTH, FRAME_SHIFT)  # (B, T, 400), a strided view
    w = w - w.mean(dim=2, keepdim=True)  # remove the DC offset
    w = w - PREEMPHASIS * torch.cat([w[..., :1], w[..., :-1]], dim=2)
    w = torch.nn.functional.pad(w * _window(window, x.device), (0, N_FFT - FRAME_LENGTH))
    power = torch.fft.rfft(w).abs().pow(2.0)  # (B, T, 257)
    mel = torch.mm(power.reshape(b * t, -1), mel_banks(n_mels, x.device)).reshape(b, t, n_mels)
    eps = torch.tensor(torch.finfo(torch.float32).eps, device=x.device)
    logmel = torch.max(mel, eps).log()
    return torch.where(_frames_valid(frames, t)[..., None], logmel, 0.0), frames


def _short_fbank(x: Tensor, n_mels: int) -> Tensor:
    """FunASR's offline frame for 0 < n < 400 samples: one window over all of them."""
    frame_length = min(25, len(x) / SAMPLE_RATE * 1000)
    return kaldi.fbank(
        x[None] * WAVE_SCALE,
        num_mel_bins=n_mels,
        frame_length=frame_length,
        frame_shift=10,
        dither=0.0,
        energy_floor=0.0,
        window_type="hamming",
        sample_frequency=SAMPLE_RATE,
        snip_edges=True,
    )


def lfr(
    feats: Tensor, frames: Tensor | None = None, lfr_m: int = LFR_M, lfr_n: int = LFR_N
) -> tuple[Tensor, Tensor]:
    """Low frame rate stacking. feats: (B, T, D) or (T, D); frames: (B,) valid frames per item
    (default T). LFR frame j of an item of n frames stacks frames clamp(6j - 3 + k, 0, n - 1),
    k = 0..6. Returns (B, ceil(T / 6), 7 D) and (B,) ceil(frames / 6); rows past an item's
    count are zeros. An item with no frames gets none."""
    if feats.dim() == 2:
        feats = feats[None]
    b, t, d = feats.shape
    if frames is None:
        frames = torch.full((b,), t, dtype=torch.long, device=feats.device)
    frames = torch.as_tensor(frames, device=feats.device).long()
    out_frames = (frames + lfr_n - 1) // lfr_n
    t_out = lfr_frames(t, lfr_n)
    if t_out == 0:
        return feats.new_zeros(b, 0, lfr_m * d), out_frames
    j = torch.arange(t_out, device=feats.device)[:, None] * lfr_n
    idx = j + torch.arange(lfr_m, device=feats.device)[None] - (lfr_m - 1) // 2  # (T', m)
    last = (frames - 1).clamp(min=0)[:, None, None]  # (B, 1, 1)
    idx = idx[None].clamp(min=0).minimum(last).reshape(b, -1)  # (B, T' m)
    out = feats.gather(1, idx[..., None].expand(-1, -1, d)).reshape(b, t_out, lfr_m * d)
    return torch.where(_frames_valid(out_frames, t_out)[..., None], out, 0.0), out_frames


def read_mvn(path: str | Path) -> tuple[Tensor, Tensor]:
    """(shift, scale) float32 vectors from a Kaldi nnet text am.mvn: the `<LearnRateCoef> 0
    [ ... ]` lines after `<AddShift>` and `<Rescale>`, as FunASR's load_cmvn reads them."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    found: dict[str, list[float]] = {}
    for i, line in enumerate(lines[:-1]):
        head = line.split()
        if head and head[0] in ("<AddShift>", "<Rescale>"):
            nxt = lines[i + 1].split()
            if nxt and nxt[0] == "<LearnRateCoef>":
                found[head[0]] = [float(v) for v in nxt[3:-1]]
    if set(found) != {"<AddShift>", "<Rescale>"} or len(found["<AddShift>"]) != len(
        found["<Rescale>"]
    ):
        raise ValueError(f"{path}: no <AddShift> and <Rescale> vectors of one size")
    shift = torch.tensor(found["<AddShift>"], dtype=torch.float32)
    return shift, torch.tensor(found["<Rescale>"], dtype=torch.float32)


def cmvn(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """(x + shift) * scale over the last dimension (FunASR's apply_cmvn, not in place)."""
    d = x.shape[-1]
    return (x + shift[:d].to(x.device)) * scale[:d].to(x.device)


class WavFrontend:
    """FunASR's WavFrontend for whole utterances, batched: fbank -> LFR -> CMVN.

    `shift`/`scale` are am.mvn's vectors (None: no CMVN). Call it with (B, N) samples in
    [-1, 1] and (B,) lengths; it returns (B, T', 560) features and (B,) frame counts, zeros
    past each item's count. `stream()` starts an incremental front end for one stream."""

    def __init__(
        self,
        shift: Tensor | None = None,
        scale: Tensor | None = None,
        n_mels: int = N_MELS,
        lfr_m: int = LFR_M,
        lfr_n: int = LFR_N,
    ) -> None:
        if (shift is None) != (scale is None):
            raise ValueError("give both shift and scale, or neither")
        self.shift, self.scale = shift, scale
        self.n_mels, self.lfr_m, self.lfr_n = n_mels, lfr_m, lfr_n

    @classmethod
    def from_mvn_file(cls, path: str | Path, **kwargs) -> WavFrontend:
        shift, scale = read_mvn(path)
        return cls(shift, scale, **kwargs)

    @property
    def dim(self) -> int:
        return self.n_mels * self.lfr_m

    def finish(self, feats: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """fbank frames -> LFR -> CMVN. feats: (B, T, n_mels); frames: (B,)."""
        out, out_frames = lfr(feats, frames, self.lfr_m, self.lfr_n)
        if self.shift is not None:
            valid = _frames_valid(out_frames, out.shape[1])[..., None]
            out = torch.where(valid, cmvn(out, self.shift, self.scale), 0.0)
        return out, out_frames

    def __call__(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = as_batch(x)
        lengths = _lengths(lengths, x.shape[0], x.shape[1], x.device)
        feats, frames = fbank(x, lengths, self.n_mels)
        short = ((lengths > 0) & (lengths < FRAME_LENGTH)).nonzero().flatten().tolist()
        if short:  # FunASR's one shorter window (see the module docstring)
            if feats.shape[1] == 0:
                feats = feats.new_zeros(x.shape[0], 1, self.n_mels)
            for b in short:
                feats[b, :1] = _short_fbank(x[b, : int(lengths[b])], self.n_mels)
            frames = torch.where((lengths > 0) & (lengths < FRAME_LENGTH), 1, frames)
        return self.finish(feats, frames)

    def stream(self) -> StreamingWavFrontend:
        return StreamingWavFrontend(self)


class StreamingWavFrontend:
    """One stream's incremental front end, with FunASR WavFrontendOnline's cache semantics
    (see the module docstring): `accept(samples)` returns the (k, 560) feature frames that are
    final, `accept(samples, is_final=True)` the rest, after which the state is reset. The
    concatenated output equals `WavFrontend` on the whole stream, however it was cut."""

    def __init__(self, frontend: WavFrontend) -> None:
        self.frontend = frontend
        self.reset()

    def reset(self) -> None:
        self._samples: Tensor | None = None  # samples from the next fbank frame's start on
        self._frames: Tensor | None = None  # fbank frames from the next LFR window's start on
        self.emitted = 0  # LFR frames returned so far

    @property
    def pending_samples(self) -> int:
        return 0 if self._samples is None else len(self._samples)

    @property
    def pending_frames(self) -> int:
        """fbank frames held for the next LFR windows (the 3 left-pad copies included)."""
        return 0 if self._frames is None else len(self._frames)

    def _take_fbank(self, samples: Tensor) -> None:
        samples = torch.as_tensor(samples).float().reshape(-1)
        buf = samples if self._samples is None else torch.cat([self._samples, samples])
        t = num_frames(len(buf))
        self._samples = buf[t * FRAME_SHIFT :]
        if t == 0:
            return
        used = buf[: (t - 1) * FRAME_SHIFT + FRAME_LENGTH]
        frames = fbank(used, n_mels=self.frontend.n_mels)[0][0]  # (t, n_mels)
        if self._frames is None:  # the LFR left padding, once
            self._frames = frames[:1].expand((self.frontend.lfr_m - 1) // 2, -1)
        self._frames = torch.cat([self._frames, frames])

    def accept(self, samples: Tensor, is_final: bool = False) -> Tensor:
        """Feeds samples (N,) in [-1, 1]; returns the new (k, 560) feature frames."""
        self._take_fbank(samples)
        fe = self.frontend
        if self._frames is None:  # no complete fbank frame yet
            if is_final:
                self.reset()
            return torch.zeros(0, fe.dim, device=torch.as_tensor(samples).device)
        held = len(self._frames)
        left = (fe.lfr_m - 1) // 2
        if is_final:  # the rest, right-padded with the last frame, as one-shot LFR does
            k = max(0, lfr_frames(held - left, fe.lfr_n))
        else:
            k = 0 if held < fe.lfr_m else (held - fe.lfr_m) // fe.lfr_n + 1
        out = self._lfr_rows(k)
        self.emitted += k
        if is_final:
            self.reset()
        else:
            self._frames = self._frames[k * fe.lfr_n :]
        return out

    def _lfr_rows(self, k: int) -> Tensor:
        """LFR + CMVN of the first k windows of the held frames (which start at a window)."""
        fe, held = self.frontend, self._frames
        assert held is not None
        j = torch.arange(k, device=held.device)[:, None] * fe.lfr_n
        idx = (j + torch.arange(fe.lfr_m, device=held.device)[None]).clamp(max=len(held) - 1)
        rows = held[idx.reshape(-1)].reshape(k, fe.dim)
        return rows if fe.shift is None else cmvn(rows, fe.shift, fe.scale)


def frames_for_samples(n_samples: int) -> tuple[int, int]:
    """(fbank frames, LFR frames) a whole utterance of n samples gets from the offline
    WavFrontend (one frame under 400 samples, none for 0)."""
    t = 1 if 0 < n_samples < FRAME_LENGTH else num_frames(n_samples)
    return t, lfr_frames(t)
