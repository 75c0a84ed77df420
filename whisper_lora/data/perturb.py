"""Waveform augmentation as extra training examples: speed perturbation and additive noise.

Each copy is a fixed transformation of one utterance (``Example.perturbation``), applied whenever its
features are read, so copies cost no memory, give the same features every time (their noise is seeded
by the utterance id) and therefore get their own, reusable entries in the encoder cache.
Speed perturbation resamples the clip as Kaldi's recipes do: tempo and pitch change together, a copy
at speed 1.1 is 1/1.1 as long. Noise is white noise at a signal-to-noise ratio in dB.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from whisper_lora.data.audio import CHUNK_SECONDS, SAMPLE_RATE

SPEED_RANGE = (0.5, 2.0)  # speeds outside this range distort speech past usefulness
SNR_RANGE = (0.0, 60.0)


@dataclass(frozen=True)
class Perturbation:
    """One transformation of a clip: ``speed`` (1.0: unchanged) and white noise at ``snr_db`` (None: none)."""

    speed: float = 1.0
    snr_db: float | None = None

    @property
    def tag(self) -> str:
        """Suffix of the copy's id, e.g. ``sp0.9`` or ``snr20``."""
        parts = ([f"sp{self.speed:g}"] if self.speed != 1.0 else []) + (
            [f"snr{self.snr_db:g}"] if self.snr_db is not None else []
        )
        return "+".join(parts) or "clean"

    def apply(self, audio: np.ndarray, key: str) -> np.ndarray:
        """The perturbed 16 kHz clip; ``key`` (the utterance id) seeds the noise, so a copy never changes."""
        out = np.asarray(audio, dtype=np.float32)
        if self.speed != 1.0:
            import librosa

            # read the samples as if recorded at speed x the rate, then bring them back to 16 kHz
            out = librosa.resample(out, orig_sr=round(SAMPLE_RATE * self.speed), target_sr=SAMPLE_RATE)
        if self.snr_db is not None:
            rng = np.random.default_rng(zlib.crc32(f"{key}|{self.tag}".encode()))
            power = float(np.mean(np.square(out))) if out.size else 0.0
            scale = np.sqrt(power / 10 ** (self.snr_db / 10))
            out = out + rng.standard_normal(out.size).astype(np.float32) * np.float32(scale)
        return out.astype(np.float32, copy=False)


def perturbations(speeds: Sequence[float] = (), snrs_db: Sequence[float] = ()) -> list[Perturbation]:
    """One perturbation per speed and one per noise level (each alone, not combined)."""
    return [Perturbation(speed=float(s)) for s in speeds] + [Perturbation(snr_db=float(n)) for n in snrs_db]


def perturbed_copies(examples: Sequence, speeds: Sequence[float] = (), snrs_db: Sequence[float] = ()) -> list:
    """Extra training examples: every example once per speed and once per noise level.

    A copy whose slowed-down audio would pass Whisper's 30 s window is left out (its labels would
    cover audio the window cuts off), and so is a speed copy of an utterance with timestamped labels
    (its end time would be wrong). The originals are not included.
    """
    out = []
    for p in perturbations(speeds, snrs_db):
        for e in examples:
            duration = e.duration / p.speed
            if duration > CHUNK_SECONDS or (p.speed != 1.0 and e.timestamped):
                continue
            out.append(replace(e, id=f"{e.id}#{p.tag}", duration=duration, perturbation=p))
    return out
