"""Kaldi global CMVN (`cmvn.ark`) and FireRedASR's front end: fbank, then CMVN.

`cmvn.ark` holds Kaldi's accumulated stats, a 2 x (D + 1) double matrix: row 0 the per-dim
sums and, last, the frame count n; row 1 the sums of squares. FireRedASR normalises with
mean = sum / n and 1 / sqrt(max(sumsq / n - mean^2, 1e-20)), in float64 on the float32 fbank,
then casts to float32 (fireredasr2's data/asr_feat.py). Both of Kaldi's forms are read: binary
("\\0B" then "DM " or "FM ", int32 rows and cols each after a size byte 4, the values) and text
("[ ... ]", one row a line), each with or without a leading archive key ("global ").

`FireRedFrontend` is the whole front end: 80-bin Kaldi fbank, 25/10 ms, Povey window, no dither,
on the int16-scale waveform (audio/fbank.py with `window="povey"`; kaldi-native-fbank's defaults),
then the CMVN. Batched; frames at or past an item's count are zeros.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from audio.fbank import fbank

VARIANCE_FLOOR = 1e-20


def read_kaldi_matrix(data: bytes) -> np.ndarray:
    """A Kaldi matrix (binary or text, optionally after an archive key) -> float64 array."""
    start = data.find(b"\0B")
    text_start = data.find(b"[")
    if start >= 0 and (text_start < 0 or start < text_start):
        return _read_binary(data, start + 2)
    if text_start >= 0:
        end = data.find(b"]", text_start)
        if end < 0:
            raise ValueError("text matrix without a closing ']'")
        rows = data[text_start + 1 : end].decode("ascii").strip().splitlines()
        values = [[float(v) for v in row.split()] for row in rows if row.split()]
        if not values or len({len(r) for r in values}) != 1:
            raise ValueError("text matrix rows differ in length")
        return np.array(values, dtype=np.float64)
    raise ValueError("not a Kaldi matrix (neither binary '\\0B' nor text '[')")


def _read_binary(data: bytes, pos: int) -> np.ndarray:
    kind = data[pos : pos + 3]
    dtypes = {b"DM ": "<f8", b"FM ": "<f4"}
    if kind not in dtypes:
        raise ValueError(f"binary matrix of type {kind!r} (expected DM or FM)")
    if len(data) < pos + 13:
        raise ValueError("binary matrix header is truncated")
    size_rows, rows, size_cols, cols = struct.unpack("<bibi", data[pos + 3 : pos + 13])
    if size_rows != 4 or size_cols != 4 or rows < 0 or cols < 0:
        raise ValueError("malformed binary matrix header")
    body = data[pos + 13 :]
    n = rows * cols * np.dtype(dtypes[kind]).itemsize
    if len(body) < n:
        raise ValueError("binary matrix is truncated")
    values = np.frombuffer(body[:n], dtype=dtypes[kind]).reshape(rows, cols)
    return values.astype(np.float64)


def cmvn_from_stats(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(means, inverse standard deviations), float64 (D,), from 2 x (D + 1) stats."""
    if stats.ndim != 2 or stats.shape[0] != 2 or stats.shape[1] < 2:
        raise ValueError(f"CMVN stats must be 2 x (D + 1), not {stats.shape}")
    count = stats[0, -1]
    if count < 1:
        raise ValueError(f"CMVN stats count {count} < 1")
    means = stats[0, :-1] / count
    variance = np.maximum(stats[1, :-1] / count - means * means, VARIANCE_FLOOR)
    return means, 1.0 / np.sqrt(variance)


def read_cmvn(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(means, inverse standard deviations) of a cmvn.ark."""
    return cmvn_from_stats(read_kaldi_matrix(Path(path).read_bytes()))


class FireRedFrontend:
    """Samples in [-1, 1] (B, N) and lengths (B,) -> features (B, T, 80) after CMVN, frames (B,)."""

    def __init__(self, means: np.ndarray, inverse_std: np.ndarray) -> None:
        self.means = torch.from_numpy(np.asarray(means, dtype=np.float64))
        self.inverse_std = torch.from_numpy(np.asarray(inverse_std, dtype=np.float64))
        self.dim = self.means.numel()

    @classmethod
    def from_file(cls, path: str | Path) -> FireRedFrontend:
        return cls(*read_cmvn(path))

    def __call__(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        feats, frames = fbank(x, lengths, self.dim, window="povey")
        means, istd = self.means.to(feats.device), self.inverse_std.to(feats.device)
        out = ((feats.to(means.dtype) - means) * istd).float()
        valid = torch.arange(out.shape[1], device=out.device)[None] < frames[:, None]
        return torch.where(valid[..., None], out, 0.0), frames
