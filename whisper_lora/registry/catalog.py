"""A language-keyed adapter registry over a directory: ``<root>/<lang>/`` holds one adapter.

Every entry is validated on its own (``adapter_io.validate_adapter``, inside the root, and, when
the registry knows the base, compatible with it), so one broken adapter never hides the others:
``entries()`` are the healthy ones, ``broken()`` lists the rest with their reasons, and asking
for a broken one raises an ``AdapterError`` that says what is wrong with it.

Where the registry is: the directory given (``--adapters``), else ``$WHISPER_LORA_ADAPTERS``, else
``./adapters``. A registry is a snapshot: the directories are read and validated once, when it is
created, and again only on ``refresh()`` (nothing re-reads safetensors headers per request).

The root is kept as given: a root that is a symlink (``adapters -> v2``) is followed again by every ``refresh()``
and ``changed()``, so repointing it is a change like any other; a root that has gone away (its target deleted) is
an empty registry, with a warning, until it is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from whisper_lora.atomic import recover_all
from whisper_lora.errors import AdapterError, BrokenAdapterError, format_choices
from whisper_lora.languages import resolve_language
from whisper_lora.registry.adapter_io import (
    METADATA_FILE,
    PEFT_FILES,
    AdapterMetadata,
    touches_encoder,
    validate_adapter,
)

ENV_VAR = "WHISPER_LORA_ADAPTERS"
DEFAULT_DIR = "adapters"  # relative to the working directory
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
log = logging.getLogger("whisper_lora")


@dataclass(frozen=True)
class AdapterEntry:
    """One healthy adapter in the registry."""

    name: str  # registry key: the directory name (a language code)
    path: Path  # absolute adapter directory
    metadata: AdapterMetadata
    version: str = ""  # what is on disk (``dir_version``): a replaced or rewritten adapter gets a new one
    touches_encoder: bool = True  # it holds encoder weights (``adapter_io.touches_encoder``)

    @property
    def language(self) -> str:
        return self.metadata.language

    @property
    def whisper_language(self) -> str:
        return self.metadata.whisper_language

    @property
    def detected_as(self) -> str | None:
        return self.metadata.detected_as


@dataclass(frozen=True)
class BrokenAdapter:
    """A registry directory that cannot be used, and why."""

    name: str  # directory name
    path: Path  # the directory as found under the root (not followed)
    reason: str  # what is wrong, in words

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "reason": self.reason}


def dir_version(path: Path) -> str:
    """A short hash of a directory's identity and its files' sizes and modification times.

    ``atomic_directory`` replaces an adapter with a new directory (new inode); an in-place rewrite
    changes a file's size or mtime. Either gives a new version, without reading any weights.
    """
    st = path.stat()
    parts = [f"{st.st_ino}:{st.st_mtime_ns}"]
    for f in sorted(path.iterdir()):
        if f.is_file():
            fs = f.stat()
            parts.append(f"{f.name}:{fs.st_ino}:{fs.st_size}:{fs.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def check_compatible(entry: AdapterEntry, base_info) -> None:
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


DEFAULT_SOURCE = "the default ./adapters"


def registry_root(root: str | Path | None = None) -> tuple[Path, str]:
    """The registry directory and where it came from: ``root``, else ``$WHISPER_LORA_ADAPTERS``, else ``./adapters``."""
    if root:
        return Path(root), "given"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    return Path(DEFAULT_DIR), DEFAULT_SOURCE


def serving_registry(root: str | Path | None = None, base=None) -> AdapterRegistry:
    """The registry a ``Transcriber`` (``transcribe``, ``serve``, ``demo``) decodes with: one that was named
    (``root``, ``$WHISPER_LORA_ADAPTERS``) must exist; without either, a missing ``./adapters`` is an empty registry
    and the base serves every language (logged once)."""
    path, source = registry_root(root)
    missing_ok = source == DEFAULT_SOURCE
    if missing_ok and not path.is_dir():
        log.info("no adapter registry (no --adapters, no $%s, no ./adapters): the base serves every language", ENV_VAR)
    return AdapterRegistry(path, base, missing_ok=missing_ok)


class AdapterRegistry:
    """Adapters by language under one root directory (``registry_root``), read once: ``refresh()`` re-reads.

    ``base`` (a ``BaseModelInfo``) makes adapters trained on another base count as broken. ``missing_ok``: a root
    that does not exist is an empty registry (``serving_registry``) until it appears, instead of an error.
    """

    def __init__(self, root: str | Path | None = None, base=None, missing_ok: bool = False):
        path, source = registry_root(root)
        self.root = path.absolute()  # not resolved: a symlinked root is followed anew by every look (module doc)
        self.base = base
        self.missing_ok = missing_ok
        if not missing_ok and not self.root.is_dir():
            raise AdapterError(
                f"adapter registry {self.root} does not exist ({source}); "
                f"pass --adapters DIR (Python: adapters=...) or set ${ENV_VAR}"
            )
        self._good: dict[str, AdapterEntry] = {}
        self._broken: dict[str, BrokenAdapter] = {}
        self._signature_seen = ""
        self.refresh()

    def refresh(self) -> AdapterRegistry:
        """Read and validate every adapter directory again (after adapters were added, replaced or removed)."""
        good, broken = {}, {}
        real = self._real_root()  # one target for the whole look, however the root is repointed meanwhile
        if real is None and not (self.missing_ok and not self.root.is_symlink()):
            log.warning(
                "adapter registry %s is gone (a symlink to a deleted directory?): no adapters until it is back",
                self.root,
            )
        if real is not None:
            recover_all(real)  # an adapter whose write was killed between its two renames is not under its name
        signature = self._signature(real)
        for path in self._candidates(real):
            try:
                good[path.name] = self._load(path, real)
            except AdapterError as e:
                broken[path.name] = BrokenAdapter(path.name, path, str(e))
        self._good, self._broken, self._signature_seen = good, broken, signature
        return self

    def _real_root(self) -> Path | None:
        """The directory the root leads to now (a symlink followed); None when there is none."""
        real = self.root.resolve()
        return real if real.is_dir() else None

    def signature(self) -> str:
        """What is on disk now: where the root leads, and every adapter directory's name and ``dir_version``
        (stat calls only)."""
        return self._signature(self._real_root())

    def _signature(self, real: Path | None) -> str:
        parts = [f"root={real}"]
        for path in self._candidates(real):
            try:
                parts.append(f"{path.name}={dir_version(path.resolve())}")
            except OSError:  # removed while we looked
                parts.append(f"{path.name}=gone")
        return "|".join(parts)

    def changed(self) -> bool:
        """True when an adapter directory was added, removed, replaced or rewritten since the last ``refresh()``."""
        return self.signature() != self._signature_seen

    def with_base(self, base) -> AdapterRegistry:
        """The same root, checking compatibility with ``base``."""
        return AdapterRegistry(self.root, base, self.missing_ok)

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise AdapterError(
                f"invalid adapter name {name!r}: use a language code such as 'sw' or 'ary' "
                "(lowercase letters, digits, '-' or '_'; no paths)"
            )
        return self.root / name

    @staticmethod
    def _candidates(real_root: Path | None) -> list[Path]:
        """Directories of ``real_root`` that look like adapters (any adapter file inside), sorted; hidden ones
        (writes in progress) are skipped. None, or a root removed while we look: none."""
        if real_root is None:
            return []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            return sorted(
                p
                for p in real_root.iterdir()
                if not p.name.startswith(".")
                and p.is_dir()
                and any((p / f).exists() for f in (*PEFT_FILES, METADATA_FILE))
            )
        return []

    def _load(self, path: Path, real_root: Path) -> AdapterEntry:
        """Validate one directory of ``real_root``; ``AdapterError`` says why it cannot be used."""
        name = path.name
        if not _SAFE_NAME.match(name):
            raise AdapterError(f"directory name {name!r} is not a language code")
        real = path.resolve()
        if real.parent != real_root:  # symlinks or odd names must not lead outside the registry
            raise AdapterError(f"adapter {name!r} resolves outside the registry ({real})")
        entry = AdapterEntry(name, real, validate_adapter(real), dir_version(real), touches_encoder(real))
        if self.base is not None:
            check_compatible(entry, self.base)
        return entry

    def scan(self) -> tuple[list[AdapterEntry], list[BrokenAdapter]]:
        """Every adapter directory, validated on its own: (healthy entries, broken ones with reasons)."""
        return list(self._good.values()), list(self._broken.values())

    def entries(self) -> list[AdapterEntry]:
        """The healthy adapters."""
        return self.scan()[0]

    def broken(self) -> list[BrokenAdapter]:
        """The adapter directories that cannot be used, with the reason for each."""
        return self.scan()[1]

    def names(self) -> list[str]:
        """Registry keys of the healthy adapters."""
        return [e.name for e in self.entries()]

    def get(self, name: str) -> AdapterEntry:
        """The adapter stored under ``name`` exactly (no language resolution); a broken one raises why."""
        self._dir(name)  # refuses names that are not plain language codes
        if name in self._broken:
            raise BrokenAdapterError(f"adapter {name!r} is broken: {self._broken[name].reason}")
        if name not in self._good:
            raise AdapterError(
                f"no adapter {name!r} in {self.root}; available: {format_choices(self.names()) or 'none'}"
            )
        return self._good[name]

    def find(self, language: str) -> AdapterEntry | None:
        """The adapter for a language code or alias (``ary``, ``darija``, ``swa``), None when there is none.

        A language whose adapter directory exists but is broken raises ``AdapterError`` with the
        reason, instead of falling back to the base silently.
        """
        code = resolve_language(language).code  # ConfigError names the valid codes
        if code not in self._good and code not in self._broken:
            return None
        return self.get(code)

    def for_language(self, language: str) -> AdapterEntry | None:
        """The adapter serving a registry or Whisper language code: ``find``, else an adapter whose Whisper
        language it is (a detected ``ar`` is served by a proxy adapter ``ary``); a broken one raises why."""
        entry = self.find(language)
        if entry is None:
            whisper = resolve_language(language).whisper
            entry = next((e for e in self.entries() if whisper and e.detected_as == whisper), None)
        return entry

    def digest(self) -> dict[str, str]:
        """Every adapter directory's name and a hash of its files' contents: equal on two machines exactly when
        they hold the same adapters (``dir_version`` is a stat hash, local to one file system)."""
        out = {}
        for path in self._candidates(self._real_root()):
            h = hashlib.sha256()
            for f in sorted(path.iterdir()):
                if f.is_file():
                    h.update(f.name.encode() + b"\0")
                    with open(f, "rb") as fh:
                        for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                            h.update(block)
            out[path.name] = h.hexdigest()[:16]
        return out

    def check_compatible(self, entry: AdapterEntry, base_info) -> None:
        """Refuse an adapter trained on another base (see the module-level ``check_compatible``)."""
        check_compatible(entry, base_info)
