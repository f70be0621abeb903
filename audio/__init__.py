"""Audio in for rtserve: client bytes -> 16 kHz mono float32 -> speech turns and features.

`decode` turns raw chunks, whole files and chunked container streams into mono float32 samples;
`resample` brings them to the engine's 16 kHz (one-shot or streaming, same output); `input`
chains the two for one client stream; `vad` scores 32 ms chunks with Silero VAD and turns the
scores into speech-started / speech-stopped events; `features` computes model front ends (Whisper
log-mel). Knows nothing of sessions or sockets: arrays, tensors and plain dataclasses in and out.
Import the submodules directly: `audio.features` needs only torch, `audio.decode` needs av.
"""
