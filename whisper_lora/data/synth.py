"""Synthetic speech corpora from espeak-ng (through the ``espeakng-loader`` package).

Writes the DVoice layout (``texts/{train,dev,test}.csv`` + ``wavs/``) so that the same
readers and training code serve synthetic and real data. Voices, speed and pitch vary per
utterance; the voice set is selectable so held-out voices can differ from training voices.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from whisper_lora.atomic import atomic_directory
from whisper_lora.data.audio import SAMPLE_RATE, resample, write_wav
from whisper_lora.errors import ConfigError, DataError, format_choices
from whisper_lora.languages import resolve_language

# espeak-ng API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_RAND_SEED = 1  # espeak-ng's noise generator, seeded before each utterance
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_SYNTH_ARGS = [
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_void_p,
]

# Voice variants: the default split keeps some voices out of training entirely.
TRAIN_VOICES: tuple[str, ...] = ("m1", "m3", "m5", "m7", "f1", "f3", "f5", "klatt", "klatt3", "iven", "john", "quincy")
TEST_VOICES: tuple[str, ...] = ("m2", "m4", "f2", "f4", "klatt2", "robert")

_LOCK = threading.Lock()


class _Espeak:
    """espeak-ng, loaded afresh for every utterance; synthesis is serialised by a lock.

    espeak-ng keeps synthesis state in C statics that nothing resets (the pitch-flutter index and the
    glottal phase in wavegen.c, advanced every 64 samples): the same text, voice, speed and pitch then
    sound different depending on what the process spoke before (waveforms correlate only 0.4-0.7).
    Its noise (breath, voicing) also draws from its own generator, seeded from the clock unless set.
    So each utterance unloads the library (dlclose), loads it again (resetting the statics, about 7 ms)
    and seeds the generator: an utterance then depends only on its arguments, in any process and after
    any other; corpora are reproducible and tests hear the same audio in any order.
    """

    _instance: _Espeak | None = None

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise DataError("synthetic corpora need espeak-ng: pip install 'whisper-lora[synth]'") from None
        self.lib_path = str(espeakng_loader.get_library_path())
        self.data_path = Path(espeakng_loader.get_data_path())
        self._chunks: list[np.ndarray] = []

        def _collect(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = _CALLBACK(_collect)  # keep a reference: ctypes must not free it
        with self._session():
            pass  # checks that espeak-ng initialises and reads its sample rate

    @contextlib.contextmanager
    def _session(self):
        """The library freshly loaded (its C statics at their initial values) and initialised;
        terminated and unloaded on exit."""
        import _ctypes

        lib = ctypes.CDLL(self.lib_path)
        try:
            self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), 0)
            if self.rate <= 0:
                raise DataError(f"espeak-ng failed to initialise (data path {self.data_path})")
            try:
                yield lib
            finally:
                lib.espeak_Terminate()
        finally:
            handle = lib._handle
            del lib
            _ctypes.dlclose(handle)

    @classmethod
    def get(cls) -> _Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def variants(self) -> list[str]:
        return sorted(p.name for p in (self.data_path / "voices" / "!v").iterdir())

    def say(self, text: str, voice: str, variant: str, speed: int, pitch: int) -> np.ndarray:
        """Synthesize ``text``; returns float32 mono audio at 16 kHz."""
        name = f"{voice}+{variant}".encode()
        self._chunks = []
        with self._session() as lib:
            seed = getattr(lib, "espeak_ng_SetRandSeed", None)  # espeak-ng >= 1.52
            if seed is not None:
                seed(ctypes.c_long(_RAND_SEED))  # its own noise generator
            lib.espeak_SetSynthCallback(self._cb)
            if lib.espeak_SetVoiceByName(name) != 0:
                raise ConfigError(
                    f"espeak-ng has no voice {name.decode()!r}; variants: {format_choices(self.variants())}"
                )
            lib.espeak_SetParameter(_RATE, int(speed), 0)
            lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            lib.espeak_Synth.argtypes = _SYNTH_ARGS
            raw = text.encode("utf-8") + b"\0"
            err = lib.espeak_Synth(raw, len(raw), 0, 0, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise DataError(f"espeak-ng failed on {text!r} (error {err})")
            lib.espeak_Synchronize()
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return resample(pcm.astype(np.float32) / 32768.0, self.rate, SAMPLE_RATE)


def synthesize(text: str, language: str, variant: str = "m1", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` in ``language`` with an espeak-ng voice variant; 16 kHz float32 mono."""
    lang = resolve_language(language)
    if lang.espeak is None:
        raise ConfigError(f"espeak-ng has no voice for {language!r}")
    with _LOCK:
        return _Espeak.get().say(text, lang.espeak, variant, speed, pitch)


