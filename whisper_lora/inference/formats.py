"""Transcripts as documents: plain text, JSON, OpenAI's verbose JSON, SubRip (SRT) and WebVTT."""

from __future__ import annotations

import json
from dataclasses import dataclass

from whisper_lora.errors import ConfigError
from whisper_lora.inference.transcription import Transcription
from whisper_lora.languages import resolve_language


@dataclass(frozen=True)
class Format:
    """One output document: the one table the server's ``response_format`` and the CLI's ``--format`` share."""

    name: str  # OpenAI's ``response_format`` value
    extension: str  # file suffix (``transcribe --output-dir``)
    media_type: str  # HTTP content type
    timed: bool  # needs segments: decoded window by window with timestamps


_TABLE = (  # in the order OpenAI's documentation lists them
    Format("json", "json", "application/json", False),
    Format("text", "txt", "text/plain; charset=utf-8", False),
    Format("srt", "srt", "application/x-subrip", True),
    Format("vtt", "vtt", "text/vtt", True),
    Format("verbose_json", "json", "application/json", True),
)
TABLE = {f.name: f for f in _TABLE}
FORMATS = tuple(TABLE)  # json, text, srt, vtt, verbose_json
ALIASES = {"txt": "text"}  # the CLI's older name for text
TIMED_FORMATS = tuple(f.name for f in _TABLE if f.timed)


def canonical_format(fmt: str) -> str | None:
    """``fmt``'s name in the table (an alias resolved), or None when it is no format."""
    fmt = ALIASES.get(fmt, fmt)
    return fmt if fmt in TABLE else None


def check_format(fmt: str) -> str:
    """``fmt``'s canonical name; a ``ConfigError`` listing the valid ones when it is no format."""
    name = canonical_format(fmt)
    if name is None:
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return name


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _segments(t: Transcription):
    if t.segments is None:
        raise ConfigError("this transcript has no segments; transcribe with timestamps=True for srt, vtt, verbose_json")
    return t.segments


def to_srt(t: Transcription) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` in time order."""
    cues = [f"{k}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n" for k, s in enumerate(_segments(t), 1)]
    return "\n".join(cues)


def to_vtt(t: Transcription) -> str:
    """WebVTT: a ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in _segments(t)]
    return "WEBVTT\n\n" + "\n".join(cues)


def verbose_json(t: Transcription, words: bool = False) -> dict:
    """OpenAI's ``verbose_json`` body, plus whisper-lora's routing fields (adapter, language code)."""
    d = {
        "task": "transcribe",
        "language": resolve_language(t.language).name.lower() if t.language else None,
        "language_code": t.language,
        "language_probability": t.language_probability,
        "adapter": t.adapter,
        "route": t.route,
        "duration": t.duration,
        "text": t.text,
        "segments": [{k: v for k, v in s.to_dict().items() if k != "words"} for s in _segments(t)],
    }
    if words:
        d["words"] = [w.to_dict() for s in _segments(t) for w in (s.words or ())]
    return d


def render(t: Transcription, fmt: str, words: bool = False) -> str:
    """One document of ``fmt`` (see ``FORMATS``) for one transcript."""
    fmt = check_format(fmt)
    if fmt == "text":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps({"text": t.text}, ensure_ascii=False) + "\n"
    if fmt == "verbose_json":
        return json.dumps(verbose_json(t, words), ensure_ascii=False, indent=2) + "\n"
    return to_srt(t) if fmt == "srt" else to_vtt(t)
