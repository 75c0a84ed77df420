"""Transcripts as documents: plain text, JSON, OpenAI's verbose JSON, SubRip (SRT) and WebVTT."""

from __future__ import annotations

import json

from whisper_lora.errors import ConfigError, format_choices
from whisper_lora.inference.transcriber import Transcription
from whisper_lora.languages import resolve_language

FORMATS = ("txt", "json", "verbose_json", "srt", "vtt")
TIMED_FORMATS = ("verbose_json", "srt", "vtt")  # need segments
EXTENSIONS = {"txt": "txt", "json": "json", "verbose_json": "json", "srt": "srt", "vtt": "vtt"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid: {format_choices(FORMATS)}")
    return fmt


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
    check_format(fmt)
    if fmt == "txt":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps({"text": t.text}, ensure_ascii=False) + "\n"
    if fmt == "verbose_json":
        return json.dumps(verbose_json(t, words), ensure_ascii=False, indent=2) + "\n"
    return to_srt(t) if fmt == "srt" else to_vtt(t)