def shipped_sentences(language: str, split: str) -> list[str]:
    """Sentence lists shipped with the package (``train`` or ``test``) for a language."""
    code = resolve_language(language).code
    root = resources.files("whisper_lora") / "sentences"
    name = f"{code}_{split}.txt"
    if not (root / name).is_file():
        have = sorted(p.name for p in root.iterdir() if p.name.endswith(".txt"))
        raise ConfigError(f"no shipped sentence list {name!r}; shipped: {format_choices(have)}")
    return read_sentences(root / name)


def read_sentences(path) -> list[str]:
    """One sentence a line; blank lines and ``#`` comments are skipped."""
    lines = Path(str(path)).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


@dataclass(frozen=True)
class SynthSplit:
    """One split of a synthetic corpus."""

    name: str  # train, dev or test
    sentences: Sequence[str]  # text to speak
    voices: Sequence[str] = TRAIN_VOICES  # espeak-ng variants to draw from
    repeats: int = 1  # how many voices speak each sentence


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic DVoice-layout corpus."""

    language: str  # ISO code with an espeak-ng voice (sw, id, cs, ...)
    splits: Sequence[SynthSplit] = field(default_factory=tuple)
    speed: tuple[int, int] = (140, 185)  # words per minute, drawn uniformly
    pitch: tuple[int, int] = (30, 70)  # espeak pitch 0..99, drawn uniformly
    seed: int = 0


def synthesize_corpus(cfg: SynthConfig, out: str | Path, progress: bool = True) -> Path:
    """Write a DVoice-layout corpus for ``cfg`` to ``out`` atomically; returns ``out``."""
    from tqdm.auto import tqdm

    lang = resolve_language(cfg.language)
    if lang.espeak is None:
        raise ConfigError(f"espeak-ng has no voice for {cfg.language!r}")
    available = set(_Espeak.get().variants())
    for split in cfg.splits:
        bad = [v for v in split.voices if v not in available]
        if bad:
            raise ConfigError(
                f"unknown espeak-ng variants {bad} in split {split.name!r}; valid: {format_choices(available)}"
            )
        if not split.sentences:
            raise ConfigError(f"split {split.name!r} has no sentences")
    rng = random.Random(cfg.seed)
    total = sum(len(s.sentences) * s.repeats for s in cfg.splits)
    with atomic_directory(out) as tmp, tqdm(total=total, desc=f"synth {lang.code}", disable=not progress) as bar:
        (tmp / "wavs").mkdir()
        (tmp / "texts").mkdir()
        for split in cfg.splits:
            rows = []
            for i, text in enumerate(split.sentences):
                for r, variant in enumerate(rng.sample(list(split.voices), k=min(split.repeats, len(split.voices)))):
                    audio = synthesize(text, lang.code, variant, rng.randint(*cfg.speed), rng.randint(*cfg.pitch))
                    name = f"{lang.code}_{split.name}_{i:05d}_{r}_{variant}.wav"
                    write_wav(tmp / "wavs" / name, audio)
                    rows.append((name, text, f"{len(audio) / SAMPLE_RATE:.3f}"))
                    bar.update()
            with open(tmp / "texts" / f"{split.name}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f, delimiter="\t")
                w.writerow(("wav", "words", "duration"))
                w.writerows(rows)
    return Path(out)
