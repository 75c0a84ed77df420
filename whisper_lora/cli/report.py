"""Tables the commands print."""

from __future__ import annotations

from whisper_lora.results import Comparison


def metrics_table(language: str, result: Comparison | None) -> str:
    """Held-out base vs adapter scores as a small table."""
    if result is None:
        return "(no held-out test split: nothing to report)"
    rows = [
        f"held-out {result.split or 'test'} ({result.n} utterances, {language})",
        f"{'model':<10}{'WER':>8}{'CER':>8}{'WER orth':>10}{'CER orth':>10}",
    ]
    for name, s in (("base", result.base), ("adapter", result.adapter), ("trimmed", result.trimmed)):
        if s is not None:
            rows.append(f"{name:<10}{s.wer:>8.3f}{s.cer:>8.3f}{s.wer_orthographic:>10.3f}{s.cer_orthographic:>10.3f}")
    for metric in ("wer", "cer"):
        change = result.change(metric)
        if change is not None:
            rows.append(f"relative {metric.upper()} change: {change:+.1%}")
    if result.trimmed is not None:
        rows.append(
            "transcribe encodes this adapter's short inputs trimmed (WER no worse than 30 s windows)"
            if result.trimmed_chosen
            else "transcribe keeps 30 s windows for this adapter (trimmed input scored worse)"
        )
    return "\n".join(rows)
