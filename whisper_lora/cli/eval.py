"""``whisper-lora eval``: WER/CER of the base and an adapter side by side on one split of a corpus.

Decodes exactly as ``whisper-lora transcribe`` does with the same flags (same base precision,
int8 outlier threshold 0, decoding settings and loop guard); the base's scores are cached
(``inference/score_cache.py``) so a second evaluation on the same corpus decodes only the adapter.
"""

from __future__ import annotations

import contextlib
import json

from whisper_lora.atomic import target_lock
from whisper_lora.cli.options import add_base, add_decoding, decoding_from, run_precision
from whisper_lora.cli.report import metrics_table
from whisper_lora.errors import WhisperLoraError


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="WER/CER of the base and an adapter side by side, decoded as transcribe does")
    e.add_argument("--language", required=True, help="language code of the corpus (sw, cs, ary, ...)")
    e.add_argument("--data", required=True, help="corpus root or manifest")
    e.add_argument("--split", default="test", choices=["train", "dev", "test"], help="only this split is read")
    e.add_argument("--adapter", help="adapter directory to score next to the base (default: the base alone)")
    add_base(e)
    add_decoding(e)
    e.add_argument("--limit", type=int, help="score only the first N utterances")
    e.add_argument("--batch-size", type=int, default=8, help="clips decoded together (default 8)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--int8-threshold", type=float, default=0.0, help="LLM.int8 outlier threshold (default 0, as transcribe)"
    )
    e.add_argument("--no-cache", action="store_true", help="decode the base again instead of reusing cached scores")
    e.add_argument(
        "--write-metadata",
        action="store_true",
        help="store the result in the adapter's metadata and card (refused when the adapter was replaced meanwhile)",
    )
    e.set_defaults(fn=run)


def examples(a, language: str, processor, split: str, token: str | None = None) -> list:
    """The featurised utterances of one split of ``--data`` (only that split is read); ``token``: the Whisper token
    code decoding is prompted with (None: the language's own or proxy)."""
    from whisper_lora.data.prepare import prepare_splits

    ex = prepare_splits(
        a.data, language, processor, splits=(split,), max_bad_fraction=1.0, progress=not a.json, token=token
    )
    ex = ex[split]
    if not ex:
        raise WhisperLoraError(f"split {split!r} of {a.data} has no usable utterances")
    return ex[: a.limit] if a.limit else ex


def run(a) -> int:
    from whisper_lora.base.model import load_base_model
    from whisper_lora.inference.score_cache import ScoreCache, ScoreKey
    from whisper_lora.inference.scoring import Comparison, compare_base_and_adapter, evaluate_examples, scored_with
    from whisper_lora.languages import resolve_language
    from whisper_lora.registry.adapter_io import load_adapter, read_metadata, update_metrics, weights_digest

    if a.write_metadata and not a.adapter:
        raise WhisperLoraError("--write-metadata needs --adapter")
    meta = read_metadata(a.adapter) if a.adapter else None  # a missing or broken adapter fails before any loading
    base = a.base or (meta.base.get("name") if meta else None) or "whisper-base"
    loaded = load_base_model(base, run_precision(a, "int8"), a.device or "auto", a.int8_threshold)
    decoding = decoding_from(a)
    model = None
    if a.adapter:  # first: an adapter that adds a language token gives it to the base and its tokenizer
        with target_lock(a.adapter) if a.write_metadata else contextlib.nullcontext():
            scored = weights_digest(a.adapter) if a.write_metadata else None  # of the very weights loaded
            model = load_adapter(loaded.model, a.adapter, tokenizer=loaded.processor.tokenizer)
    # an adapter's own language decodes with the adapter's token (its own, a proxy's, or the one it adds)
    own = meta is not None and resolve_language(meta.language).code == resolve_language(a.language).code
    token = meta.whisper_language if own else None
    base_token = meta.base_token if own else None  # the untouched base: the proxy of a token the adapter adds
    ex = examples(a, a.language, loaded.processor, a.split, token)
    kw = dict(decoding=decoding, batch_size=a.batch_size, progress=not a.json, token=token)
    cache = ScoreCache()
    key = ScoreKey.for_run(loaded.info, loaded.model, ex, a.split, a.language, decoding, base_token)
    known = None if a.no_cache else cache.get(key)
    if model is not None:
        trim = meta.trim_padding  # an encoder trained trimmed is scored both ways, as train does
        result = compare_base_and_adapter(
            model, loaded.processor, ex, a.language, a.split, known, base_token=base_token, trim=trim, **kw
        )
    else:
        base_scores = known or evaluate_examples(loaded.model, loaded.processor, ex, a.language, desc="base", **kw)[0]
        result = Comparison(base_scores, None, a.split)
    cache.put(key, result.base)
    if a.json:
        print(json.dumps({"language": a.language, **result.to_dict(), **scored_with(loaded.info.precision, decoding)}))
    elif result.adapter is None:
        print(f"base on {a.split} ({result.n}): WER {result.base.wer:.3f} CER {result.base.cer:.3f}")
    else:
        print(metrics_table(a.language, result))
    if a.write_metadata:  # after the scores are shown: a refusal (the adapter was replaced) does not lose them
        update_metrics(a.adapter, {**result.to_dict(), **scored_with(loaded.info.precision, decoding)}, scored)
    return 0
