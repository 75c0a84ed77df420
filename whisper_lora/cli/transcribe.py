"""``whisper-lora transcribe``: files in, text or subtitles out, each routed to its language's adapter."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from whisper_lora.cli.options import add_base, add_graphs, add_registry, add_routing, check_files, transcriber
from whisper_lora.inference.formats import ALIASES, FORMATS

OUTPUTS = ("line", "json_lines", *FORMATS, *ALIASES)  # line and json_lines: one line per file, on stdout

log = logging.getLogger("whisper_lora")


def add_parser(sub) -> None:
    tr = sub.add_parser("transcribe", help="transcribe files, routing each to its language's adapter")
    tr.add_argument("files", nargs="+", help="audio files (anything ffmpeg/soundfile reads)")
    tr.add_argument("--language", default="auto", help="language code, or auto (the router picks: routing.py)")
    add_registry(tr)
    add_base(tr)
    tr.add_argument("--beams", type=int, default=1, help="beam width (1: greedy, the default)")
    add_graphs(tr)
    add_routing(tr)
    tr.add_argument("--json", action="store_true", help="one JSON line per file (same as --format json_lines)")
    tr.add_argument(
        "--format",
        default="line",
        choices=OUTPUTS,
        help="output: line (file, language, adapter, text), json_lines, text (or txt), json, verbose_json "
        "(segments), srt, vtt",
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
    tr.set_defaults(fn=run)


def decode_options(a):
    from whisper_lora.inference.longform import DecodeOptions

    words = a.word_timestamps if a.word_timestamps is not None else a.format in ("srt", "vtt")  # cue starts
    temps = tuple(a.temperature) if a.temperature else DecodeOptions().temperature
    return DecodeOptions(
        temperature=temps, condition_on_previous_text=not a.no_condition, prompt=a.prompt, word_timestamps=words
    )


def run(a) -> int:
    from whisper_lora.atomic import atomic_write_text
    from whisper_lora.inference.formats import TABLE, TIMED_FORMATS, check_format, render
    from whisper_lora.inference.request import Request

    fmt = "json_lines" if a.json else a.format
    if fmt not in ("line", "json_lines"):
        fmt = check_format(fmt)
    check_files(a.files)
    options = decode_options(a)
    requests = [  # built and validated before the model loads
        Request(f, a.language, timestamps=fmt in TIMED_FORMATS or bool(a.word_timestamps), options=options)
        for f in a.files
    ]
    t = transcriber(a, num_beams=a.beams)
    for f, request in zip(a.files, requests, strict=True):
        r = t.transcribe_requests([request])[0]
        if fmt == "json_lines":
            doc = json.dumps({"file": f, **r.to_dict()}, ensure_ascii=False) + "\n"
        elif fmt == "line":
            prob = f" p={r.language_probability:.2f}" if r.language_probability is not None else ""
            doc = f"{f}\t[{r.language}{prob} adapter={r.adapter or 'base'} route={r.route}]\t{r.text}\n"
        else:
            doc = render(r, fmt, words=bool(a.word_timestamps))
        if a.output_dir:
            out = Path(a.output_dir) / f"{Path(f).stem}.{TABLE[fmt].extension if fmt in TABLE else 'txt'}"
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, doc)
            log.info("wrote %s", out)
        else:
            sys.stdout.write(doc)
            sys.stdout.flush()
    return 0
