"""Adapter directories: standard PEFT files plus ``whisper_lora.json`` metadata, written atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from whisper_lora.atomic import atomic_directory, atomic_write_text, recover, target_lock
from whisper_lora.errors import AdapterError, ConfigError
from whisper_lora.languages import resolve_language
from whisper_lora.registry.card import write_hub_files
from whisper_lora.registry.language_profile import write_profile
from whisper_lora.registry.metadata import (  # noqa: F401 - re-exported: the adapter directory's one import point
    METADATA_FILE,
    METADATA_VERSION,
    PEFT_FILES,
    PICKLE_SUFFIXES,
    AdapterMetadata,
    data_fingerprint,
    library_version,
    read_metadata,
)


def save_adapter(
    peft_model, out_dir: str | Path, metadata: AdapterMetadata, adapter_name: str = "default", profile=None
) -> Path:
    """Write ``adapter_config.json``, ``adapter_model.safetensors``, metadata, the model card and (when given)
    the ``LanguageProfile`` for routing, atomically.

    An adapter that adds a language token (``metadata.new_token``) saves its trained row only (never the embedding
    matrix peft would save for a resized vocabulary) and ``added_tokens.json``, the tokenizer's addition."""
    resolve_language(metadata.language)  # refuse to write metadata with an unknown language
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        peft_model.save_pretrained(
            tmp, selected_adapters=[adapter_name], safe_serialization=True, save_embedding_layers=False
        )
        if metadata.new_token:
            indices = peft_model.peft_config[adapter_name].trainable_token_indices or {}
            ids = [i for v in indices.values() for i in v]
            (tmp / ADDED_TOKENS_FILE).write_text(json.dumps({f"<|{metadata.new_token}|>": ids[0]}) + "\n")
        sub = tmp / adapter_name
        if adapter_name != "default" and sub.is_dir():  # peft nests non-default adapters
            for f in sub.iterdir():
                f.rename(tmp / f.name)
            sub.rmdir()
        (tmp / METADATA_FILE).write_text(metadata.to_json(), encoding="utf-8")
        write_hub_files(tmp, metadata)  # public base id + model card instead of peft's blank template
        if profile is not None:
            write_profile(tmp, profile)
    return out_dir


ADDED_TOKENS_FILE = "added_tokens.json"  # the tokenizer's addition of an adapter with a new language token


def weights_digest(adapter_dir: str | Path) -> str:
    """A hash of what an adapter computes: its weights and ``adapter_config.json`` (but the base id that
    ``write_hub_files`` sets), so rewriting its metadata or card keeps it, and a retrained adapter changes it."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / PEFT_FILES[0]).read_text(encoding="utf-8"))
    config.pop("base_model_name_or_path", None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    with open(adapter_dir / PEFT_FILES[1], "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def update_metrics(adapter_dir: str | Path, metrics: dict, scored: str | None = None) -> AdapterMetadata:
    """Replace an adapter's held-out ``metrics`` (its training's dev history kept) and regenerate its card.

    Holds the adapter's lock (``atomic.target_lock``) from reading the metadata to writing it. ``scored``: the
    ``weights_digest`` of the weights the metrics are of; an adapter on disk that has other weights now (replaced
    since it was loaded) raises ``AdapterError`` and nothing is written.
    """
    adapter_dir = Path(adapter_dir)
    with target_lock(adapter_dir):
        meta = validate_adapter(adapter_dir)
        if scored is not None and (now := weights_digest(adapter_dir)) != scored:
            raise AdapterError(
                f"the adapter in {adapter_dir} was replaced after its weights were loaded (weights {scored}, now "
                f"{now}): these scores are not its scores, so they were not written; evaluate it again"
            )
        history = meta.metrics.get("dev_history")
        meta.metrics = {**metrics, **({"dev_history": history} if history else {})}
        atomic_write_text(adapter_dir / METADATA_FILE, meta.to_json())
        write_hub_files(adapter_dir, meta)
    return meta


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


def touches_encoder(adapter_dir: str | Path) -> bool:
    """Whether the adapter holds any weight of Whisper's encoder, LoRA or saved whole (``modules_to_save``), read from
    its weights' header without loading them: if not, its encoder outputs are the base's."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(adapter_dir) / PEFT_FILES[1]), framework="pt") as f:
            return any(".encoder." in k for k in f.keys())
    except (SafetensorError, OSError):
        return True  # unreadable (replaced meanwhile): assume it does; loading it will say what is wrong


def validate_adapter(adapter_dir: str | Path) -> AdapterMetadata:
    """Every check an adapter directory must pass before it is used; returns its metadata.

    Files present, metadata parses, no pickled weights, safetensors intact and consistent with
    the config. Raises ``AdapterError`` naming the first problem. A write of the directory that a
    crash interrupted is first finished or undone (``atomic.recover``): the old or the new adapter.
    """
    recover(adapter_dir)
    meta = read_metadata(adapter_dir)
    reject_pickled(adapter_dir)
    check_weights(adapter_dir)
    return meta


def load_adapter(
    model, adapter_dir: str | Path, adapter_name: str = "default", is_trainable: bool = False, tokenizer=None
):
    """Attach a saved adapter to a base model (or a PeftModel), after ``validate_adapter``, from safetensors only.

    An adapter that adds a language token needs the base's ``tokenizer``: the token is added to both, its trained
    row put at this process's id (``base/language_tokens.py``), and the LoRA weights attached without peft's
    trainable-token layer, whose id is the one the adapter was trained with."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    try:
        meta = validate_adapter(adapter_dir)
    except AdapterError as e:
        raise AdapterError(f"cannot load the adapter in {adapter_dir}: {e}") from None
    if meta.new_token:
        if tokenizer is None:
            raise ConfigError(
                f"the adapter in {adapter_dir} adds the language token <|{meta.new_token}|>: load it with the base's "
                "tokenizer (load_adapter(model, path, tokenizer=processor.tokenizer))"
            )
        return _load_with_new_token(model, adapter_dir, adapter_name, is_trainable, tokenizer, meta.new_token)
    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable, use_safetensors=True)
        return model
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable)


def read_lora(adapter_dir: str | Path, device) -> tuple[object, dict, object]:
    """An adapter's ``LoraConfig``, LoRA weights and the trained row of the language token it adds (None when it adds
    none), read apart: the row goes into the base, at the id of the process that loads it (``base/language_tokens.py``),
    so the config loses peft's ``trainable_token_indices`` and the weights their token keys."""
    from peft import LoraConfig
    from peft.utils.save_and_load import load_peft_weights

    from whisper_lora.base.language_tokens import split_token_rows

    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.trainable_token_indices = None
    state, rows = split_token_rows(load_peft_weights(str(adapter_dir), device=str(device)))
    return config, state, None if rows is None else rows[0]


def _load_with_new_token(model, adapter_dir: Path, adapter_name: str, is_trainable: bool, tokenizer, code: str):
    from peft import PeftModel
    from peft.utils.save_and_load import set_peft_model_state_dict

    from whisper_lora.base.language_tokens import add_language_token

    config, state, row = read_lora(adapter_dir, next(model.parameters()).device)
    config.inference_mode = not is_trainable
    if row is None:
        raise AdapterError(f"the adapter in {adapter_dir} adds <|{code}|> but {PEFT_FILES[1]} holds no row for it")
    add_language_token(model, tokenizer, code, row)
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
    else:
        model = PeftModel(model, config, adapter_name)
    set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    for name, p in model.named_parameters():
        if f".{adapter_name}." in name:
            p.requires_grad_(is_trainable)
    return model if is_trainable else model.eval()  # new LoRA layers start in training mode (dropout), as peft's own
