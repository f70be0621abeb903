"""Audio in for rtserve: client bytes -> 16 kHz mono float32 -> speech turns.

`decode` turns raw chunks, whole files and chunked container streams into mono float32 samples;
`resample` brings them to the engine's 16 kHz (one-shot or streaming, same output); `vad` scores
32 ms chunks with Silero VAD and turns the scores into speech-started / speech-stopped events.
Knows nothing of sessions or sockets: arrays, tensors and plain dataclasses in and out.
"""

from audio.decode import (
    AudioFormatError,
    StreamDecoder,
    decode_f32,
    decode_file,
    decode_pcm16,
    decode_pcma,
    decode_pcmu,
)
from audio.resample import StreamResampler, resample
from audio.vad import (
    Endpointer,
    SileroVAD,
    SpeechStarted,
    SpeechStopped,
    VadConfig,
    VadEvent,
    load_vad,
    shared_vad,
)

__all__ = [
    "AudioFormatError",
    "Endpointer",
    "SileroVAD",
    "SpeechStarted",
    "SpeechStopped",
    "StreamDecoder",
    "StreamResampler",
    "VadConfig",
    "VadEvent",
    "decode_f32",
    "decode_file",
    "decode_pcm16",
    "decode_pcma",
    "decode_pcmu",
    "load_vad",
    "resample",
    "shared_vad",
]
