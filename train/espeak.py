"""espeak-ng in process: the library and voice data of the `espeakng-loader` wheel, through ctypes.

The wheel is self-contained (libespeak-ng 1.52 and its data, manylinux), so the same voices run
on the development machine and on a GPU host without system packages, and synthesis costs no
process start per utterance. One `Voice` per process: espeak-ng keeps global state.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import numpy as np

_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: callbacks run inside espeak_Synth
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_WORD, _END_OF_LIST = 1, 0  # espeak_EVENT_TYPE


class _Event(ctypes.Structure):
    """speak_lib.h's espeak_EVENT."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters
        ("length", ctypes.c_int),  # characters
        ("audio_position", ctypes.c_int),  # ms from the start of the synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class Word(NamedTuple):
    start: int  # character offset of the word in the text
    end: int  # one past its last character
    seconds: float  # where it starts in the waveform


class EspeakError(RuntimeError):
    pass


class Voice:
    """Synthesizes text with any espeak-ng voice (`en-us+m3`), rate (words per minute), pitch."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._libc = ctypes.CDLL(None)
        self._lib.espeak_Initialize.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
        ]  # fmt: skip
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data = espeakng_loader.get_data_path().encode()
        self.rate = self._lib.espeak_Initialize(_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[np.ndarray] = []
        self._words: list[Word] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library holds it
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _END_OF_LIST:
            e = events[i]
            if e.type == _WORD:
                start = e.text_position - 1
                self._words.append(Word(start, start + e.length, e.audio_position / 1000))
            i += 1
        return 0  # go on

    def __call__(
        self, text: str, voice: str, rate: int, pitch: int
    ) -> tuple[np.ndarray, list[Word]]:
        """The waveform (float32 in [-1, 1], at `self.rate` Hz) and where its words start.
        Text positions count characters: the text must be ASCII (it is: train/texts.py)."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"unknown espeak-ng voice {voice!r}")
        self._lib.espeak_SetParameter(_RATE, rate, 0)
        self._lib.espeak_SetParameter(_PITCH, pitch, 0)
        # Klatt voices draw noise from generators that live on between calls: reseed it, so
        # that an utterance does not depend on what this process said before.
        self._lib.espeak_ng_SetRandSeed(0)
        self._libc.srand(0)  # and some of its noise comes from libc's rand()
        raw = text.encode()
        self._chunks, self._words = [], []
        err = self._lib.espeak_Synth(
            raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if err != 0:
            raise EspeakError(f"espeak_Synth failed ({err}) on {text!r}")
        if not self._chunks:
            return np.zeros(0, np.float32), []
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0, self._words
