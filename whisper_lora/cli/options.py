"""Flags shared by several commands, and flags generated from config dataclasses (one home per option)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

from whisper_lora.errors import WhisperLoraError
from whisper_lora.inference.decode import MAX_NEW_TOKENS

RUN_PRECISIONS = ("auto", "int8", "nf4", "bf16", "fp32")
_COMMENT = re.compile(r"^\s+(\w+): [^#]*?#\s*(.+)$")


def field_help(cls) -> dict[str, str]:
    """Each field's trailing comment in the dataclass source: the one description of that field."""
    docs: dict[str, str] = {}
    last = None
    for line in inspect.getsource(cls).splitlines():
        m = _COMMENT.match(line)
        if m:
            last = m.group(1)
            docs[last] = m.group(2).strip()
        elif last and re.match(r"^\s+# ", line):  # a comment line continuing the field above
            docs[last] += " " + line.strip()[2:]
        else:
            last = None if not line.strip().startswith("#") else last
    return docs


def trim_arg(value: str) -> float | str:
    """``--trim-padding``: seconds, ``auto`` or ``none``."""
    if value.lower() in ("auto", "none"):
        return value.lower()  # TrainConfig reads "none" as null
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give seconds (e.g. 1.0), auto or none") from None


def _int_or_auto(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number or auto") from None


def _bool_or_auto(value: str) -> bool | str:
    v = value.lower()
    if v in ("auto", "true", "false"):
        return {"true": True, "false": False}.get(v, "auto")
    raise argparse.ArgumentTypeError(f"{value!r}: valid: true, false, auto")


# annotation (as written in the dataclass) -> argparse keywords
_KINDS: dict[str, dict] = {
    "str": {"type": str},
    "str | None": {"type": str},
    "str | object": {"type": str},
    "int": {"type": int},
    "int | None": {"type": int},
    "float": {"type": float},
    "float | None": {"type": float},
    "bool": {"action": argparse.BooleanOptionalAction},
    "bool | str": {"type": _bool_or_auto, "metavar": "{true,false,auto}"},
    "int | str": {"type": _int_or_auto, "metavar": "N|auto"},
    "float | str | None": {"type": trim_arg, "metavar": "SECONDS|auto|none"},
    "tuple[float, ...]": {"type": float, "nargs": "+"},
    "tuple[float, float]": {"type": float, "nargs": 2},
    "tuple[str, ...]": {"type": str, "nargs": "+"},
    "tuple[str, ...] | None": {"type": str, "nargs": "+"},
    "tuple[int, ...] | None": {"type": int, "nargs": "+"},
}


def add_dataclass_flags(p, cls, skip=(), prefix: str = "", required=(), help_overrides=None) -> list[str]:
    """One ``--flag`` per field of ``cls`` (``prefix`` + name, underscores as dashes), its help the field's comment
    and its default ``None`` (not given: the config's own default, or the YAML value). Returns the dest names
    (``prefix`` + field name). A field's ``metadata`` may say more (serving/config.py uses it): ``flag``, the flag's
    name instead; ``repeat``, a tuple filled one value per use of the flag; ``none``, what None means (given as 0);
    ``choices``, the valid values."""
    docs, dests = field_help(cls), []
    help_overrides = help_overrides or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _KINDS.get(str(f.type))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag kind for annotation {f.type!r}")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        text = help_overrides.get(f.name) or docs.get(f.name) or f.name.replace("_", " ")
        notes = []
        if default not in (None, ()) and f.name not in help_overrides:
            notes.append(f"default: {default if not isinstance(default, tuple) else ' '.join(map(str, default))}")
        meta = f.metadata
        if meta.get("none"):
            notes.append(f"0: {meta['none']}")
        if meta.get("repeat"):
            kind = {"type": kind["type"], "action": "append"}
            notes.append("repeatable")
        if meta.get("choices"):
            kind = {**kind, "choices": meta["choices"]}
        elif "flag" in meta and "metavar" not in kind:
            kind = {**kind, "metavar": meta["flag"].upper().replace("-", "_")}
        if notes:
            text += f" ({'; '.join(notes)})"
        dest = prefix.replace("-", "_") + f.name
        if any(a.dest == dest for a in p._actions):
            raise TypeError(f"{cls.__name__}.{f.name}: the parser already has a flag for {dest!r}")
        p.add_argument(
            "--" + meta.get("flag", prefix + f.name.replace("_", "-")),
            dest=dest,
            default=None,
            help=text.replace("%", "%%"),
            **kind,
        )
        dests.append(dest)
    return dests


def config_from_args(cls, args: argparse.Namespace, skip=(), prefix: str = "", **fallbacks):
    """``cls`` from the flags ``add_dataclass_flags`` made for it: each field's flag where given, else
    ``fallbacks``, else the field's default; ``cls`` validates them (one error listing every problem)."""
    kw = dict(fallbacks)
    for f in dataclasses.fields(cls):
        value = None if f.name in skip else getattr(args, prefix.replace("-", "_") + f.name)
        if value is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        kw[f.name] = None if f.metadata.get("none") and value == 0 else value
    return cls(**kw)


def parse_languages(text: str | None) -> tuple[str, ...] | None:
    """``--languages sw,cs,en``: the codes, or None when the flag was not given (every language)."""
    if not text:
        return None
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapters",
        metavar="DIR",
        help="adapter registry directory (default: $WHISPER_LORA_ADAPTERS, else ./adapters)",
    )


