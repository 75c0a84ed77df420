"""``whisper_lora.json``: the metadata record kept next to the PEFT files of every adapter."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from whisper_lora.errors import AdapterError
from whisper_lora.languages import resolve_language
from whisper_lora.results import Comparison

METADATA_FILE = "whisper_lora.json"
METADATA_VERSION = 1
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")  # formats that can run code when loaded


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("whisper-lora")
    except PackageNotFoundError:
        return "0+unknown"


def data_fingerprint(examples) -> str:
    """sha256 prefix over the ids and transcripts of the training examples, order-independent."""
    h = hashlib.sha256()
    for key in sorted(f"{e.id}\t{e.text}" for e in examples):
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TrainingData:
    """What an adapter was trained on (the ``data`` record of ``whisper_lora.json``)."""

    fingerprint: str  # data_fingerprint of the training utterances
    train_utterances: int
    train_seconds: float
    source: str  # the corpus given to ``train --data``

    @classmethod
    def from_dict(cls, d: dict) -> TrainingData:
        return cls(
            str(d.get("fingerprint", "?")),
            int(d.get("train_utterances", 0)),
            float(d.get("train_seconds", 0.0)),
            str(d.get("source", "?")),
        )


@dataclass
class AdapterMetadata:
    """What ``whisper_lora.json`` records next to a PEFT adapter."""

    language: str  # registry code (``sw``, ``ary``)
    whisper_language: str  # Whisper language token code used in the prefix (``sw``, ``ar``)
    base: dict  # BaseModelInfo of the base it was trained on (name, fingerprint, dims)
    lora: dict  # LoraSpec as a dict
    data: dict  # {"fingerprint", "train_utterances", "train_seconds", "source"}
    metrics: dict = field(default_factory=dict)  # {"base": {...}, "adapter": {...}} held-out
    training: dict = field(default_factory=dict)  # hyper-parameters and step count
    # for a language Whisper lacks: {"mode": "proxy" or "new", "proxy": code, "proxy_source": "table", "config" or
    # "detected", "detected": {code: clips}}; "new" adds the token <|whisper_language|> (base/language_tokens.py)
    language_token: dict = field(default_factory=dict)
    library_version: str = field(default_factory=library_version)
    metadata_version: int = METADATA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False, sort_keys=True)

    @property
    def comparison(self) -> Comparison | None:
        """The held-out scores of base and adapter, typed; None when the adapter was not evaluated."""
        return Comparison.from_dict(self.metrics)

    @property
    def trim_padding(self) -> float | None:
        """Seconds of padding after the audio the encoder was trained on (``base/trim.py``); None: 30 s windows."""
        pad = self.training.get("trim_padding")
        return None if isinstance(pad, bool) or not isinstance(pad, (int, float)) else float(pad)

    @property
    def trimmed_input(self) -> float | None:
        """Seconds of padding after the audio with which ``Transcriber`` encodes this adapter's short inputs
        (``base/trim.py``), or None for 30 s windows: trimmed only for an encoder trained trimmed, where the held-out
        measurement recorded in ``metrics`` chose it (``Comparison.trimmed_chosen``)."""
        c = self.comparison
        return self.trim_padding if c is not None and c.trimmed_chosen else None

    @property
    def new_token(self) -> str | None:
        """The code of the language token this adapter adds to its base (``language_token: new``); None when it
        decodes with one of Whisper's own tokens."""
        return self.whisper_language if self.language_token.get("mode") == "new" else None

    @property
    def detected_as(self) -> str | None:
        """The Whisper language whose detection stands for this adapter's language: its own, or the language table's
        proxy (``ary`` -> ``ar``); None for a token it adds or a proxy picked for it alone (Whisper naming Spanish
        says nothing of Esperanto)."""
        how = self.language_token
        return (
            None
            if how.get("mode") == "new" or how.get("proxy_source") in ("config", "detected")
            else self.whisper_language
        )

    @property
    def base_token(self) -> str:
        """The Whisper token code the untouched base decodes this adapter's language with: the adapter's own token
        unless it adds one (then the proxy its row started from)."""
        return self.language_token.get("proxy") or self.whisper_language if self.new_token else self.whisper_language

    @property
    def training_data(self) -> TrainingData:
        return TrainingData.from_dict(self.data)

    @classmethod
    def from_dict(cls, d: dict) -> AdapterMetadata:
        known = set(cls.__dataclass_fields__)
        meta = cls(**{k: v for k, v in d.items() if k in known})
        wrong = [
            k
            for k in ("base", "lora", "data", "metrics", "training", "language_token")
            if not isinstance(getattr(meta, k), dict)
        ]
        wrong += [k for k in ("language", "whisper_language") if not isinstance(getattr(meta, k), str)]
        if wrong:
            raise TypeError(f"wrong type for {', '.join(wrong)}")
        resolve_language(meta.language)  # ConfigError (a ValueError) names the valid codes
        return meta


def read_metadata(adapter_dir: str | Path) -> AdapterMetadata:
    """Read ``whisper_lora.json`` of an adapter directory, checking the PEFT files are there."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterError(f"adapter directory {adapter_dir} does not exist")
    found = sorted(p.name for p in adapter_dir.iterdir())
    missing = [f for f in (*PEFT_FILES, METADATA_FILE) if f not in found]
    if missing:
        raise AdapterError(
            f"{adapter_dir} is not a whisper-lora adapter: missing {', '.join(missing)}; found: {', '.join(found) or 'nothing'}"
        )
    try:
        return AdapterMetadata.from_dict(json.loads((adapter_dir / METADATA_FILE).read_text(encoding="utf-8")))
    except (ValueError, TypeError, AttributeError) as e:
        raise AdapterError(f"{METADATA_FILE} is malformed: {type(e).__name__}: {e}") from None
