"""Voice activity detection and endpointing with the OpenAI Realtime `server_vad` knobs.

Speech probability comes from Silero VAD (16 kHz), reimplemented here as a small torch module
with explicit state, batch first, so the chunks of many streams can run in one call. Why Silero
rather than an energy gate: a trained detector separates speech from noise, music and clicks at
any input level, so it neither fires on a loud fan nor misses a quiet talker, and its output is
a probability, which is exactly what the OpenAI `threshold` knob (0..1) means.

Weights: the `silero-vad` package (6.x) ships the model as TorchScript (`silero_vad.jit`, the
one `load_silero_vad()` runs, same weights as its ONNX files) and as `silero_vad_16k.safetensors`
(for its tinygrad port). The two hold different weights (upstream issue #768), so by default we
take the 16 kHz tensors out of the TorchScript file: that is the model users of the package get,
and our outputs match it. `load_vad(path)` also reads a safetensors file with our names.

The net sees 512-sample chunks (32 ms at 16 kHz) with the 64 samples before each chunk
prepended as context, and carries an LSTM state from chunk to chunk, as the package does.

`Endpointer` turns per-chunk probabilities into turns: speech starts when p >= threshold has
held for MIN_SPEECH_MS (clicks do not open turns), and stops after `silence_duration_ms` of
p < threshold - 0.15 (hysteresis, as Silero's own iterator). Times are ms of stream audio.
"""

import importlib.util
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

RATE = 16000
CHUNK = 512  # samples the net scores at once
CONTEXT = 64  # samples of the previous chunk prepended to each chunk
HIDDEN = 128  # LSTM size; the state is (batch, 2, HIDDEN): h and c
ENCODE_BATCH = 256  # chunks per conv batch when one push brings a lot of audio (bounds memory)
MIN_SPEECH_MS = 250  # speech shorter than this does not start a turn
HYSTERESIS = 0.15  # silence is p < threshold - HYSTERESIS, as in Silero's iterator
MIN_NEG_THRESHOLD = 0.01  # floor of that silence threshold (Silero's), so low thresholds still stop
PACKAGE_WEIGHTS = "silero_vad.jit"
_WB = ("weight", "bias")
_LSTM = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# TorchScript names (the package's 16 kHz submodule `_model`) -> ours.
_JIT_NAMES = {
    "stft.forward_basis_buffer": "stft_conv.weight",
    **{f"encoder.{i}.reparam_conv.{w}": f"conv{i + 1}.{w}" for i in range(4) for w in _WB},
    **{f"decoder.rnn.{w}": f"lstm_cell.{w}" for w in _LSTM},
    "decoder.decoder.2.weight": "final_conv.weight",
    "decoder.decoder.2.bias": "final_conv.bias",
}


class SileroVAD(nn.Module):
    """Silero VAD v5/v6 16 kHz: STFT as a conv, 4 conv layers, an LSTM cell, a 1x1 conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, kernel_size=3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, HIDDEN)
        self.final_conv = nn.Conv1d(128, 1, kernel_size=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, CONTEXT + CHUNK) samples -> (B, 128) features; no state, so chunks batch freely."""
        x = nn.functional.pad(x, (0, 64), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)  # (B, 2 * 129, 4): real and imaginary parts of 4 frames
        re, im = x[:, :129], x[:, 129:]
        x = torch.sqrt(re**2 + im**2)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))  # (B, 128, 1)
        return x.squeeze(-1)

    def decode(self, feat: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 128) features and (B, 2, HIDDEN) state -> (B,) speech probability, new state."""
        h, c = self.lstm_cell(feat, (state[:, 0], state[:, 1]))
        p = torch.sigmoid(self.final_conv(torch.relu(h).unsqueeze(-1)))  # (B, 1, 1)
        return p[:, 0, 0], torch.stack([h, c], dim=1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk per stream: x (B, CONTEXT + CHUNK), state (B, 2, HIDDEN) -> (p (B,), state)."""
        return self.decode(self.encode(x), state)

    @staticmethod
    def initial_state(batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 2, HIDDEN)


def package_file(name: str) -> Path:
    """A file of the installed `silero-vad` package's data folder. Found without importing the
    package, whose import sets torch's global thread count to 1."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; silero-vad >= 6 ships it")
    return path


def _jit_state(path: Path) -> dict[str, torch.Tensor]:
    # torch.jit.load is deprecated in torch 2.11 but works; it is only the weights' container.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path), map_location="cpu")._model
    theirs = {**dict(scripted.named_parameters()), **dict(scripted.named_buffers())}
    return {ours: theirs[name].detach().clone() for name, ours in _JIT_NAMES.items()}


def load_vad(path: str | Path | None = None) -> SileroVAD:
    """A SileroVAD in eval mode. Weights from `path`: a `.safetensors` file with our tensor
    names, or a Silero TorchScript file; default: the installed package's TorchScript model."""
    path = Path(path) if path is not None else package_file(PACKAGE_WEIGHTS)
    state = load_file(str(path)) if path.suffix == ".safetensors" else _jit_state(path)
    model = SileroVAD()
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