def add_base(p: argparse.ArgumentParser, precision_help: str = "base weights (default int8)") -> None:
    p.add_argument("--base", default=None, help="base model: whisper-base (default, offline), a path or a hub id")
    p.add_argument("--precision", default=None, choices=RUN_PRECISIONS, help=precision_help)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")


def run_precision(a, default: str) -> str:
    """``--precision`` for commands that load a base to run it: ``auto`` (a training choice) means their default."""
    return default if a.precision in (None, "auto") else a.precision


def add_decoding(p: argparse.ArgumentParser, beams: bool = True) -> None:
    """The decoding flags of commands that decode (``transcribe``'s defaults); ``beams=False``: greedy only."""
    if beams:
        p.add_argument("--beams", type=int, default=1, help="beam width (1: greedy, the default)")
    p.add_argument(
        "--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help=f"tokens per 30 s window (default {MAX_NEW_TOKENS})"
    )


def decoding_from(a):
    """The ``Decoding`` the decoding flags describe (it validates them)."""
    from whisper_lora.inference.decode import Decoding

    return Decoding(num_beams=a.beams, max_new_tokens=a.max_new_tokens)


def add_graphs(p: argparse.ArgumentParser) -> None:
    """``--graphs``: compiled decoding (inference/graphs.py) for commands that run a ``Transcriber``."""
    from whisper_lora.inference.graphs import GRAPHS

    p.add_argument(
        "--graphs",
        default=None,
        choices=GRAPHS,
        help="decode greedy 30 s windows with a static KV cache and a compiled step (CUDA graphs on a GPU; each new "
        "batch size compiles first); on needs --precision bf16 or fp32 (default auto: off, not measured faster yet)",
    )


def add_routing(p: argparse.ArgumentParser) -> None:
    """How ``auto`` inputs are routed (inference/routing.py)."""
    p.add_argument(
        "--languages",
        help="comma-separated languages this deployment expects (e.g. sw,cs,en); auto routing picks among them only",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="auto routing: below this confidence the base decodes (default 0.6, routing.DEFAULT_THRESHOLD)",
    )


def transcriber(a, **kw):
    from whisper_lora.inference.transcriber import Transcriber

    languages = parse_languages(getattr(a, "languages", None))
    if languages is not None:
        kw["languages"] = languages
    if getattr(a, "threshold", None) is not None:
        kw["detect_threshold"] = a.threshold
    if getattr(a, "graphs", None) is not None:
        kw["graphs"] = a.graphs
    return Transcriber(a.base, a.adapters, precision=run_precision(a, "int8"), device=a.device or "auto", **kw)


def check_files(files) -> None:
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise WhisperLoraError(f"no such file: {', '.join(missing)}")
