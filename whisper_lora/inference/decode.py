"""Audio to text, the one way every caller does it: ``transcribe``, ``eval``, training's scoring, merge checks.

The steps, in order (``decode_steps`` runs them over two hooks: ``decode_texts`` hooks one model as it is,
``Transcriber`` its adapter pool):

1. silent inputs give no text (they are not decoded);
2. inputs of up to 30 s are batched: log-mel features from the raw audio, greedy (or beam)
   ``generate`` with the language forced, at most ``max_new_tokens`` new tokens;
3. inputs past 30 s are decoded window by window (``longform.decode_segments``);
4. the loop guard: a short input whose transcript looks like a repetition loop (compression
   ratio above ``options.compression_ratio_threshold``) is decoded again with the temperature
   fallback, as Whisper's own ``transcribe`` does.

References are never looked at: what is scored is what users get.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from whisper_lora.data.audio import N_SAMPLES, SAMPLE_RATE, is_silent
from whisper_lora.errors import ConfigError
from whisper_lora.inference.generation import MAX_NEW_TOKENS, decoding_config
from whisper_lora.inference.longform import DecodeOptions, Segment, compression_ratio, decode_segments

log = logging.getLogger("whisper_lora")

__all__ = ["MAX_NEW_TOKENS", "Decoding", "decode_steps", "decode_texts"]


@dataclass(frozen=True)
class Decoding:
    """How audio becomes text; ``Transcriber``, ``eval`` and training's scoring share one."""

    num_beams: int = 1  # 1: greedy
    max_new_tokens: int = MAX_NEW_TOKENS  # cap per 30 s window
    options: DecodeOptions = field(default_factory=DecodeOptions)  # fallback ladder, loop guard, long-form

    def __post_init__(self) -> None:
        problems = []
        if self.num_beams < 1:
            problems.append(f"num_beams={self.num_beams!r} must be >= 1")
        if not 1 <= self.max_new_tokens <= 440:
            problems.append(f"max_new_tokens={self.max_new_tokens!r} must be in 1..440 (the decoder holds 448)")
        if problems:
            raise ConfigError("invalid decoding:\n  - " + "\n  - ".join(problems))

    def key(self) -> str:
        """A stable text of every setting (part of the base-score cache key)."""
        return json.dumps(asdict(self), sort_keys=True)


def model_dtype(model) -> torch.dtype:
    """The floating dtype the model computes in (fp32 for int8/nf4 bases)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def features(model, processor, audios: Sequence[np.ndarray]) -> torch.Tensor:
    """Log-mel features of up to 30 s signals, on the model's device and dtype."""
    feats = processor.feature_extractor(list(audios), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    return feats.to(model.device, model_dtype(model))


def generate_texts(
    model,
    processor,
    feats: torch.Tensor,
    whisper_languages: list[str],
    decoding: Decoding,
    adapter_names: list[str] | None = None,
) -> list[str]:
    """Step 2: one ``generate`` call over a batch of 30 s windows, row i in ``whisper_languages[i]``."""
    gen = decoding_config(model, decoding.num_beams, decoding.max_new_tokens)
    kw = dict(generation_config=gen, task="transcribe", language=whisper_languages)
    if adapter_names is not None:
        kw["adapter_names"] = adapter_names
        if decoding.num_beams > 1:
            kw["num_beams"] = decoding.num_beams  # peft repeats adapter_names per beam from this argument
    mask = torch.ones(feats.shape[0], feats.shape[-1], dtype=torch.long, device=feats.device)  # every frame counts
    ids = model.generate(input_features=feats, attention_mask=mask, **kw)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


def long_segments(
    model, processor, audio: np.ndarray, whisper_language: str, decoding: Decoding, pause=None
) -> list[Segment]:
    """Step 3 (and the loop guard's second try): window-by-window decoding with the temperature fallback.

    ``pause`` (optional) is called at every decoding step; it may block while the model does other work.
    """
    return decode_segments(
        model,
        processor,
        audio,
        whisper_language,
        decoding.options,
        decoding.num_beams,
        decoding.max_new_tokens,
        pause=pause,
    )


def looped(texts: Sequence[str], decoding: Decoding) -> list[int]:
    """Step 4: indices of transcripts that look like a repetition loop."""
    limit = decoding.options.compression_ratio_threshold
    return [i for i, t in enumerate(texts) if limit and compression_ratio(t) > limit]


# rows of a batch -> their texts (step 2: one ``generate`` call over up-to-30 s windows)
Batch = Callable[[list[int]], list[str]]
# one row -> its segments (step 3 and the loop guard: window by window with the temperature fallback)
Windows = Callable[[int], list[Segment]]


def decode_steps(
    audios: Sequence[np.ndarray], decoding: Decoding, timestamps: bool, batch: Batch, windows: Windows
) -> tuple[list[str], list[tuple[Segment, ...] | None]]:
    """The four steps over ``audios``: texts, and segments of every input when ``timestamps`` (else None).

    ``batch`` and ``windows`` do the decoding (with one model, or through an adapter pool); which input takes which
    path is decided here only, so a result never depends on the other inputs of the call.
    """
    texts = [""] * len(audios)
    segments: list[tuple[Segment, ...] | None] = [() if timestamps else None] * len(audios)
    speech = [i for i, a in enumerate(audios) if not is_silent(a)]  # step 1
    timed = speech if timestamps else [i for i in speech if len(audios[i]) > N_SAMPLES]
    short = [i for i in speech if i not in set(timed)]
    if short:
        for i, t in zip(short, batch(short), strict=True):  # step 2
            texts[i] = t
    again = [short[k] for k in looped([texts[i] for i in short], decoding)]  # step 4
    if again:
        log.info("%d transcript(s) look like a repetition loop; decoding them again with fallback", len(again))
    for i in sorted(timed + again):  # step 3, and step 4's second try
        segs = tuple(windows(i))
        texts[i] = " ".join(s.text for s in segs)
        if timestamps:
            segments[i] = segs
    return texts, segments


def decode_texts(
    model, processor, audios: Sequence[np.ndarray], whisper_language: str, decoding: Decoding
) -> list[str]:
    """Transcripts of ``audios`` with ``model`` as it is (one adapter active or none), in input order."""

    def batch(rows: list[int]) -> list[str]:
        feats = features(model, processor, [audios[i] for i in rows])
        return generate_texts(model, processor, feats, [whisper_language] * len(rows), decoding)

    def windows(i: int) -> list[Segment]:
        return long_segments(model, processor, audios[i], whisper_language, decoding)

    return decode_steps(audios, decoding, False, batch, windows)[0]
