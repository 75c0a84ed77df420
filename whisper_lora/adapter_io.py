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
        meta = cls(**{k: v for k, v in d.items() if k in known})
        wrong = [k for k in ("base", "lora", "data", "metrics", "training") if not isinstance(getattr(meta, k), dict)]
        wrong += [k for k in ("language", "whisper_language") if not isinstance(getattr(meta, k), str)]
        if wrong:
            raise TypeError(f"wrong type for {', '.join(wrong)}")
        resolve_language(meta.language)  # ConfigError (a ValueError) names the valid codes
        return meta


def save_adapter(peft_model, out_dir: str | Path, metadata: AdapterMetadata, adapter_name: str = "default") -> Path:
    """Write ``adapter_config.json``, ``adapter_model.safetensors``, metadata and the model card atomically."""
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
        from .card import write_hub_files  # card reads this module's types

        write_hub_files(tmp, metadata)  # public base id + model card instead of peft's blank template
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
    except (ValueError, TypeError, AttributeError) as e:
        raise AdapterError(f"{METADATA_FILE} is malformed: {type(e).__name__}: {e}") from None


def reject_pickled(adapter_dir: str | Path) -> None:
    """Refuse a directory holding pickled weights: only safetensors are ever loaded."""
    adapter_dir = Path(adapter_dir)
    pickled = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise AdapterError(
            f"holds pickled weights ({', '.join(pickled)}); only safetensors "
            "are loaded -- re-save it with safe_serialization=True"
        )


def check_weights(adapter_dir: str | Path) -> None:
    """Check ``adapter_model.safetensors`` without loading it: the header parses and covers the whole
    file (a truncated file fails here), and every LoRA pair's rank matches ``adapter_config.json``."""
    from safetensors import SafetensorError, safe_open

    adapter_dir = Path(adapter_dir)
    weights, config_file = adapter_dir / PEFT_FILES[1], adapter_dir / PEFT_FILES[0]
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        ranks = {int(config["r"]), *(int(v) for v in (config.get("rank_pattern") or {}).values())}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise AdapterError(f"{config_file.name} is malformed: {type(e).__name__}: {e}") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{weights.name} is damaged (truncated or not safetensors): {e}") from None
    if not shapes:
        raise AdapterError(f"{weights.name} holds no tensors")
    for key, shape in shapes.items():
        if ".lora_A." in key or key.endswith("lora_A.weight"):
            b = shapes.get(key.replace("lora_A", "lora_B"))
            if b is None or len(shape) != 2 or len(b) != 2 or shape[0] != b[1] or shape[0] not in ranks:
                raise AdapterError(
                    f"{weights.name}: {key} has shape {shape} and its lora_B {b}; adapter_config.json says r={sorted(ranks)}"
                )


def validate_adapter(adapter_dir: str | Path) -> AdapterMetadata:
    """Every check an adapter directory must pass before it is used; returns its metadata.

    Files present, metadata parses, no pickled weights, safetensors intact and consistent with
    the config. Raises ``AdapterError`` naming the first problem.
    """
    meta = read_metadata(adapter_dir)
    reject_pickled(adapter_dir)
    check_weights(adapter_dir)
    return meta


def load_adapter(model, adapter_dir: str | Path, adapter_name: str = "default", is_trainable: bool = False):
    """Attach a saved adapter to a base model (or a PeftModel), after ``validate_adapter``, from safetensors only."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    try:
        validate_adapter(adapter_dir)
    except AdapterError as e:
        raise AdapterError(f"cannot load the adapter in {adapter_dir}: {e}") from None
    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable, use_safetensors=True)
        return model
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable)
