"""Czech voice-acted dialogue from Fish Fillets NG (Debian ``fillets-ng-data`` + ``fillets-ng-data-cs``).

Tree (under ``/usr/share/games/fillets-ng`` once both packages are installed)::

    script/<level>/dialogs_cs.lua   dialogId("id", font, "english") followed by dialogStr("czech")
    sound/<level>/cs/<id>.ogg       the recorded line

``build_fillets_manifest`` pairs each recorded line with its Czech text and holds out whole
levels (so test lines are never heard in training), writing a manifest with a ``split`` column.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

from whisper_lora.atomic import atomic_write_text
from whisper_lora.errors import DataError

DEFAULT_ROOT = Path("/usr/share/games/fillets-ng")
_DIALOG = re.compile(r'dialogId\(\s*"([^"]+)"[^\n]*\n\s*dialogStr\(\s*"((?:[^"\\]|\\.)*)"\s*\)')


def parse_dialogs(lua_text: str) -> dict[str, str]:
    """``{dialog id: Czech text}`` from a ``dialogs_cs.lua`` file."""
    return {m.group(1): m.group(2).replace('\\"', '"').strip() for m in _DIALOG.finditer(lua_text)}


def _split_of(level: str, seed: int, test_fraction: float, dev_fraction: float) -> str:
    u = int(hashlib.sha256(f"{seed}:{level}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test_fraction else "dev" if u < test_fraction + dev_fraction else "train"


def level_split(level: str, seed: int = 0, test_fraction: float = 0.12, dev_fraction: float = 0.05) -> str:
    """The split (train, dev, test) a level belongs to in ``build_fillets_manifest``'s defaults."""
    return _split_of(level, seed, test_fraction, dev_fraction)


def recorded_lines(root: str | Path = DEFAULT_ROOT, voice: str = "cs") -> list[tuple[str, Path]]:
    """``(level, audio file)`` of every recorded line of a voice pack (``cs``, ``nl`` or the English ``en``)."""
    files = sorted(Path(root).glob(f"sound/*/{voice}/*.ogg"))
    if not files:
        raise DataError(f"no recorded lines under {root}/sound/*/{voice}/; install Debian's fillets-ng-data-{voice}")
    return [(f.parent.parent.name, f) for f in files]


def build_fillets_manifest(
    root: str | Path = DEFAULT_ROOT,
    out: str | Path = "data/cs_fillets/manifest.csv",
    test_fraction: float = 0.12,
    dev_fraction: float = 0.05,
    seed: int = 0,
) -> tuple[Path, dict[str, int]]:
    """Write ``id, audio, text, split`` rows; returns the manifest path and rows per split."""
    root = Path(root)
    scripts = sorted(root.glob("script/*/dialogs_cs.lua"))
    if not scripts:
        raise DataError(
            f"no script/*/dialogs_cs.lua under {root}; install Debian's fillets-ng-data "
            "and fillets-ng-data-cs (or pass the directory holding script/ and sound/)"
        )
    rows, counts = [], {"train": 0, "dev": 0, "test": 0}
    for lua in scripts:
        level = lua.parent.name
        split = _split_of(level, seed, test_fraction, dev_fraction)
        for did, text in parse_dialogs(lua.read_text(encoding="utf-8")).items():
            audio = root / "sound" / level / "cs" / f"{did}.ogg"
            if audio.is_file() and text:
                rows.append({"id": f"{level}/{did}", "audio": str(audio), "text": text, "split": split})
                counts[split] += 1
    if not rows:
        raise DataError(f"found dialog scripts under {root} but no recorded Czech lines in sound/*/cs/")
    out = Path(out)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "audio", "text", "split"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out, buf.getvalue())
    return out, counts
