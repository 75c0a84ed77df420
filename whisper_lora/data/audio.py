"""Audio decoding, resampling and log-mel features (16 kHz mono, Whisper's 30 s window)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from whisper_lora.errors import DataError

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # Whisper's input window
SILENCE_RMS = 1e-4  # below this the clip is treated as silence


class AudioError(DataError):
    """A file is missing or could not be decoded (in a corpus, a bad row with its reason)."""


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample float audio with librosa (no-op when the rates match)."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(audio.astype(np.float32), orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def check_signal(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Refuse a signal no model should see: no samples, or NaN/inf samples. Returns it as float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        raise AudioError(f"{name} holds no audio samples")
    bad = int(np.count_nonzero(~np.isfinite(audio)))
    if bad:
        raise AudioError(
            f"{name} has {bad} non-finite (NaN or infinite) samples of {audio.size}; refusing to transcribe it"
        )
    return audio


def load_audio(path: str | Path, sr: int = SAMPLE_RATE, validate: bool = True) -> np.ndarray:
    """Decode wav/flac/ogg (soundfile) or mp3 and more (librosa), downmix to mono, resample.

    With ``validate`` (default) an empty or non-finite signal raises ``AudioError`` (see
    ``check_signal``). Warnings of the fallback decoders are shown only when the
    ``whisper_lora`` logger is at DEBUG level.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"missing file {path}")
    try:
        audio, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
    except Exception:  # soundfile cannot read this container: let librosa's backends try
        try:
            import librosa

            with warnings.catch_warnings():
                if not logging.getLogger("whisper_lora").isEnabledFor(logging.DEBUG):
                    warnings.simplefilter("ignore")  # audioread's deprecation notice, per file
                audio, file_sr = librosa.load(str(path), sr=None, mono=True)
        except Exception as e:
            raise AudioError(f"cannot decode {path.name}: {type(e).__name__}: {e}") from None
    if validate:
        check_signal(audio, path.name)
    return resample(np.asarray(audio, np.float32), int(file_sr), sr)


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM wav."""
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")


def is_silent(audio: np.ndarray) -> bool:
    """True when the clip carries no signal worth transcribing."""
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio)))) < SILENCE_RMS
