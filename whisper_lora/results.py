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
    adapter: Scores | None  # None: the base alone was scored
    split: str | None = None  # which split of the corpus (train, dev, test)

    @property
    def n(self) -> int:
        return self.base.n

    def change(self, metric: str = "cer") -> float | None:
        """Relative change of one metric from base to adapter (-0.4: 40% fewer errors)."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        if self.adapter is None:
            return None
        return relative_change(getattr(self.base, metric), getattr(self.adapter, metric))

    def to_dict(self) -> dict:
        """The ``metrics`` record of ``whisper_lora.json``: split, n, base, adapter."""
        return {
            "split": self.split,
            "n": self.n,
            "base": self.base.to_dict(),
            "adapter": None if self.adapter is None else self.adapter.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Comparison | None:
        """Read a ``metrics`` record back; None when it holds no base scores."""
        if not d or not d.get("base"):
            return None
        adapter = Scores.from_dict(d["adapter"]) if d.get("adapter") else None
        return cls(Scores.from_dict({"n": d.get("n", 0), **d["base"]}), adapter, d.get("split"))
