"""What one transcription asks for (``Request``; what it gives back: ``transcription.Transcription``).

A ``Request`` is built once, where a request enters (the HTTP form in ``serving/form.py``, the CLI in
``cli/transcribe.py``, ``Transcriber.transcribe`` in Python), validated there in one place, and carried unchanged
through the engine, the scheduler, the Ray hand-off and ``Transcriber.transcribe_requests``. Adding a request
parameter means adding a field here and reading it where it is used (docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from whisper_lora.errors import ConfigError
from whisper_lora.inference.decode import Decoding
from whisper_lora.inference.formats import FORMATS, TIMED_FORMATS, canonical_format
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.routing import RouteDecision
from whisper_lora.inference.transcription import Transcription
from whisper_lora.languages import resolve_language

__all__ = ["AUTO", "ROUTE", "Request", "RequestError", "Transcription"]

AUTO = "auto"  # language: let the router (or Whisper's language ID) decide
ROUTE = "route"  # adapter: let the language pick it


class RequestError(ConfigError):
    """A request has one or more bad fields; ``problems`` holds (field, message) for each, in field order."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("invalid request:\n  - " + "\n  - ".join(m for _, m in problems))
        self.problems = problems

    @property
    def field(self) -> str:
        """The first bad field (OpenAI errors name one ``param``)."""
        return self.problems[0][0]

    def __reduce__(self):  # crosses process boundaries (Ray replicas) with its own arguments
        return (type(self), (self.problems,))


@dataclass(frozen=True)
class Request:
    """One input to transcribe and how. Every field is validated at construction (all problems reported at once)."""

    audio: np.ndarray | str | Path | None  # 16 kHz mono samples or a file path; None: attached later (the server)
    language: str = AUTO  # ISO code or name (``sw``, ``swa``, ``darija``), or ``auto``
    adapter: str | None = ROUTE  # ``route``: the language picks it; None: the untouched base; else an adapter name
    timestamps: bool = False  # return segments (decoded window by window, as Whisper's ``transcribe``)
    word_timestamps: bool = False  # word times within the segments (implies timestamps)
    response_format: str = "json"  # document asked for (``formats.FORMATS``); a timed one implies timestamps
    prompt: str | None = None  # initial prompt (vocabulary, spelling); implies timestamped decoding
    temperature: float | None = None  # first temperature of the fallback ladder; None: the options' ladder
    num_beams: int | None = None  # beam width; None: the Transcriber's
    options: DecodeOptions | None = None  # the whole decoding options; None: the Transcriber's
    decision: RouteDecision | None = None  # where ``auto`` goes, once routed (Ray's ingress routes before decoding)

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if isinstance(self.audio, np.ndarray) and self.audio.ndim != 1:
            problems.append(("audio", f"audio must be 1-D mono samples, got shape {self.audio.shape}"))
        elif not (self.audio is None or isinstance(self.audio, np.ndarray | str | Path)):
            problems.append(("audio", f"audio must be samples (numpy) or a path, got {type(self.audio).__name__}"))
        language = (self.language or AUTO).strip().lower()
        if language != AUTO:
            try:
                resolve_language(language)
            except ConfigError as e:
                problems.append(("language", str(e)))
        object.__setattr__(self, "language", language)
        if self.adapter is not None and not (isinstance(self.adapter, str) and self.adapter):
            problems.append(("adapter", f"adapter={self.adapter!r}: give {ROUTE!r}, None (the base) or a name"))
        fmt = canonical_format(self.response_format)
        if fmt is None:
            problems.append(
                (
                    "response_format",
                    f"unsupported response_format {self.response_format!r}; valid: {', '.join(FORMATS)}",
                )
            )
        else:
            object.__setattr__(self, "response_format", fmt)
        if self.temperature is not None and not (0 <= self.temperature <= 1 and not math.isnan(self.temperature)):
            problems.append(("temperature", f"temperature={self.temperature!r} must be between 0 and 1"))
        if self.num_beams is not None and self.num_beams < 1:
            problems.append(("num_beams", f"num_beams={self.num_beams!r} must be >= 1"))
        if self.decision is not None and language != AUTO:
            problems.append(("decision", f"a route decision is for language 'auto', not {language!r}"))
        if problems:
            order = [f.name for f in fields(self)]
            raise RequestError(sorted(problems, key=lambda p: order.index(p[0]) if p[0] in order else len(order)))

    @property
    def timed(self) -> bool:
        """Whether this request is decoded window by window with timestamps (segments)."""
        return bool(
            self.timestamps
            or self.word_timestamps
            or self.response_format in TIMED_FORMATS
            or self.prompt
            or self.temperature is not None
        )

    def decoding(self, default: Decoding) -> Decoding:
        """How this request decodes: ``default`` (the Transcriber's) with this request's overrides."""
        options = self.options or default.options
        if self.temperature is not None:
            options = options.with_temperature(self.temperature)
        if self.prompt:
            options = replace(options, prompt=self.prompt)
        if self.word_timestamps:
            options = replace(options, word_timestamps=True)
        beams = default.num_beams if self.num_beams is None else self.num_beams
        if options is default.options and beams == default.num_beams:
            return default
        return replace(default, num_beams=beams, options=options)
