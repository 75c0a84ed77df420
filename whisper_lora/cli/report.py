"""Tables the commands print."""

from __future__ import annotations


def metrics_table(language: str, m: dict) -> str:
    """Held-out base vs adapter scores (``AdapterMetadata.metrics`` layout) as a small table."""
    if "base" not in m:
        return "(no held-out test split: nothing to report)"
    rows = [
        f"held-out {m.get('split', 'test')} ({m.get('n', '?')} utterances, {language})",
        f"{'model':<10}{'WER':>8}{'CER':>8}{'WER orth':>10}{'CER orth':>10}",
    ]
    for k in ("base", "adapter"):
        s = m[k]
        rows.append(
            f"{k:<10}{s['wer']:>8.3f}{s['cer']:>8.3f}{s['wer_orthographic']:>10.3f}{s['cer_orthographic']:>10.3f}"
        )
    if m["base"]["cer"]:
        rows.append(f"relative CER change: {(m['adapter']['cer'] - m['base']['cer']) / m['base']['cer']:+.1%}")
    return "\n".join(rows)
