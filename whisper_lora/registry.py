"""A language-keyed adapter registry over a directory: ``<root>/<lang>/`` holds one adapter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .adapter_io import PEFT_FILES, AdapterMetadata, read_metadata
from .errors import AdapterError, format_choices
from .languages import resolve_language

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "adapters"
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter in the registry."""

    name: str  # registry key: the directory name (a language code)
    path: Path  # absolute adapter directory
    metadata: AdapterMetadata

    @property
    def language(self) -> str:
        return self.metadata.language

    @property
    def whisper_language(self) -> str:
        return self.metadata.whisper_language


class AdapterRegistry:
    """Adapters by language under one root directory (default: the repository's ``adapters/``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or DEFAULT_ROOT).resolve()
        if not self.root.is_dir():
            raise AdapterError(f"adapter registry {self.root} does not exist")

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise AdapterError(
                f"invalid adapter name {name!r}: use a language code such as 'sw' or 'ary' "
                "(lowercase letters, digits, '-' or '_'; no paths)"
            )
        path = (self.root / name).resolve()
        if path.parent != self.root:  # symlinks or odd names must not lead outside the registry
            raise AdapterError(f"adapter {name!r} resolves outside the registry {self.root}")
        return path

    def names(self) -> list[str]:
        """Registry keys of every directory that holds a complete adapter."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _SAFE_NAME.match(p.name) and all((p / f).exists() for f in PEFT_FILES)
        )

    def entries(self) -> list[AdapterEntry]:
        return [self.get(n) for n in self.names()]

    def get(self, name: str) -> AdapterEntry:
        """The adapter stored under ``name`` exactly (no language resolution)."""
        path = self._dir(name)
        if not path.is_dir():
            raise AdapterError(
                f"no adapter {name!r} in {self.root}; available: {format_choices(self.names()) or 'none'}"
            )
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise AdapterError(
                f"adapter {name!r} holds pickled weights ({', '.join(pickled)}); only safetensors "
                "are loaded -- re-save it with safe_serialization=True"
            )
        return AdapterEntry(name, path, read_metadata(path))

    def find(self, language: str) -> AdapterEntry | None:
        """The adapter for a language code or alias (``ary``, ``darija``, ``swa``), or None."""
        code = resolve_language(language).code  # ConfigError names the valid codes
        return self.get(code) if code in self.names() else None

    def check_compatible(self, entry: AdapterEntry, base_info) -> None:
        """Refuse an adapter trained on another base (fingerprint or dimensions differ)."""
        b = entry.metadata.base
        problems = []
        for key in ("d_model", "encoder_layers", "decoder_layers", "vocab_size"):
            if key in b and b[key] != getattr(base_info, key):
                problems.append(f"{key} {b[key]} != base {getattr(base_info, key)}")
        fp = b.get("fingerprint")
        if fp and base_info.fingerprint != "unknown" and fp != base_info.fingerprint:
            problems.append(
                f"base fingerprint {fp} != loaded {base_info.fingerprint} ({b.get('name')} vs {base_info.name})"
            )
        if problems:
            raise AdapterError(f"adapter {entry.name!r} is incompatible with the loaded base: " + "; ".join(problems))
