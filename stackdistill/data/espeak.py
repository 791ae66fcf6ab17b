"""Minimal ctypes binding to the espeak-ng library shipped in the `espeakng-loader` wheel.

Two things make espeak-ng's output vary: random breath noise (its own generator and libc's
rand(), both seeded by `speak`), and global synthesis state (the pitch-flutter phase, for one)
that carries from one utterance to the next and cannot be reset, so a waveform also depends on
what the process spoke before. `synth.generate` therefore speaks each fixed chunk of a corpus in
a fresh process.
"""

import ctypes
import threading

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_PHONEMES_IPA = 0x02
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Speaker:
    """The process-wide espeak-ng engine (initialised once); speaks text to int16 samples."""

    _instance: "Speaker | None" = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> "Speaker":
        """Returns the process's engine, initialising the library on first use."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        import espeakng_loader  # dev extra; imported here so the package imports without it

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size in bytes, terminator included
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position
            ctypes.c_uint,  # flags
            ctypes.POINTER(ctypes.c_uint),  # unique identifier (unused)
            ctypes.c_void_p,  # user data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        self._libc = ctypes.CDLL(None)  # the process's C library, for srand()
        self._libc.srand.argtypes = [ctypes.c_uint]
        self._libc.srand.restype = None
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive: the library holds it
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        self._voice = None

    def _collect(self, wav, num_samples, events) -> int:
        """Synth callback: copies each block of samples; returning 0 continues synthesis."""
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def set_voice(self, voice: str) -> None:
        """Selects a voice such as "en-us" or "en-gb-x-rp+f2"."""
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self._voice = voice

    def speak(
        self, text: str, voice: str, rate: int = 175, pitch: int = 50, seed: int = 1
    ) -> np.ndarray:
        """int16 samples at `self.sample_rate` of text spoken at rate (words/min), pitch 0-100."""
        with self._lock:
            self.set_voice(voice)
            self._lib.espeak_ng_SetRandSeed(seed)
            self._libc.srand(seed)
            self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            self._chunks = []
            data = text.encode() + b"\0"
            status = self._lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            self._lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed ({status}) on {text!r}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def phonemes(self, text: str, voice: str) -> str:
        """IPA phonemes of text: "_" between the phonemes of a word, " " between espeak's words."""
        with self._lock:
            self.set_voice(voice)
            encoded = text.encode()  # espeak advances a pointer into these bytes
            remaining = ctypes.c_char_p(encoded)
            clauses = []
            while remaining.value:
                mode = _PHONEMES_IPA | (ord("_") << 8)
                clause = self._lib.espeak_TextToPhonemes(ctypes.byref(remaining), _CHARS_UTF8, mode)
                if clause:
                    clauses.append(clause.decode().strip())
        return " ".join(c for c in clauses if c)
