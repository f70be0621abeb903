"""audio.vad: our Silero module against the package's TorchScript model, and turn detection.

Speech comes from the committed espeak-ng fixtures (tests/fixtures/make_speech.sh); pauses,
silence and noise are built around it here.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from audio.decode import decode_file
from audio.resample import resample
from audio.vad import (
    CHUNK,
    CONTEXT,
    Endpointer,
    SileroVAD,
    SpeechStarted,
    SpeechStopped,
    VadConfig,
    load_vad,
    package_file,
    shared_vad,
)

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 16000


def speech(name: str = "hello") -> np.ndarray:
    x, rate = decode_file((FIXTURES / f"{name}.ogg").read_bytes())
    return resample(x, rate, RATE)  # libsndfile gives Opus at its 16 kHz input rate, FFmpeg 48


def silence(ms: int) -> np.ndarray:
    return np.zeros(ms * RATE // 1000, np.float32)


def join(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32)


def ms(samples: int) -> float:
    return samples * 1000 / RATE


@pytest.fixture(scope="module")
def jit_model():
    threads = torch.get_num_threads()
    import silero_vad  # its import sets torch's thread count to 1 for the whole process

    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # its loader uses APIs deprecated in torch 2.11 / py3.11
        warnings.simplefilter("ignore", DeprecationWarning)
        return silero_vad.load_silero_vad()


def jit_probs(model, x: np.ndarray) -> np.ndarray:
    model.reset_states()
    with torch.no_grad():
        return np.array(
            [
                float(model(torch.from_numpy(x[i : i + CHUNK])[None], RATE))
                for i in range(0, len(x) - CHUNK + 1, CHUNK)
            ]
        )


def test_parity_with_package_model(jit_model):
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal(RATE).astype(np.float32)
    x = join(silence(500), speech("hello"), noise, speech("weather") * 0.3, silence(300))
    expected = jit_probs(jit_model, x)
    assert expected.max() > 0.9 and expected.min() < 0.1  # the input has speech and non-speech
    # step by step, context handled by hand, as the package's wrapper does
    model, state, ours = load_vad(), SileroVAD.initial_state(), []
    context = np.zeros(CONTEXT, np.float32)
    with torch.no_grad():
        for i in range(0, len(x) - CHUNK + 1, CHUNK):
            chunk = x[i : i + CHUNK]
            p, state = model(torch.from_numpy(join(context, chunk))[None], state)
            context = chunk[-CONTEXT:]
            ours.append(float(p[0]))
    assert np.abs(np.array(ours) - expected).max() < 1e-4
    # and through the Endpointer (batched convs, then the LSTM chunk by chunk), any chunking
    ep = Endpointer()
    cuts = [0, 1, 700, 701, 5000, 20000, len(x)]
    probs = np.concatenate([ep.score(x[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)])
    assert np.abs(probs - expected).max() < 1e-4


def test_batched_streams_equal_single_streams():
    model = load_vad()
    a = join(silence(200), speech("hello"))[: 40 * CHUNK + CONTEXT]
    b = join(speech("weather"), silence(200))[: 40 * CHUNK + CONTEXT]
    states = {"a": SileroVAD.initial_state(), "b": SileroVAD.initial_state()}
    batch_state = SileroVAD.initial_state(2)
    streams = {"a": a, "b": b}.items()
    with torch.no_grad():
        for i in range(0, 40 * CHUNK, CHUNK):
            rows = {k: torch.from_numpy(v[i : i + CONTEXT + CHUNK])[None] for k, v in streams}
            p_batch, batch_state = model(torch.cat([rows["a"], rows["b"]]), batch_state)
            for j, k in enumerate("ab"):
                p, states[k] = model(rows[k], states[k])
                assert abs(float(p[0]) - float(p_batch[j])) < 1e-5
    assert torch.allclose(batch_state[1], states["b"][0], atol=1e-5)


def test_safetensors_weights_load_and_detect_speech():
    # The package's safetensors (for its tinygrad port) holds another checkpoint; it must still
    # load into our module by name and behave as a VAD.
    model = load_vad(package_file("silero_vad_16k.safetensors"))
    ep = Endpointer(model=model)
    probs = ep.score(join(silence(1000), speech("hello"), silence(1000)))
    assert probs[:25].max() < 0.2
    assert np.median(probs[35:95]) > 0.8


def test_weights_load_once_per_process():
    assert Endpointer().model is Endpointer().model is shared_vad()


def turns(x: np.ndarray, **config) -> list:
    ep = Endpointer(VadConfig(**config))
    return ep.push(x) + ep.finish()


def test_short_pause_keeps_the_turn_long_pause_ends_it():
    hello, weather = speech("hello"), speech("weather")
    short = turns(join(silence(1000), hello, silence(300), weather, silence(1500)))
    assert [type(e) for e in short] == [SpeechStarted, SpeechStopped]
    long = turns(join(silence(1000), hello, silence(700), weather, silence(1500)))
    assert [type(e) for e in long] == [SpeechStarted, SpeechStopped] * 2
    # the first turn ends near the end of the first sentence, the second starts near the next
    first_end = 1000 + ms(len(hello))
    assert abs(long[1].audio_end_ms - first_end) < 150
    second_start = first_end + 700
    assert abs(long[2].audio_start_ms - (second_start - 300)) < 150


def test_silence_duration_is_the_knob():
    x = join(silence(1000), speech("hello"), silence(700), speech("weather"), silence(1500))
    assert len(turns(x, silence_duration_ms=500)) == 4
    assert len(turns(x, silence_duration_ms=900)) == 2
    # the stop event comes silence_duration after the speech ended, not before
    ep = Endpointer(VadConfig(silence_duration_ms=500))
    ep.push(join(silence(1000), speech("hello")))
    ended_at = ep.samples
    stops = ep.push(silence(400))
    assert stops == []
    stops = ep.push(silence(400))
    assert isinstance(stops[0], SpeechStopped)
    assert ms(ended_at) - 150 < stops[0].audio_end_ms < ms(ended_at) + 150


def test_prefix_padding_moves_the_start():
    x = join(silence(1500), speech("hello"), silence(1000))
    starts = {p: turns(x, prefix_padding_ms=p)[0].audio_start_ms for p in (0, 300, 1000)}
    assert abs(starts[0] - 1500) < 100  # onset found within a few chunks of the truth
    assert starts[0] - starts[300] == 300
    assert starts[0] - starts[1000] == 1000
    assert turns(x, prefix_padding_ms=5000)[0].audio_start_ms == 0  # clamped at stream start


def test_no_turn_on_silence_or_low_noise():
    rng = np.random.default_rng(1)
    assert turns(silence(5000)) == []
    assert turns((0.01 * rng.standard_normal(5 * RATE)).astype(np.float32)) == []
    hum = 0.3 * np.sin(2 * np.pi * 50 * np.arange(5 * RATE) / RATE)
    assert turns(hum.astype(np.float32)) == []


def test_turn_on_speech_in_moderate_noise():
    rng = np.random.default_rng(2)
    hello = speech("hello")
    x = join(silence(1000), hello, silence(1500))
    snr_db = 10
    rms = np.sqrt(np.mean(hello**2))
    noisy = x + (rms / 10 ** (snr_db / 20)) * rng.standard_normal(len(x)).astype(np.float32)
    events = turns(noisy)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert abs(events[0].audio_start_ms + 300 - 1000) < 150


def test_short_blip_does_not_start_a_turn():
    blip = speech("hello")[6400 : 6400 + 150 * 16]  # 150 ms of a word
    ep = Endpointer()
    probs = ep.score(join(silence(1000), blip, silence(1000)))
    assert probs.max() >= 0.5  # the net does hear speech ...
    assert turns(join(silence(1000), blip, silence(1000))) == []  # ... too short for a turn


def test_events_do_not_depend_on_chunking():
    x = join(silence(800), speech("weather"), silence(700), speech("hello"), silence(900))
    whole = turns(x)
    rng = np.random.default_rng(3)
    ep = Endpointer()
    events, i = [], 0
    while i < len(x):
        n = int(rng.choice([0, 1, 100, 512, 513, 3000]))
        events += ep.push(x[i : i + n])
        i += n
    assert events + ep.finish() == whole
    assert ep.samples == len(x)


def test_reset_and_live_configuration():
    x = join(silence(1000), speech("hello"), silence(1000))
    ep = Endpointer()
    first = ep.push(x)
    ep.reset()  # forgets the audio, keeps the clock
    second = ep.push(x)
    shift = ms(len(x))
    assert [type(e) for e in second] == [type(e) for e in first]
    assert abs(second[0].audio_start_ms - (first[0].audio_start_ms + shift)) < 1  # ms rounding
    ep.configure(threshold=1.0)  # nothing reaches p >= 1: no more turns
    assert ep.push(x) == []
    ep.configure(threshold=0.5, silence_duration_ms=200)
    assert ep.config == VadConfig(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=200)
    with pytest.raises(ValueError):
        ep.configure(threshold=1.5)
    with pytest.raises(ValueError):
        VadConfig(silence_duration_ms=-1)
    with pytest.raises(ValueError, match="finite"):
        ep.push(np.array([0.0, np.nan], np.float32))


def test_finish_closes_an_open_turn():
    ep = Endpointer()
    events = ep.push(join(silence(500), speech("hello")))
    assert [type(e) for e in events] == [SpeechStarted]
    (stop,) = ep.finish()
    assert isinstance(stop, SpeechStopped)
    assert stop.audio_end_ms <= ms(ep.samples)
    assert ep.finish() == []


def test_state_stays_bounded_on_long_streams():
    ep = Endpointer()
    rng = np.random.default_rng(4)
    piece = join(speech("hello"), silence(900))
    for _ in range(12):  # ~40 s in odd-sized pushes
        for part in np.array_split(piece, 37):
            ep.push(part)
            assert len(ep._pending) < CHUNK
            assert ep._state.shape == (1, 2, 128)
        ep.push((0.001 * rng.standard_normal(777)).astype(np.float32))
    assert ep.processed <= ep.samples < ep.processed + CHUNK
