"""The one record type every corpus reader yields, and the bad-row report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from whisper_lora.errors import DataError

# Reasons a row is skipped; every reader and the feature pipeline use these names.
BAD_REASONS: tuple[str, ...] = (
    "missing_file",
    "unreadable_audio",
    "empty_transcript",
    "too_long_audio",
    "too_long_labels",
    "silence",
)


@dataclass(frozen=True)
class Utterance:
    """One utterance of a corpus."""

    id: str  # unique within the corpus
    audio: str  # absolute path of the audio file
    text: str  # reference transcript
    language: str  # registry language code (``sw``, ``ary``, ...)
    duration: float | None = None  # seconds, when the corpus states it


@dataclass
class BadRows:
    """Rows skipped while reading or featurising a corpus, counted by reason."""

    total: int = 0  # rows seen
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few row ids per reason

    def add(self, reason: str, row_id: str) -> None:
        if reason not in BAD_REASONS:
            raise ValueError(f"unknown bad-row reason {reason!r}; valid: {', '.join(BAD_REASONS)}")
        self.reasons[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 3:
            ids.append(row_id)

    @property
    def bad(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: BadRows) -> BadRows:
        out = BadRows(self.total + other.total, self.reasons + other.reasons, dict(self.examples))
        for k, v in other.examples.items():
            out.examples[k] = (out.examples.get(k, []) + v)[:3]
        return out

    def summary(self) -> str:
        if not self.bad:
            return f"{self.total} rows, none skipped"
        parts = ", ".join(f"{r}: {n} (e.g. {', '.join(self.examples[r])})" for r, n in self.reasons.most_common())
        return f"{self.bad} of {self.total} rows skipped -- {parts}"

    def check(self, max_bad_fraction: float, what: str) -> None:
        """Raise ``DataError`` with the report when too many rows are bad."""
        if self.total and self.bad / self.total > max_bad_fraction:
            raise DataError(
                f"{what}: {self.bad / self.total:.0%} of rows are bad, more than the allowed "
                f"{max_bad_fraction:.0%} (max_bad_fraction). {self.summary()}"
            )
