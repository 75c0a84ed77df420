"""Adapter directories: standard PEFT files plus ``whisper_lora.json`` metadata, written atomically."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_directory
from .errors import AdapterError
from .languages import resolve_language

METADATA_FILE = "whisper_lora.json"
METADATA_VERSION = 1
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


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
    library_version: str = field(default_factory=library_version)
    metadata_version: int = METADATA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> AdapterMetadata:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def save_adapter(peft_model, out_dir: str | Path, metadata: AdapterMetadata, adapter_name: str = "default") -> Path:
    """Write ``adapter_config.json``, ``adapter_model.safetensors`` and metadata atomically."""
    resolve_language(metadata.language)  # refuse to write metadata with an unknown language
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        peft_model.save_pretrained(tmp, selected_adapters=[adapter_name], safe_serialization=True)
        sub = tmp / adapter_name
        if adapter_name != "default" and sub.is_dir():  # peft nests non-default adapters
            for f in sub.iterdir():
                f.rename(tmp / f.name)
            sub.rmdir()
        (tmp / METADATA_FILE).write_text(metadata.to_json(), encoding="utf-8")
    return out_dir


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
    except (ValueError, TypeError) as e:
        raise AdapterError(f"{adapter_dir / METADATA_FILE} is malformed: {e}") from None


def load_adapter(model, adapter_dir: str | Path, adapter_name: str = "default", is_trainable: bool = False):
    """Attach a saved adapter to a base model (or a PeftModel) from safetensors only."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    read_metadata(adapter_dir)
    if any(adapter_dir.glob("*.bin")) or any(adapter_dir.glob("*.pt")):
        raise AdapterError(f"{adapter_dir} holds pickled weights (*.bin/*.pt); only safetensors are loaded")
    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable, use_safetensors=True)
        return model
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable)
