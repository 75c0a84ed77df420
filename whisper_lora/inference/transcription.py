"""What a transcription gives back: the text, the language and adapter it was decoded with, and its segments."""

from __future__ import annotations

from dataclasses import dataclass

from whisper_lora.inference.longform import Segment
from whisper_lora.inference.routing import FORCED


@dataclass(frozen=True)
class Transcription:
    """The result for one input."""

    text: str
    language: str  # language decoded with (registry code, or Whisper's code when auto-detected)
    language_probability: float | None  # detection confidence; None when the language was given
    adapter: str | None  # adapter used, None for the untouched base
    duration: float | None = None  # seconds of audio
    segments: tuple[Segment, ...] | None = None  # timestamped pieces, when asked for (``timestamps=True``)
    route: str = FORCED  # how the adapter was chosen: router, abstained, whisper-lid, forced (routing.py)

    def to_dict(self) -> dict:
        d = {
            "language": self.language,
            "language_probability": self.language_probability,
            "adapter": self.adapter,
            "route": self.route,
            "duration": self.duration,
            "text": self.text,
        }
        if self.segments is not None:
            d["segments"] = [s.to_dict() for s in self.segments]
        return d
