"""The ``whisper-lora`` command line: synth, train, eval, convert."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from .errors import WhisperLoraError

log = logging.getLogger("whisper_lora")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None, help="base model: whisper-base (default, offline), a path or a hub id")
    p.add_argument(
        "--precision",
        default=None,
        choices=["auto", "int8", "nf4", "bf16", "fp32"],
        help="base weights (train: auto, chosen for the device; eval/transcribe/serve: int8)",
    )
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")


def _precision(a, default: str) -> str:
    """``--precision`` for commands that load a base to run it: ``auto`` (a training choice) means their default."""
    return default if a.precision in (None, "auto") else a.precision


def _add_server(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--adapters", help="adapter registry directory (default: the repository's adapters/)")
    _add_common(p)
    p.add_argument("--max-new-tokens", type=int, default=224)


def _cmd_synth(a) -> int:
    from .data.synth import TEST_VOICES, TRAIN_VOICES, SynthConfig, SynthSplit, read_sentences, synthesize_corpus
    from .data.synth_presets import default_synth_config

    if a.sentences:
        train = read_sentences(a.sentences)
        test = read_sentences(a.test_sentences) if a.test_sentences else []
        n_dev = max(1, len(train) // 10)
        voices = a.voices.split(",") if a.voices else TRAIN_VOICES
        test_voices = a.test_voices.split(",") if a.test_voices else TEST_VOICES
        splits = [
            SynthSplit("train", train[:-n_dev], voices, a.repeats),
            SynthSplit("dev", train[-n_dev:], test_voices),
        ]
        if test:
            splits.append(SynthSplit("test", test, test_voices))
        cfg = SynthConfig(a.language, tuple(splits), seed=a.seed)
    else:
        cfg = default_synth_config(a.language, train_repeats=a.repeats, seed=a.seed)
    out = synthesize_corpus(cfg, a.out)
    print(f"wrote {out}")
    return 0


def _trim_arg(value: str) -> float | str:
    """``--trim-padding``: seconds, ``auto`` or ``none``."""
    if value.lower() in ("auto", "none"):
        return value.lower()  # TrainConfig reads "none" as null
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give seconds (e.g. 1.0), auto or none") from None


def _train_config(a):
    from .config import TrainConfig

    overrides = {
        k: getattr(a, k)
        for k in (
            "language",
            "data",
            "out",
            "base",
            "precision",
            "device",
            "max_steps",
            "max_minutes",
            "batch_size",
            "learning_rate",
            "seed",
            "timestamp_share",
            "trim_padding",
            "speed_perturb",
            "noise_snr_db",
        )
    }
    if a.config:
        return TrainConfig.from_yaml(a.config, **overrides)
    missing = [k for k in ("language", "data") if not overrides[k]]
    if missing:
        raise WhisperLoraError(f"train needs --{' and --'.join(missing)} (or --config FILE)")
    return TrainConfig(**{k: v for k, v in overrides.items() if v is not None})


def _cmd_train(a) -> int:
    from .train import train_adapter

    cfg = _train_config(a)
    result = train_adapter(cfg, resume=a.resume, progress=not (a.quiet or a.no_progress))
    t = result.metadata.training
    of = f" of {cfg.max_steps}" if cfg.max_steps else ""
    timed = cfg.max_minutes and (not cfg.max_steps or t["steps"] < cfg.max_steps)
    cut = f", stopped by the {cfg.max_minutes}-minute cap" if timed else ""
    print(f"trained {t['steps']}{of} steps in {t['minutes']} min{cut}; kept step {t['best_step']}")
    print(_metrics_table(result.metadata.language, result.metadata.metrics))
    print(f"adapter written to {result.adapter_dir}")
    return 0


def _metrics_table(language: str, m: dict) -> str:
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


def _examples(a, language: str, processor, split: str) -> list:
    """The featurised utterances of one split of ``--data`` (only that split is read)."""
    from .data.prepare import prepare_splits

    examples = prepare_splits(a.data, language, processor, splits=(split,), max_bad_fraction=1.0, progress=not a.json)[
        split
    ]
    if not examples:
        raise WhisperLoraError(f"split {split!r} of {a.data} has no usable utterances")
    return examples[: a.limit] if a.limit else examples


def _cmd_eval(a) -> int:
    from .adapter_io import load_adapter, read_metadata
    from .evaluate import compare_base_and_adapter, evaluate_examples
    from .model import load_base_model

    base = a.base or (read_metadata(a.adapter).base.get("name") if a.adapter else None) or "whisper-base"
    loaded = load_base_model(base, _precision(a, "int8"), a.device or "auto", a.int8_threshold)
    model = loaded.model
    examples = _examples(a, a.language, loaded.processor, a.split)
    kw = dict(max_new_tokens=a.max_new_tokens, progress=not a.json)
    if a.adapter:
        model = load_adapter(model, a.adapter)
        m = compare_base_and_adapter(model, loaded.processor, examples, a.language, **kw)
    else:
        m = {
            "base": evaluate_examples(model, loaded.processor, examples, a.language, **kw)[0].to_dict(),
            "adapter": None,
        }
    keys = ("wer", "cer", "wer_orthographic", "cer_orthographic")
    if a.json:
        out = {"language": a.language, "n": len(examples), "split": a.split}
        out.update({k: None if m[k] is None else {x: m[k][x] for x in keys} for k in ("base", "adapter")})
        print(json.dumps(out))
    elif m["adapter"] is None:
        print(f"base on {a.split} ({len(examples)}): WER {m['base']['wer']:.3f} CER {m['base']['cer']:.3f}")
    else:
        print(_metrics_table(a.language, {"split": a.split, "n": len(examples), **m}))
    return 0


def _cmd_convert(a) -> int:
    from .ct2_import import convert_ct2_checkpoint

    print(f"wrote {convert_ct2_checkpoint([Path(p) for p in a.src], a.out)}")
    return 0


def _transcriber(a, **kw):
    from .transcriber import Transcriber

    return Transcriber(a.base, a.adapters, precision=_precision(a, "int8"), device=a.device or "auto", **kw)


def _word_timestamps(a) -> bool:
    """Word alignment: asked for, or by default for subtitles (it puts cue starts within ~0.3 s; see README)."""
    return a.word_timestamps if a.word_timestamps is not None else a.format in ("srt", "vtt")


def _decode_options(a):
    from .longform import DecodeOptions

    temps = tuple(a.temperature) if a.temperature else DecodeOptions().temperature
    return DecodeOptions(
        temperature=temps,
        condition_on_previous_text=not a.no_condition,
        prompt=a.prompt,
        word_timestamps=_word_timestamps(a),
    )


def _cmd_transcribe(a) -> int:
    from .atomic import atomic_write_text
    from .formats import EXTENSIONS, TIMED_FORMATS, check_format, render

    fmt = "json_lines" if a.json else a.format
    if fmt not in ("line", "json_lines"):
        check_format(fmt)
    missing = [f for f in a.files if not Path(f).is_file()]
    if missing:
        raise WhisperLoraError(f"no such file: {', '.join(missing)}")
    options = _decode_options(a)
    t = _transcriber(a, num_beams=a.beams, detect_threshold=a.threshold, decode_options=options)
    timed = fmt in TIMED_FORMATS or bool(a.word_timestamps)
    for f in a.files:
        r = t.transcribe(f, a.language, timestamps=timed)
        if fmt == "json_lines":
            doc = json.dumps({"file": f, **r.to_dict()}, ensure_ascii=False) + "\n"
        elif fmt == "line":
            prob = f" p={r.language_probability:.2f}" if r.language_probability is not None else ""
            doc = f"{f}\t[{r.language}{prob} adapter={r.adapter or 'base'}]\t{r.text}\n"
        else:
            doc = render(r, fmt, words=bool(a.word_timestamps))
        if a.output_dir:
            out = Path(a.output_dir) / f"{Path(f).stem}.{EXTENSIONS.get(fmt, 'txt')}"
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, doc)
            log.info("wrote %s", out)
        else:
            sys.stdout.write(doc)
            sys.stdout.flush()
    return 0


def _cmd_adapters_card(a) -> int:
    from .card import make_hub_ready
    from .registry import AdapterRegistry

    good, broken = AdapterRegistry(a.adapters).scan()
    for e in good:
        print(f"{e.path}: base {make_hub_ready(e.path)}, card written")
    for b in broken:
        print(f"{b.name}: broken, left as is ({b.reason})")
    return 0


def _cmd_adapters_vllm(a) -> int:
    from .registry import AdapterRegistry
    from .vllm_export import plan_vllm

    langs = [x.strip() for x in a.languages.split(",") if x.strip()] if a.languages else None
    plan = plan_vllm(AdapterRegistry(a.adapters), langs, base=a.base, base_adapter=a.base_adapter)
    print(plan.command() if a.command else " ".join(plan.serve_args()))
    return 0


def _cmd_adapters(a) -> int:
    from .registry import AdapterRegistry

    reg = AdapterRegistry(a.adapters)
    if a.base:
        from .model import describe_base
        from .resolve import resolve_base

        reg = reg.with_base(describe_base(a.base, resolve_base(a.base), "int8"))
    good, broken = reg.scan()
    rows = []
    for e in good:
        m = e.metadata.metrics
        rows.append(
            {
                "language": e.name,
                "whisper_language": e.whisper_language,
                "path": str(e.path),
                "base": e.metadata.base.get("name"),
                "rank": e.metadata.lora.get("r"),
                "size_mb": round(sum(f.stat().st_size for f in e.path.iterdir()) / 1e6, 2),
                "test_wer": (m.get("adapter") or {}).get("wer"),
                "base_test_wer": (m.get("base") or {}).get("wer"),
                "test_cer": (m.get("adapter") or {}).get("cer"),
                "base_test_cer": (m.get("base") or {}).get("cer"),
            }
        )
    if a.json:
        for r in rows:
            print(json.dumps(r))
        for b in broken:
            print(json.dumps({"language": b.name, "broken": True, **b.to_dict()}))
    else:
        print(
            f"{'lang':<6}{'whisper':<9}{'base':<14}{'r':>4}{'MB':>7}{'WER':>8}{'base WER':>10}{'CER':>8}{'base CER':>10}"
        )
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"  # noqa: E731
        for r in rows:
            print(
                f"{r['language']:<6}{r['whisper_language']:<9}{str(r['base']):<14}{r['rank']:>4}{r['size_mb']:>7}"
                f"{fmt(r['test_wer']):>8}{fmt(r['base_test_wer']):>10}{fmt(r['test_cer']):>8}{fmt(r['base_test_cer']):>10}"
            )
        if broken:
            print(f"\nbroken ({len(broken)}), left out:")
            for b in broken:
                print(f"{b.name:<6}{b.reason}")
    if broken and a.strict:
        print(f"whisper-lora: error: {len(broken)} broken adapter(s) in {reg.root}", file=sys.stderr)
        return 1
    return 0


def _cmd_merge(a) -> int:
    from .adapter_io import read_metadata
    from .merge import merge_adapter

    examples = None
    if a.data:
        from .model import load_base_model

        meta = read_metadata(a.adapter)
        processor = load_base_model(a.base or meta.base["name"], "fp32", "cpu").processor
        a.json = True  # no progress bars around the JSON report
        examples = _examples(a, meta.language, processor, "test")
    report = merge_adapter(a.adapter, a.out, a.base, _precision(a, "fp32"), examples, a.ct2, a.ct2_quantization)
    print(report.to_json())
    return 0


def _cmd_serve(a) -> int:
    from .serving.server import ServerConfig, serve

    t = _transcriber(a, num_beams=a.beams, max_new_tokens=a.max_new_tokens)
    cfg = ServerConfig(max_upload_bytes=int(a.max_upload_mb * 2**20), max_batch=a.max_batch, max_wait_ms=a.max_wait_ms)
    serve(t, a.host, a.port, cfg)
    return 0


def _cmd_demo(a) -> int:
    from .serving.demo import build_demo

    t = _transcriber(a, max_new_tokens=a.max_new_tokens)
    build_demo(t).launch(server_name=a.host, server_port=a.port, share=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisper-lora", description="Per-language LoRA adapters for Whisper")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more messages (-vv: third-party too)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic DVoice-layout corpus with espeak-ng")
    s.add_argument("--language", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--sentences", help="training sentences, one a line (default: the shipped list)")
    s.add_argument("--test-sentences", help="held-out sentences for the test split")
    s.add_argument("--voices", help="comma-separated espeak-ng variants for training (default: the training set)")
    s.add_argument("--test-voices", help="variants for dev/test (default: voices never used for training)")
    s.add_argument("--repeats", type=int, default=2, help="voices per training sentence")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_synth)

    t = sub.add_parser("train", help="train one language's adapter")
    t.add_argument("--config", help="YAML file mapping onto TrainConfig; flags override it")
    t.add_argument("--language")
    t.add_argument("--data", help="corpus root or manifest")
    t.add_argument("--out", help="adapter directory (default adapters/<language>)")
    _add_common(t)
    t.add_argument("--max-steps", type=int, help="optimizer steps (default 300; no step cap with --max-minutes alone)")
    t.add_argument(
        "--max-minutes", type=float, help="wall-clock training budget; the learning rate decays to 0 at its end"
    )
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument(
        "--timestamp-share",
        type=float,
        help="share of utterances with timestamped labels spanning the clip (default 0; see README)",
    )
    t.add_argument(
        "--trim-padding",
        type=_trim_arg,
        help="train the encoder on each clip plus this many seconds instead of 30 s windows; 'none': 30 s windows "
        "(default auto: 1 s when every encoder layer is adapted; see README)",
    )
    t.add_argument(
        "--speed-perturb",
        type=float,
        nargs="+",
        metavar="SPEED",
        help="add a copy of every training clip at each speed, e.g. 0.9 1.1 (default none; see README)",
    )
    t.add_argument(
        "--noise-snr-db",
        type=float,
        nargs="+",
        metavar="DB",
        help="add a copy of every training clip with white noise at each signal-to-noise ratio (default none)",
    )
    t.add_argument("--resume", action="store_true", help="continue from <out>.checkpoint")
    t.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="WER/CER of the base and an adapter side by side")
    e.add_argument("--language", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=["train", "dev", "test"], help="only this split is read")
    e.add_argument("--adapter")
    _add_common(e)
    e.add_argument("--limit", type=int, help="score only the first N utterances")
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--int8-threshold", type=float, default=6.0, help="LLM.int8 outlier threshold (0: batch-independent)"
    )
    e.set_defaults(fn=_cmd_eval)

    tr = sub.add_parser("transcribe", help="transcribe files, routing each to its language's adapter")
    tr.add_argument("files", nargs="+")
    tr.add_argument("--language", default="auto", help="language code, or auto (Whisper's language ID picks)")
    tr.add_argument("--adapters", help="adapter registry directory (default: the repository's adapters/)")
    _add_common(tr)
    tr.add_argument("--beams", type=int, default=1)
    tr.add_argument("--threshold", type=float, default=0.5, help="auto mode: below this confidence the base is used")
    tr.add_argument("--json", action="store_true", help="one JSON line per file (same as --format json_lines)")
    tr.add_argument(
        "--format",
        default="line",
        choices=["line", "json_lines", "txt", "json", "verbose_json", "srt", "vtt"],
        help="output: line (file, language, adapter, text), txt, json, verbose_json (segments), srt, vtt",
    )
    tr.add_argument("--output-dir", help="write <file stem>.<ext> per input here instead of printing")
    tr.add_argument(
        "--word-timestamps",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="word times from the alignment heads, which also bound each segment (default: on for srt and vtt)",
    )
    tr.add_argument(
        "--temperature", type=float, nargs="+", help="temperature fallback ladder (default: 0 0.2 0.4 0.6 0.8 1)"
    )
    tr.add_argument("--prompt", help="initial prompt: vocabulary, names, spelling")
    tr.add_argument("--no-condition", action="store_true", help="do not prompt each window with the previous text")
    tr.set_defaults(fn=_cmd_transcribe)

    ad = sub.add_parser("adapters", help="inspect the adapter registry")
    ad_sub = ad.add_subparsers(dest="action", required=True)
    ls = ad_sub.add_parser("list", help="adapters by language with their held-out WER/CER")
    ls.add_argument("--adapters", help="registry directory (default: the repository's adapters/)")
    ls.add_argument("--json", action="store_true", help="one JSON line per adapter (broken ones with a reason)")
    ls.add_argument("--base", help="also check compatibility with this base (name, path or hub id)")
    ls.add_argument("--strict", action="store_true", help="exit with status 1 when any adapter is broken")
    ls.set_defaults(fn=_cmd_adapters)
    cd = ad_sub.add_parser(
        "card", help="regenerate hub-ready files: public base id in adapter_config.json, README card"
    )
    cd.add_argument("--adapters", help="registry directory (default: the repository's adapters/)")
    cd.set_defaults(fn=_cmd_adapters_card)
    va = ad_sub.add_parser(
        "vllm-args",
        help="arguments of `vllm serve` for the registry (refuses adapters vLLM cannot apply exactly)",
    )
    va.add_argument("--adapters", help="registry directory (default: the repository's adapters/)")
    va.add_argument("--languages", help="comma-separated adapters to serve (default: all)")
    va.add_argument("--base", help="model argument for vLLM (default: the adapters' public base id)")
    va.add_argument(
        "--base-adapter",
        help="write an all-zero adapter here and serve it as `base` (on CPU, request `base` instead of the model: see README)",
    )
    va.add_argument("--command", action="store_true", help="print the whole `vllm serve ...` command")
    va.set_defaults(fn=_cmd_adapters_vllm)

    m = sub.add_parser("merge", help="merge an adapter into its base: a standalone checkpoint")
    m.add_argument("--adapter", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--base", help="base model (default: the one in the adapter's metadata)")
    m.add_argument(
        "--precision", choices=["fp32", "bf16", "int8"], help="merge into this base precision (default fp32)"
    )
    m.add_argument("--data", help="corpus whose test split measures WER unmerged vs merged")
    m.add_argument("--limit", type=int, default=32, help="test utterances used with --data")
    m.add_argument("--ct2", help="also export the merged model to CTranslate2 here")
    m.add_argument("--ct2-quantization", help="CTranslate2 quantization (int8, float16, ...)")
    m.set_defaults(fn=_cmd_merge)

    sv = sub.add_parser("serve", help="OpenAI-compatible /v1/audio/transcriptions server")
    _add_server(sv, port=8000)
    sv.add_argument("--beams", type=int, default=1)
    sv.add_argument("--max-upload-mb", type=float, default=25.0)
    sv.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    sv.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for company")
    sv.set_defaults(fn=_cmd_serve)

    dm = sub.add_parser("demo", help="gradio demo: adapter and base transcripts side by side")
    _add_server(dm, port=7860)
    dm.set_defaults(fn=_cmd_demo)

    c = sub.add_parser("convert", help="convert a CTranslate2 (faster-whisper) checkpoint to transformers")
    c.add_argument("src", nargs="+", help="directory (or directories holding model.bin.partN pieces)")
    c.add_argument("--out", required=True)
    c.set_defaults(fn=_cmd_convert)
    return p


def _version() -> str:
    from .adapter_io import library_version

    return library_version()


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """What the user sees: the library's messages on stderr at INFO (``-q``: WARNING, ``-v``: DEBUG);
    third-party loggers at ERROR unless ``-vv``."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logger = logging.getLogger("whisper_lora")
    logger.setLevel(level)
    if not any(getattr(h, "whisper_lora_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[whisper-lora] %(message)s"))
        handler.whisper_lora_cli = True
        logger.addHandler(handler)
        logger.propagate = False
    if verbose < 2:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for name in ("transformers", "peft", "accelerate", "datasets", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices of our own dependencies
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        return args.fn(args)
    except WhisperLoraError as e:
        print(f"whisper-lora: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
