"""Audio decoding, resampling and log-mel features (16 kHz mono, Whisper's 30 s window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

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


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode wav/flac/ogg (soundfile) or mp3 and more (librosa), downmix to mono, resample."""
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

            audio, file_sr = librosa.load(str(path), sr=None, mono=True)
        except Exception as e:
            raise AudioError(f"cannot decode {path.name}: {type(e).__name__}: {e}") from None
    return resample(np.asarray(audio, np.float32), int(file_sr), sr)


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM wav."""
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")


def is_silent(audio: np.ndarray) -> bool:
    """True when the clip carries no signal worth transcribing."""
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio)))) < SILENCE_RMS