_shared: SileroVAD | None = None
_shared_lock = threading.Lock()


def shared_vad() -> SileroVAD:
    """The process-wide model: weights load once, every Endpointer reads them (read-only)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = load_vad()
        return _shared


@dataclass(frozen=True)
class VadConfig:
    """OpenAI Realtime `turn_detection` of type `server_vad`."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0:
            raise ValueError("prefix_padding_ms and silence_duration_ms must be >= 0")


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # where the turn's audio begins, prefix padding included


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # where speech ended (the start of the silence that closed the turn)


VadEvent = SpeechStarted | SpeechStopped


def _ms(samples: int) -> int:
    return samples * 1000 // RATE


class Endpointer:
    """Per-stream turn detection over 16 kHz mono float32 audio pushed in any chunking.

    State is bounded whatever the stream length: under one chunk of pending audio, 64 samples of
    context, the LSTM state and a few counters. Not thread-safe: one caller per stream.
    """

    def __init__(self, config: VadConfig | None = None, model: SileroVAD | None = None) -> None:
        self.config = config or VadConfig()
        self.model = model or shared_vad()
        self.samples = 0  # samples pushed since the stream began: the clock of every event
        self.reset()

    def configure(self, **changes: float | int) -> None:
        """Change threshold / prefix_padding_ms / silence_duration_ms on a live stream."""
        self.config = replace(self.config, **changes)

    def reset(self) -> None:
        """Forget the audio seen so far (model state, open turn); the clock keeps running."""
        self._pending = np.zeros(0, np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._state = SileroVAD.initial_state()
        self.processed = self.samples  # stream position up to which the net has scored audio
        self.speaking = False
        self._candidate: int | None = None  # start of speech not yet long enough to be a turn
        self._silence: int | None = None  # start of the silence inside a turn
        # A new turn's padding never reaches back into the previous turn, nor before a reset.
        self._last_end = self.samples

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed audio; returns the turn events it completes, in order."""
        events = (self.step(p) for p in self.score(samples))
        return [e for e in events if e is not None]

    def score(self, samples: np.ndarray) -> np.ndarray:
        """Feed audio to the net only: the speech probability of each chunk it completes.
        Advances the model state; the turn state machine is `step`'s (`push` does both)."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1 or not np.isfinite(x).all():
            # a NaN would poison the LSTM state for the rest of the stream
            raise ValueError("expected finite mono samples (1-D float32)")
        self.samples += len(x)
        x = np.concatenate([self._pending, x])
        n = len(x) // CHUNK
        self._pending = x[n * CHUNK :].copy()
        if n == 0:
            return np.zeros(0, np.float32)
        # Each chunk with the CONTEXT samples before it, as rows of one batch.
        with_context = np.concatenate([self._context, x[: n * CHUNK]])
        self._context = with_context[-CONTEXT:].copy()
        rows = np.lib.stride_tricks.sliding_window_view(with_context, CONTEXT + CHUNK)[::CHUNK]
        probs = np.empty(n, np.float32)
        # The convolutional part has no state: chunks go through it ENCODE_BATCH at a time;
        # only the LSTM cell runs chunk by chunk.
        with torch.inference_mode():
            for b in range(0, n, ENCODE_BATCH):
                feat = self.model.encode(torch.from_numpy(np.array(rows[b : b + ENCODE_BATCH])))
                for i in range(len(feat)):
                    p, self._state = self.model.decode(feat[i : i + 1], self._state)
                    probs[b + i] = p[0]
        return probs

    def step(self, p: float) -> VadEvent | None:
        """Advance the turn state machine by one chunk whose speech probability is `p`.
        (`push` calls it after `score`; a caller that batches the net over many streams
        computes p itself and calls this.)"""
        start, end = self.processed, self.processed + CHUNK
        self.processed = end
        cfg = self.config
        speech = p >= cfg.threshold
        silence = p < max(cfg.threshold - HYSTERESIS, MIN_NEG_THRESHOLD)
        if not self.speaking:
            if self._candidate is None:
                self._candidate = start if speech else None
            elif silence:
                self._candidate = None
            if self._candidate is not None and _ms(end - self._candidate) >= MIN_SPEECH_MS:
                self.speaking, self._silence = True, None
                pad = cfg.prefix_padding_ms * RATE // 1000
                begin = max(self._candidate - pad, self._last_end, 0)
                self._candidate = None
                return SpeechStarted(_ms(begin))
            return None
        if speech:
            self._silence = None
        elif silence and self._silence is None:
            self._silence = start
        if self._silence is not None and _ms(end - self._silence) >= cfg.silence_duration_ms:
            self.speaking, self._last_end = False, self._silence
            self._silence = None
            return SpeechStopped(_ms(self._last_end))
        return None

    def finish(self) -> list[VadEvent]:
        """End of stream: closes an open turn at the last speech (or the end of the audio)."""
        if not self.speaking:
            return []
        self.speaking = False
        end = self._silence if self._silence is not None else self.samples
        self._last_end, self._silence = end, None
        return [SpeechStopped(_ms(end))]
