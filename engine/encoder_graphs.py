"""The AuT encoder's batched calls replayed from CUDA graphs, one graph per bucket of windows.

A speech step encodes the open windows of every due stream in one call (engine/asr.py). Run
eagerly, a call is some 250 kernel launches whatever its size, and every call has a new shape
(how many windows, how long the longest): on the H200, at 64 live streams, a call for two
streams' windows took 27 ms (docs/benchmarks.md, the live capacity profile). Here each bucket
of b windows (1, 2, 4, ... `max_windows`) has a graph of `encode_padded` over static buffers:
features (b, n_mels, window_frames), zero past each window's frames, and the frame counts (b,).
A call of n windows fills the first n rows; the other rows are padding of one frame each (a
window without a valid token would put NaN in attention). More windows than the largest bucket
run as several replays.

With `capture=False` nothing is captured and `run` calls `encode_padded` eagerly on the same
buffers: what a replay computes, which lets CPU tests check it against `encode_windows`.
"""

from __future__ import annotations

import torch

from engine.cuda_graphs import BucketGraphs
from engine.models.qwen3_asr import CHUNK_FRAMES, AuTEncoder, audio_tokens

MAX_WINDOWS = 64  # the largest bucket: a call for 64 windows or fewer is one replay


def window_buckets(max_windows: int) -> list[int]:
    """Powers of two below max_windows, and max_windows."""
    sizes = {max_windows, *(1 << k for k in range(max_windows.bit_length()))}
    return sorted(s for s in sizes if s <= max_windows)


class EncoderGraphs(BucketGraphs):
    def __init__(
        self,
        encoder: AuTEncoder,
        dtype: torch.dtype,
        max_windows: int = MAX_WINDOWS,
        capture: bool = True,
    ) -> None:
        cfg = encoder.config
        if cfg.window_frames % CHUNK_FRAMES:
            raise ValueError(f"windows of {cfg.window_frames} frames are not whole chunks")
        super().__init__(window_buckets(max_windows))
        self.encoder = encoder
        self.frames = cfg.window_frames
        device = encoder.conv_out.weight.device
        n = self.sizes[-1]
        self.feats = torch.zeros(n, cfg.num_mel_bins, self.frames, dtype=dtype, device=device)
        self.lengths = torch.ones(n, dtype=torch.long, device=device)
        self.calls = 0  # batches run, from a graph or (not captured) eagerly
        self.replays = 0  # of them, from a graph
        if capture:
            self._capture(device)

    def takes(self, windows: list[torch.Tensor]) -> bool:
        return all(0 < f.shape[1] <= self.frames for f in windows)

    def run(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Windows (n_mels, F_i), F_i <= window_frames -> their tokens (audio_tokens(F_i), d)."""
        most = self.sizes[-1]
        out: list[torch.Tensor] = []
        for i in range(0, len(windows), most):
            out += self._run(windows[i : i + most])
        return out

    def _run(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(windows)
        b = self.bucket(n)
        frames = [f.shape[1] for f in windows]
        self.calls += 1
        self.feats[:b].zero_()
        for i, f in enumerate(windows):
            self.feats[i, :, : f.shape[1]] = f
        self.lengths[:b].copy_(torch.tensor(frames + [1] * (b - n)))
        h = self._replay(b)  # (b, tokens, output_dim)
        self.replays += b in self.graphs
        # one copy out of the graph's memory, which the next replay overwrites (a long prompt's
        # embeddings are read over several engine steps)
        h = h[:n].clone()
        return [h[i, : audio_tokens(f)] for i, f in enumerate(frames)]

    def _forward(self, b: int) -> torch.Tensor:
        h, _ = self.encoder.encode_padded(self.feats[:b], self.lengths[:b])
        return h
