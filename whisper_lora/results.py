"""Typed evaluation results: ``Scores`` of one model, a ``Comparison`` of base and adapter.

Pure data (no model code), so every layer can read them: the registry's metadata, the CLI's
tables, the model cards and the benches all use these instead of digging in dicts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

METRICS = ("wer", "cer", "wer_orthographic", "cer_orthographic")


@dataclass(frozen=True)
class Scores:
    """Error rates over a set of utterances."""

    wer: float  # normalised word error rate
    cer: float  # normalised character error rate
    wer_orthographic: float  # on raw text (case and punctuation count)
    cer_orthographic: float
    n: int  # utterances scored (references that normalise to empty are dropped)

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Scores:
        """Read back ``to_dict`` (a missing ``n`` reads as 0)."""
        return cls(*(float(d.get(k, math.nan)) for k in METRICS), int(d.get("n", 0)))


def relative_change(before: float, after: float) -> float | None:
    """``(after - before) / before``; None when ``before`` is 0 or not a number."""
    if not before or math.isnan(before) or math.isnan(after):
        return None
    return (after - before) / before


@dataclass(frozen=True)
class Comparison:
    """The untouched base and an adapter scored on the same utterances."""

    base: Scores
    adapter: Scores | None  # None: the base alone was scored; decoded from 30 s windows, as every Whisper runtime does
    split: str | None = None  # which split of the corpus (train, dev, test)
    # the adapter again with its short inputs encoded trimmed (``base/trim.py``), for an adapter whose encoder was
    # trained so; None when not measured
    trimmed: Scores | None = None

    @property
    def n(self) -> int:
        return self.base.n

    @property
    def trimmed_chosen(self) -> bool:
        """Whether the adapter's short inputs are encoded trimmed: only where that was measured on the held-out split
        and scored at least as well as 30 s windows (WER no higher). The one home of this rule."""
        return self.trimmed is not None and self.adapter is not None and self.trimmed.wer <= self.adapter.wer

    @property
    def served(self) -> Scores | None:
        """The adapter's scores as ``Transcriber`` decodes it (trimmed where chosen, else windows)."""
        return self.trimmed if self.trimmed_chosen else self.adapter

    def change(self, metric: str = "cer") -> float | None:
        """Relative change of one metric from base to adapter (-0.4: 40% fewer errors)."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        if self.adapter is None:
            return None
        return relative_change(getattr(self.base, metric), getattr(self.adapter, metric))

    def to_dict(self) -> dict:
        """The ``metrics`` record of ``whisper_lora.json``: split, n, base, adapter (and adapter_trimmed)."""
        return {
            "split": self.split,
            "n": self.n,
            "base": self.base.to_dict(),
            "adapter": None if self.adapter is None else self.adapter.to_dict(),
            **({} if self.trimmed is None else {"adapter_trimmed": self.trimmed.to_dict()}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Comparison | None:
        """Read a ``metrics`` record back; None when it holds no base scores."""
        if not d or not d.get("base"):
            return None
        adapter = Scores.from_dict(d["adapter"]) if d.get("adapter") else None
        trimmed = Scores.from_dict(d["adapter_trimmed"]) if d.get("adapter_trimmed") else None
        return cls(Scores.from_dict({"n": d.get("n", 0), **d["base"]}), adapter, d.get("split"), trimmed)
