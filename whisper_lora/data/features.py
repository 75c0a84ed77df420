"""Turn utterances into model inputs: log-mel features and prefixed label ids.

Rows that cannot be used are skipped and counted by reason (see ``records.BAD_REASONS``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whisper_lora.base.language_tokens import token_id
from whisper_lora.base.trim import trim_batch
from whisper_lora.data.audio import CHUNK_SECONDS, SAMPLE_RATE, AudioError, is_silent, load_audio
from whisper_lora.data.perturb import Perturbation
from whisper_lora.data.records import BadRows, Utterance
from whisper_lora.errors import ConfigError
from whisper_lora.languages import decoder_token, token_text

MAX_LABEL_TOKENS = 448  # Whisper's decoder context


@dataclass
class Example:
    """One checked utterance, ready for the model.

    Its log-mel features are computed from the audio file each time ``input_features`` is read
    (about 10 ms for a short clip) and never kept, so a corpus of any size costs the same memory.
    """

    id: str
    text: str
    language: str  # registry code
    audio: str  # path of the audio file
    labels: list[int]  # <|lang|> <|transcribe|> <|notimestamps|> text <|endoftext|> (no <|sot|>), or timestamped
    duration: float  # seconds of audio
    feature_extractor: object = field(default=None, repr=False, compare=False)
    perturbation: Perturbation | None = None  # augmented copy: the clip is transformed when read (perturb.py)
    timestamped: bool = False  # labels carry <|0.00|> ... <|end|> timestamps spanning the clip

    @property
    def n_samples(self) -> int:
        return round(self.duration * SAMPLE_RATE)

    def audio_array(self) -> np.ndarray:
        """The clip as a 16 kHz signal (transformed when this is an augmented copy)."""
        audio = load_audio(self.audio)
        return audio if self.perturbation is None else self.perturbation.apply(audio, self.id)

    @property
    def input_features(self) -> torch.Tensor:
        """``(n_mels, 3000)`` log-mel of the 30 s window, as the processor computes it."""
        return log_mel(self.feature_extractor, self.audio_array())


def log_mel(feature_extractor, audio: np.ndarray) -> torch.Tensor:
    """Whisper's ``(n_mels, 3000)`` log-mel features of one clip, in fp32 even inside a training step's autocast."""
    with torch.autocast("cpu", enabled=False):
        return feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features[0]


TIME_PRECISION = 0.02  # seconds per Whisper timestamp token


def prefix_ids(tokenizer, token: str, task: str = "transcribe", timestamps: bool = False) -> list[int]:
    """Decoder prefix ``<|sot|> <|token|> <|task|>``, plus ``<|notimestamps|>`` unless ``timestamps``; ``token``: the
    Whisper token code the decoder is prompted with (its own, a proxy's, or one added to the base)."""
    ids = tokenizer.convert_tokens_to_ids
    lang = token_id(tokenizer, token)
    if lang is None:
        raise ConfigError(f"{token_text(token)} is not a token of this tokenizer")
    prefix = [ids("<|startoftranscript|>"), lang, ids(f"<|{task}|>")]
    return prefix if timestamps else [*prefix, ids("<|notimestamps|>")]


def timestamp_id(tokenizer, seconds: float) -> int:
    """The ``<|t.tt|>`` token of a time inside the 30 s window (rounded to 20 ms, clamped to 0..30 s)."""
    step = round(min(max(seconds, 0.0), CHUNK_SECONDS) / TIME_PRECISION)
    return tokenizer.convert_tokens_to_ids("<|0.00|>") + step


def label_ids(tokenizer, text: str, token: str, span: tuple[float, float] | None = None) -> list[int]:
    """Label ids for training (the ``<|sot|>`` start token is added by the model's shift).

    With ``span=(start, end)`` in seconds the text is framed by timestamp tokens, as in Whisper's
    own training data (``<|lang|> <|transcribe|> <|0.00|> text <|3.42|> <|endoftext|>``), so an
    adapter keeps predicting segment times.
    """
    body = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if span is None:
        return prefix_ids(tokenizer, token)[1:] + body + [eot]
    start, end = (timestamp_id(tokenizer, t) for t in span)
    return prefix_ids(tokenizer, token, timestamps=True)[1:] + [start, *body, end, eot]


def wants_timestamps(utterance_id: str, share: float) -> bool:
    """Whether an utterance gets timestamped labels: a stable choice of ``share`` of the corpus by id."""
    if share <= 0:
        return False
    digest = hashlib.sha1(utterance_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def featurize(
    records: Sequence[Utterance],
    processor,
    bad: BadRows | None = None,
    max_label_tokens: int = MAX_LABEL_TOKENS,
    progress: bool = False,
    timestamp_share: float = 0.0,
    token: str | None = None,
) -> tuple[list[Example], BadRows]:
    """Decode and check records, tokenise their labels; returns the good examples and the bad-row report.

    ``timestamp_share`` of the utterances (chosen by id) get timestamped labels spanning the clip. ``token``: the
    Whisper token code the labels start with (None: each record's language's, ``decoder_token``).
    """
    from tqdm.auto import tqdm

    bad = bad if bad is not None else BadRows()
    out: list[Example] = []
    for r in tqdm(records, desc="features", disable=not progress, leave=False):
        if not Path(r.audio).is_file():
            bad.add("missing_file", r.id)
            continue
        try:
            audio = load_audio(r.audio, validate=False)
        except AudioError:
            bad.add("unreadable_audio", r.id)
            continue
        if not np.isfinite(audio).all():
            bad.add("unreadable_audio", r.id)
            continue
        if len(audio) > CHUNK_SECONDS * SAMPLE_RATE:
            bad.add("too_long_audio", r.id)
            continue
        if is_silent(audio):
            bad.add("silence", r.id)
            continue
        duration = len(audio) / SAMPLE_RATE
        span = (0.0, duration) if wants_timestamps(r.id, timestamp_share) else None
        labels = label_ids(processor.tokenizer, r.text, token or decoder_token(r.language), span)
        if len(labels) + 1 > max_label_tokens:
            bad.add("too_long_labels", r.id)
            continue
        out.append(
            Example(
                r.id,
                r.text,
                r.language,
                r.audio,
                labels,
                duration,
                processor.feature_extractor,
                timestamped=span is not None,
            )
        )
    return out, bad


def collate(
    examples: Sequence[Example], pad_id: int = -100, features: bool = True, trim_padding: float | None = None
) -> dict[str, torch.Tensor]:
    """Pad labels with -100 (ignored by the loss) and, unless ``features=False``, stack the features
    (cut to the longest clip plus ``trim_padding`` seconds when that is set, see ``trim.py``)."""
    n = max(len(e.labels) for e in examples)
    labels = torch.full((len(examples), n), pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    if not features:  # training on cached encoder outputs needs only the labels
        return {"labels": labels}
    feats = torch.stack([e.input_features for e in examples])
    if trim_padding is not None:
        feats = trim_batch(feats, [e.n_samples for e in examples], trim_padding)
    return {"input_features": feats, "labels": labels}
