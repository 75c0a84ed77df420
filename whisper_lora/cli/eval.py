"""``whisper-lora eval``: WER/CER of the base and an adapter side by side on one split of a corpus."""

from __future__ import annotations

import json

from whisper_lora.cli.options import add_base, run_precision
from whisper_lora.cli.report import metrics_table
from whisper_lora.errors import WhisperLoraError


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="WER/CER of the base and an adapter side by side")
    e.add_argument("--language", required=True, help="language code of the corpus (sw, cs, ary, ...)")
    e.add_argument("--data", required=True, help="corpus root or manifest")
    e.add_argument("--split", default="test", choices=["train", "dev", "test"], help="only this split is read")
    e.add_argument("--adapter", help="adapter directory to score next to the base (default: the base alone)")
    add_base(e)
    e.add_argument("--limit", type=int, help="score only the first N utterances")
    e.add_argument("--max-new-tokens", type=int, default=128, help="decoding cap per utterance (default 128)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--int8-threshold", type=float, default=6.0, help="LLM.int8 outlier threshold (0: batch-independent)"
    )
    e.set_defaults(fn=run)


def examples(a, language: str, processor, split: str) -> list:
    """The featurised utterances of one split of ``--data`` (only that split is read)."""
    from whisper_lora.data.prepare import prepare_splits

    ex = prepare_splits(a.data, language, processor, splits=(split,), max_bad_fraction=1.0, progress=not a.json)
    ex = ex[split]
    if not ex:
        raise WhisperLoraError(f"split {split!r} of {a.data} has no usable utterances")
    return ex[: a.limit] if a.limit else ex


def run(a) -> int:
    from whisper_lora.base.model import load_base_model
    from whisper_lora.inference.scoring import compare_base_and_adapter, evaluate_examples
    from whisper_lora.registry.adapter_io import load_adapter, read_metadata

    base = a.base or (read_metadata(a.adapter).base.get("name") if a.adapter else None) or "whisper-base"
    loaded = load_base_model(base, run_precision(a, "int8"), a.device or "auto", a.int8_threshold)
    model = loaded.model
    ex = examples(a, a.language, loaded.processor, a.split)
    kw = dict(max_new_tokens=a.max_new_tokens, progress=not a.json)
    if a.adapter:
        model = load_adapter(model, a.adapter)
        m = compare_base_and_adapter(model, loaded.processor, ex, a.language, **kw)
    else:
        m = {"base": evaluate_examples(model, loaded.processor, ex, a.language, **kw)[0].to_dict(), "adapter": None}
    keys = ("wer", "cer", "wer_orthographic", "cer_orthographic")
    if a.json:
        out = {"language": a.language, "n": len(ex), "split": a.split}
        out.update({k: None if m[k] is None else {x: m[k][x] for x in keys} for k in ("base", "adapter")})
        print(json.dumps(out))
    elif m["adapter"] is None:
        print(f"base on {a.split} ({len(ex)}): WER {m['base']['wer']:.3f} CER {m['base']['cer']:.3f}")
    else:
        print(metrics_table(a.language, {"split": a.split, "n": len(ex), **m}))
    return 0
