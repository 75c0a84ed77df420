"""Long recordings with known boundaries, made by joining held-out clips with pauses (long-form tests and benches)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whisper_lora.data.audio import SAMPLE_RATE


@dataclass(frozen=True)
class JoinedAudio:
    audio: np.ndarray  # 16 kHz mono
    starts: tuple[float, ...]  # where each clip begins, seconds
    ends: tuple[float, ...]  # where each clip ends, seconds
    texts: tuple[str, ...]  # each clip's reference transcript

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def join_clips(clips: Sequence[np.ndarray], texts: Sequence[str], pause: float = 1.0, lead: float = 0.5) -> JoinedAudio:
    """``lead`` seconds of silence, then the clips with ``pause`` seconds of silence between them."""
    if len(clips) != len(texts) or not clips:
        raise ValueError(f"need one text per clip and at least one clip; got {len(clips)} clips, {len(texts)} texts")
    pieces, starts, ends = [np.zeros(round(lead * SAMPLE_RATE), np.float32)], [], []
    at = lead
    for k, clip in enumerate(clips):
        if k:
            pieces.append(np.zeros(round(pause * SAMPLE_RATE), np.float32))
            at += pause
        starts.append(at)
        pieces.append(np.asarray(clip, np.float32))
        at += len(clip) / SAMPLE_RATE
        ends.append(at)
    return JoinedAudio(np.concatenate(pieces), tuple(starts), tuple(ends), tuple(texts))


def start_errors(segment_starts: Sequence[float], clip_starts: Sequence[float]) -> list[float]:
    """For each true clip start, the distance to the nearest predicted segment start (seconds)."""
    if not segment_starts:
        return [float("inf")] * len(clip_starts)
    s = np.asarray(segment_starts, dtype=float)
    return [float(np.abs(s - t).min()) for t in clip_starts]
