"""Read, check and featurise the splits of a corpus in one call (training, eval, merge, benches)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from whisper_lora.data.features import Example, featurize
from whisper_lora.data.readers import SPLITS, load_corpus
from whisper_lora.errors import DataError

log = logging.getLogger("whisper_lora")


def prepare_splits(
    data: str | Path,
    language: str,
    processor,
    splits: Sequence[str] = SPLITS,
    data_format: str = "auto",
    split_fractions: tuple[float, float] = (0.1, 0.1),
    seed: int = 0,
    max_bad_fraction: float = 0.1,
    progress: bool = True,
    timestamp_share: float = 0.0,
    token: str | None = None,
) -> dict[str, list[Example]]:
    """Featurised examples of the requested splits of the corpus at ``data``.

    Only the requested splits are read (a corpus holding only ``test`` can be scored); a missing
    dev or test split is carved out of train (see ``load_corpus``). Fails with the bad-row report
    when more than ``max_bad_fraction`` of the rows read are unusable, and when ``train`` was
    asked for but has no usable utterance. ``timestamp_share`` of the train split gets timestamped labels. ``token``:
    the Whisper token code labels start with (None: the language's own or proxy, ``languages.decoder_token``).
    """
    records, bad = load_corpus(data, language, data_format, split_fractions, seed, splits=splits)
    out: dict[str, list[Example]] = {}
    for name in splits:
        share = timestamp_share if name == "train" else 0.0  # dev/test labels are only read as text
        out[name], bad = featurize(records[name], processor, bad, progress=progress, timestamp_share=share, token=token)
    bad.check(max_bad_fraction, f"corpus {data}")
    if bad.bad:
        log.warning("skipped rows: %s", bad.summary())
    if "train" in splits and not out["train"]:
        raise DataError(f"corpus {data} has no usable training utterances ({bad.summary()})")
    return out


def train_audio_paths(
    data: str | Path,
    language: str,
    data_format: str = "auto",
    split_fractions: tuple[float, float] = (0.1, 0.1),
    seed: int = 0,
) -> list[str]:
    """The audio files of a corpus's training split, as ``prepare_splits`` would read it (nothing decoded)."""
    records, _ = load_corpus(data, language, data_format, split_fractions, seed, splits=("train",))
    return [r.audio for r in records["train"]]
