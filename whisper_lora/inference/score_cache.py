"""The base model's scores kept on disk, so that later runs on the same corpus do not decode the base again.

An entry is keyed by everything that decides the base's transcripts: the base checkpoint's
fingerprint, its precision and int8 outlier threshold, the corpus (ids, transcripts and audio
bytes of the scored utterances), the split, the language and the decoding settings. Entries are
small JSON files under ``$WHISPER_LORA_CACHE/scores/`` written atomically; a base whose
fingerprint is unknown (a hub id not on disk) is never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from whisper_lora.atomic import atomic_write_text
from whisper_lora.base.resolve import cache_root
from whisper_lora.inference.decode import Decoding
from whisper_lora.inference.scoring import Scores

log = logging.getLogger("whisper_lora")
CACHE_VERSION = 4  # bump when the scoring itself changes (2: the batched fallback ladder, fallback.py; 3: silence;
# 4: no-speech read by the base's decoder)


def corpus_fingerprint(examples: Sequence) -> str:
    """sha256 prefix over the scored utterances' ids, transcripts and audio bytes, order-independent."""
    rows = []
    for e in examples:
        audio = hashlib.sha256(Path(e.audio).read_bytes()).hexdigest()
        rows.append(f"{e.id}\t{e.text}\t{audio}\t{e.perturbation!r}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()[:16]


def quantisation_key(model) -> str:
    """What of a loaded model's quantisation changes its outputs (int8's outlier threshold, nf4's types)."""
    inner = getattr(model, "get_base_model", lambda: model)()
    qc = getattr(inner.config, "quantization_config", None)
    if qc is None:
        return "none"
    d = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)
    keep = ("load_in_8bit", "load_in_4bit", "llm_int8_threshold", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype")
    return json.dumps({k: str(d.get(k)) for k in keep}, sort_keys=True)


@dataclass(frozen=True)
class ScoreKey:
    """Everything that decides the base's scores on a corpus."""

    base_fingerprint: str
    precision: str
    quantisation: str
    corpus: str  # corpus_fingerprint of the scored utterances
    split: str
    language: str
    decoding: str  # Decoding.key()

    @classmethod
    def for_run(
        cls,
        base_info,
        model,
        examples: Sequence,
        split: str,
        language: str,
        decoding: Decoding,
        token: str | None = None,
    ):
        """The key of the base's scores on ``examples``; ``token``: the Whisper token code they were decoded with
        when it is not the language's own (a proxy, or a token an adapter adds)."""
        return cls(
            base_info.fingerprint,
            base_info.precision,
            quantisation_key(model),
            corpus_fingerprint(examples),
            split,
            language if token in (None, language) else f"{language} as <|{token}|>",
            decoding.key(),
        )

    def digest(self) -> str:
        text = json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def cacheable(self) -> bool:
        return self.base_fingerprint not in ("", "unknown")


class ScoreCache:
    """Base scores by ``ScoreKey`` under one directory (default ``$WHISPER_LORA_CACHE/scores``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else cache_root() / "scores"

    def _path(self, key: ScoreKey) -> Path:
        return self.root / f"{key.digest()}.json"

    def get(self, key: ScoreKey) -> Scores | None:
        """The stored scores, None when absent, unreadable or for an uncacheable key."""
        if not key.cacheable:
            return None
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("key") != asdict(key):
            return None
        log.info("base scores reused from %s", self._path(key))
        return Scores.from_dict(record["scores"])

    def put(self, key: ScoreKey, scores: Scores) -> None:
        """Store ``scores`` (atomically; a read-only cache only logs)."""
        if not key.cacheable:
            return
        try:
            atomic_write_text(self._path(key), json.dumps({"key": asdict(key), "scores": scores.to_dict()}, indent=1))
        except OSError as e:
            log.warning("base scores not cached (%s)", e)
