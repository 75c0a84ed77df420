"""The ``whisper-lora`` command line: one module per command (group), its parser next to its handler.

Layer 7 (the top): may import any layer; nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from whisper_lora.cli import adapters, convert, merge, serve, synth, train, transcribe
from whisper_lora.cli import eval as eval_cmd
from whisper_lora.errors import WhisperLoraError

COMMANDS = (synth, train, eval_cmd, transcribe, adapters, merge, serve, convert)


def _verbosity(suppress: bool) -> argparse.ArgumentParser:
    """``-q``/``-v``, accepted before or after the command (one definition; the command's copy never resets it)."""
    p = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default if suppress else 0,
        help="more messages (-vv: third-party too)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", default=default if suppress else False,
        help="warnings and errors only, no progress bars",
    )  # fmt: skip
    return p


def build_parser() -> argparse.ArgumentParser:
    from whisper_lora.registry.metadata import library_version

    p = argparse.ArgumentParser(
        prog="whisper-lora", description="Per-language LoRA adapters for Whisper", parents=[_verbosity(False)]
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {library_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = _verbosity(True)
    add = sub.add_parser
    sub.add_parser = lambda *args, **kw: add(*args, parents=[parent, *kw.pop("parents", [])], **kw)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


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
