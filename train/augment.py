"""Waveform augmentation for synthetic speech: speed, reverb, noise, gain and padding.

espeak-ng's output is clean, dry and sample-exact; a recognizer trained on it alone falls apart on
a real microphone. Each utterance gets a random subset of: a speed change (resampling: tempo and
formants move together), a synthetic room (exponentially decaying noise as the impulse response),
additive coloured noise at a random SNR, a gain change, and silence (with the same noise floor)
before and after, as a VAD segment or a push-to-talk clip has it. All draws come from the
caller's numpy Generator.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio.transforms as T

RATE = 16000


@functools.lru_cache(maxsize=64)
def resampler(rate_in: int) -> T.Resample:
    """A resampler rate_in -> 16 kHz (building the sinc kernel costs more than applying it)."""
    return T.Resample(rate_in, RATE)


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Plays x `factor` times faster (0.9: slower and lower)."""
    src = round(RATE * factor / 200) * 200  # a round rate keeps the kernel small, and few of them
    with torch.no_grad():
        return resampler(src)(torch.from_numpy(x)).numpy()


def room_impulse(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A synthetic impulse response: the direct path, then noise decaying by 60 dB over rt60 s."""
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 10 ** rng.uniform(-1.6, -0.8)
    tail[: int(0.002 * RATE)] = 0.0  # the first reflection arrives a few ms after the direct path
    tail[0] = 1.0
    return tail.astype(np.float32)


def fft_size(n: int) -> int:
    """The power of two >= n: numpy's FFT is 10-20x slower at lengths with large prime
    factors, which most utterance lengths have (measured at 51,234-100,003 samples)."""
    return 1 << max(n - 1, 1).bit_length()


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h = room_impulse(rng, rng.uniform(0.15, 0.7))
    m = fft_size(len(x) + len(h) - 1)  # the whole linear convolution, no wrap-around
    y = np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(h, m), m)[: len(x) + len(h) // 4]
    return y * (np.abs(x).max() / max(np.abs(y).max(), 1e-9))


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS: white
    noise shaped in the frequency domain, made at an FFT-friendly length and cut to n."""
    m = fft_size(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.maximum(np.fft.rfftfreq(m), 1.0 / m)
    y = np.fft.irfft(spec / f ** (exponent / 2), m)[:n]
    return (y / max(np.sqrt(np.mean(y**2)), 1e-9)).astype(np.float32)


def pause(rng: np.random.Generator, long_share: float = 0.0) -> int:
    """Samples of silence at one end of an utterance: 0.05-0.6 s, or with probability
    `long_share` 0.6-2.5 s, as a VAD's hangover or a late release of push-to-talk leaves it.
    A model trained on short pauses alone lost words when 0.5 s more followed the speech
    (held-out WER 7.5% -> 10.3%, docs/benchmarks.md). With long_share 0 it draws what it always
    did, so the committed corpus (held-out set included) stays as documented."""
    if long_share and rng.random() < long_share:
        return int(rng.uniform(0.6, 2.5) * RATE)
    return int(rng.uniform(0.05, 0.6) * RATE)


def augment(
    x: np.ndarray, rng: np.random.Generator, long_pauses: float = 0.0
) -> tuple[np.ndarray, dict[str, float]]:
    """One random augmentation of a 16 kHz float32 utterance; returns it and what was done.
    long_pauses: the share of long pauses at either end (`pause`)."""
    done: dict[str, float] = {}
    if rng.random() < 0.3:
        done["speed"] = float(rng.uniform(0.88, 1.12))
        n = x.size
        x = speed(x, done["speed"])
        done["stretch"] = x.size / max(n, 1)  # sample t of the input is now near t * stretch
    if rng.random() < 0.3:
        x = reverb(x, rng)
        done["reverb"] = 1.0
    lead, trail = pause(rng, long_pauses), pause(rng, long_pauses)
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    done["lead"] = lead
    level = np.sqrt(np.mean(x**2)) + 1e-9
    if rng.random() < 0.6:
        done["snr_db"] = float(rng.uniform(5.0, 40.0))
        noise = coloured_noise(rng, len(x), float(rng.choice([0.0, 1.0, 2.0])))
        x = x + noise * level * 10 ** (-done["snr_db"] / 20)
    done["gain_db"] = float(rng.uniform(-24.0, 0.0))
    x = x * (0.9 / max(np.abs(x).max(), 1e-9)) * 10 ** (done["gain_db"] / 20)
    return x.astype(np.float32), done
