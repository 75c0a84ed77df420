"""``language_profile.safetensors``: how an adapter's own training speech sounded to Whisper's language ID.

Written by ``whisper-lora train`` (and ``whisper-lora adapters profile`` for older adapters) next to the
PEFT files. Two tensors and a header, nothing that runs code when read:

- ``logprobs``: float16 ``(utterances, languages)``, Whisper's language-ID log-probabilities of up to
  ``MAX_UTTERANCES`` training utterances, computed on the untouched base (first 30 s of each);
- ``encoder_mean``: float16 ``(utterances, d_model)``, the same utterances' last encoder layer
  averaged over the frames that hold audio (``inference/language_id.py``);
- header metadata: ``format`` (``whisper-lora/language-profile``), ``version`` (``1``), ``languages``
  (Whisper codes of the columns, space separated), ``base_fingerprint``, ``precision`` (of the base
  the profile was computed with) and ``utterances``.

The router (``inference/routing.py``) reads it; an adapter without one is routed by Whisper's own
language ID, and the registry says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_lora.atomic import atomic_write_bytes
from whisper_lora.errors import AdapterError

PROFILE_FILE = "language_profile.safetensors"
FORMAT = "whisper-lora/language-profile"
VERSION = "1"
MAX_UTTERANCES = 96  # enough for a stable profile (bench/routing.py); ~120 KB for whisper-base


@dataclass(frozen=True)
class LanguageProfile:
    """Whisper's language-ID log-probabilities over an adapter's training utterances."""

    languages: tuple[str, ...]  # Whisper language codes, one per column
    logprobs: np.ndarray  # (utterances, languages) float32
    encoder_mean: np.ndarray  # (utterances, d_model) float32
    base_fingerprint: str = "unknown"
    precision: str = "unknown"
    row_languages: tuple[str, ...] | None = None  # language of each row (routing backgrounds); None: one language

    def __post_init__(self) -> None:
        lp = np.asarray(self.logprobs, dtype=np.float32)
        h = np.asarray(self.encoder_mean, dtype=np.float32)
        if lp.ndim != 2 or lp.shape[0] < 1 or lp.shape[1] != len(self.languages):
            raise AdapterError(
                f"language profile has log-probabilities of shape {lp.shape} for {len(self.languages)} languages; "
                "expected (utterances >= 1, languages)"
            )
        if h.ndim != 2 or h.shape[0] != lp.shape[0]:
            raise AdapterError(f"language profile has encoder states of shape {h.shape} for {lp.shape[0]} utterances")
        if not np.isfinite(lp).all() or (lp > 1e-2).any() or not np.isfinite(h).all():
            raise AdapterError("language profile holds values that are not finite log-probabilities and states")
        object.__setattr__(self, "logprobs", lp)
        object.__setattr__(self, "encoder_mean", h)
        object.__setattr__(self, "languages", tuple(self.languages))
        if self.row_languages is not None:
            if len(self.row_languages) != lp.shape[0]:
                raise AdapterError(
                    f"language profile names {len(self.row_languages)} row languages for {lp.shape[0]} rows"
                )
            object.__setattr__(self, "row_languages", tuple(self.row_languages))

    def subset(self, rows: list[int]) -> LanguageProfile:
        """The profile restricted to some rows."""
        langs = None if self.row_languages is None else tuple(self.row_languages[i] for i in rows)
        return LanguageProfile(
            self.languages, self.logprobs[rows], self.encoder_mean[rows], self.base_fingerprint, self.precision, langs
        )

    @classmethod
    def from_evidence(cls, evidence, base_fingerprint: str, precision: str) -> LanguageProfile:
        """A profile from ``inference.language_id.LanguageEvidence`` of training utterances."""
        return cls(evidence.languages, evidence.logprobs, evidence.encoder_mean, base_fingerprint, precision)

    @property
    def utterances(self) -> int:
        return int(self.logprobs.shape[0])

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        meta = {
            "format": FORMAT,
            "version": VERSION,
            "languages": " ".join(self.languages),
            "base_fingerprint": self.base_fingerprint,
            "precision": self.precision,
            "utterances": str(self.utterances),
        }
        if self.row_languages is not None:
            meta["row_languages"] = " ".join(self.row_languages)
        tensors = {"logprobs": self.logprobs.astype(np.float16), "encoder_mean": self.encoder_mean.astype(np.float16)}
        return save(tensors, metadata=meta)


def write_profile(adapter_dir: str | Path, profile: LanguageProfile) -> Path:
    """Write (atomically) ``language_profile.safetensors`` into an adapter directory."""
    path = Path(adapter_dir) / PROFILE_FILE
    atomic_write_bytes(path, profile.to_bytes())
    return path


def read_profile(adapter_dir: str | Path) -> LanguageProfile | None:
    """The adapter's language profile; None when it has none; ``AdapterError`` when it is damaged."""
    path = Path(adapter_dir) / PROFILE_FILE
    return read_profile_file(path) if path.is_file() else None


def read_profile_file(path: str | Path) -> LanguageProfile:
    """A ``language_profile.safetensors``-format file (an adapter's, or a routing background)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise AdapterError(
                    f"{path.name} has format {meta.get('format')!r} version {meta.get('version')!r}; "
                    f"expected {FORMAT!r} version {VERSION}"
                )
            logprobs, encoder_mean = f.get_tensor("logprobs"), f.get_tensor("encoder_mean")
    except (SafetensorError, OSError, KeyError) as e:
        raise AdapterError(f"{path.name} is damaged (truncated or not safetensors): {e}") from None
    return LanguageProfile(
        tuple(meta.get("languages", "").split()),
        logprobs,
        encoder_mean,
        meta.get("base_fingerprint", "unknown"),
        meta.get("precision", "unknown"),
        tuple(meta["row_languages"].split()) if "row_languages" in meta else None,
    )
