"""Corpus readers: DVoice, Common Voice, generic CSV/JSONL manifests, audiofolder and ``datasets`` objects.

Expected trees::

    DVoice                      Common Voice              manifest
    <root>/texts/train.csv      <root>/train.tsv          any .csv/.tsv/.jsonl with columns
    <root>/texts/dev.csv        <root>/dev.tsv            audio (or path/wav/file), text (or
    <root>/texts/test.csv       <root>/test.tsv           sentence/words/transcript), optional
    <root>/wavs/*.wav           <root>/clips/*.mp3        id, duration, language, split

    audiofolder (datasets' layout)                        datasets
    <root>/metadata.csv  (train only), or                 a Dataset / DatasetDict with an Audio column
    <root>/{train,validation,test}/metadata.csv           (or a directory written by save_to_disk)
    columns file_name, transcription (or text/sentence)

An audiofolder is read from its metadata files directly: building it with ``datasets`` 5 encodes
audio through torchcodec, which needs FFmpeg and a torch build it was compiled for.

DVoice CSVs are tab-separated with the header ``wav  words  duration``. When a corpus has
no dev or test split, ``split_records`` carves one out deterministically from a seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from whisper_lora.data.records import BadRows, Utterance
from whisper_lora.errors import DataError, format_choices

SPLITS = ("train", "dev", "test")
FORMATS = ("auto", "dvoice", "commonvoice", "manifest", "audiofolder", "datasets")
_AUDIO_KEYS = ("audio", "path", "wav", "file", "audio_filepath", "file_name")
_TEXT_KEYS_AF = ("transcription", "text", "sentence", "words", "transcript")
# names a datasets/audiofolder split may carry for each of ours
_SPLIT_NAMES = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}
_TEXT_KEYS = ("text", "sentence", "words", "transcript", "transcription")


def _read_table(path: Path, delimiter: str | None = None) -> list[dict[str, str]]:
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        return rows
    delim = delimiter or ("\t" if path.suffix == ".tsv" or "\t" in path.open(encoding="utf-8").readline() else ",")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL))


def _pick(row: dict, keys: Iterable[str], path: Path, what: str) -> str:
    for k in keys:
        if k in row:
            return row[k]
    raise DataError(f"{path}: no {what} column; expected one of {', '.join(keys)}; found {', '.join(row)}")


def _records(rows, path, root_audio: Path, language: str, prefix: str, bad: BadRows, keys=(_AUDIO_KEYS, _TEXT_KEYS)):
    out = []
    for i, row in enumerate(rows):
        bad.total += 1
        audio = (_pick(row, keys[0], path, "audio") or "").strip()
        text = (_pick(row, keys[1], path, "text") or "").strip()
        rid = str(row.get("id") or f"{prefix}{i}:{Path(audio).stem}")
        if not text:
            bad.add("empty_transcript", rid)
            continue
        apath = Path(audio) if Path(audio).is_absolute() else root_audio / audio
        if not apath.is_file():
            bad.add("missing_file", rid)
            continue
        try:
            duration = float(row["duration"]) if row.get("duration") not in (None, "") else None
        except ValueError:
            duration = None
        out.append(Utterance(rid, str(apath), text, str(row.get("language") or language), duration))
    return out


def read_dvoice(root: str | Path, language: str, split: str) -> tuple[list[Utterance], BadRows]:
    """Read one split of a DVoice-layout corpus."""
    root = Path(root)
    path = root / "texts" / f"{split}.csv"
    if not path.is_file():
        have = sorted(p.name for p in (root / "texts").glob("*.csv")) if (root / "texts").is_dir() else []
        raise DataError(f"DVoice split {split!r} not found at {path}; found: {', '.join(have) or 'nothing'}")
    bad = BadRows()
    rows = _read_table(path, "\t")
    return _records(rows, path, root / "wavs", language, f"{split}/", bad, (("wav",), ("words",))), bad


def read_commonvoice(root: str | Path, language: str, split: str) -> tuple[list[Utterance], BadRows]:
    """Read one split (``train.tsv``, ``dev.tsv``, ``test.tsv``) of a Common Voice release."""
    root = Path(root)
    path = root / f"{split}.tsv"
    if not path.is_file():
        raise DataError(
            f"Common Voice split {split!r} not found at {path}; found: "
            f"{', '.join(sorted(p.name for p in root.glob('*.tsv'))) or 'nothing'}"
        )
    bad = BadRows()
    rows = _read_table(path, "\t")
    return _records(rows, path, root / "clips", language, f"{split}/", bad, (("path",), ("sentence",))), bad


def read_manifest(path: str | Path, language: str, split: str | None = None) -> tuple[list[Utterance], BadRows]:
    """Read a CSV/TSV/JSONL manifest; audio paths are relative to the manifest's directory.

    When the manifest has a ``split`` column and ``split`` is given, only those rows are kept.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    rows = _read_table(path)
    if split is not None and rows and "split" in rows[0]:
        rows = [r for r in rows if r.get("split") == split]
    bad = BadRows()
    return _records(rows, path, path.parent, language, f"{path.stem}/", bad), bad


def describe_source(data) -> str:
    """A corpus as text for configs and metadata: its path, or a ``datasets`` object's fingerprint."""
    if not is_hf_dataset(data):
        return str(data)
    parts = {"train": data} if type(data).__name__ == "Dataset" else dict(data)
    return "datasets:" + ",".join(f"{k}={getattr(v, '_fingerprint', '?')}" for k, v in parts.items())


def is_hf_dataset(obj) -> bool:
    """Whether ``obj`` is a ``datasets.Dataset`` or ``DatasetDict``."""
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ in ("Dataset", "DatasetDict")


def _audiofolder_metadata(directory: Path) -> Path | None:
    for name in ("metadata.csv", "metadata.jsonl"):
        if (directory / name).is_file():
            return directory / name
    return None


def _audiofolder_splits(root: Path) -> dict[str, Path]:
    """Our split name -> metadata file of an audiofolder tree (a lone top-level file is train)."""
    found = {}
    for ours, names in _SPLIT_NAMES.items():
        for name in names:
            meta = _audiofolder_metadata(root / name)
            if meta is not None:
                found[ours] = meta
                break
    if not found and _audiofolder_metadata(root) is not None:
        found["train"] = _audiofolder_metadata(root)
    return found


def detect_format(root) -> str:
    """Guess a corpus format from its files (or its type, for a ``datasets`` object)."""
    if is_hf_dataset(root):
        return "datasets"
    root = Path(root)
    if root.is_file():
        return "manifest"
    if (root / "texts").is_dir():
        return "dvoice"
    if any((root / f"{s}.tsv").is_file() for s in SPLITS) and (root / "clips").is_dir():
        return "commonvoice"
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "datasets"
    if _audiofolder_splits(root):
        return "audiofolder"
    manifests = [p for p in root.glob("*") if p.suffix in (".csv", ".tsv", ".jsonl")]
    if len(manifests) == 1:
        return "manifest"
    raise DataError(
        f"cannot tell the corpus format of {root}: expected texts/ (DVoice), train.tsv + clips/ "
        f"(Common Voice) or one manifest file; found: {', '.join(sorted(p.name for p in root.iterdir())) or 'nothing'}"
    )


def _dataset_splits(data) -> dict[str, object]:
    """Our split name -> ``datasets.Dataset`` of a Dataset, DatasetDict or ``save_to_disk`` directory."""
    if not is_hf_dataset(data):
        from datasets import load_from_disk

        data = load_from_disk(str(data))
    if type(data).__name__ == "Dataset":
        return {"train": data}
    out = {}
    for ours, names in _SPLIT_NAMES.items():
        name = next((n for n in names if n in data), None)
        if name is not None:
            out[ours] = data[name]
    if not out:
        raise DataError(f"DatasetDict has no usable split; found {', '.join(data)}; expected train, validation, test")
    return out


def _stored_audio(blob: bytes, suffix: str) -> Path:
    """A file holding audio bytes that a dataset carries inline (content-addressed, written once)."""
    from whisper_lora.base.resolve import cache_root

    digest = hashlib.sha256(blob).hexdigest()[:32]
    path = cache_root() / "audio" / f"{digest}{suffix or '.audio'}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{id(blob)}.tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return path


def read_hf_dataset(ds, language: str, split: str, bad: BadRows) -> list[Utterance]:
    """Utterances of a ``datasets.Dataset`` with an ``Audio`` column (or a column of paths) and a text column.

    Audio is not decoded here (``Audio(decode=False)``): files are used where they are, inline bytes
    are written once to ``<cache>/audio/``, and the library's own decoder reads both.
    """
    from datasets import Audio

    cols = ds.column_names
    audio_col = next((c for c, f in ds.features.items() if isinstance(f, Audio)), None)
    audio_col = audio_col or next((k for k in _AUDIO_KEYS if k in cols), None)
    text_col = next((k for k in _TEXT_KEYS_AF if k in cols), None)
    if audio_col is None or text_col is None:
        raise DataError(
            f"dataset split {split!r} needs an Audio column and a text column ({', '.join(_TEXT_KEYS_AF)}); "
            f"found columns {', '.join(cols)}"
        )
    if isinstance(ds.features[audio_col], Audio):
        ds = ds.cast_column(audio_col, Audio(decode=False))
    keep = [c for c in (audio_col, text_col, "id", "language") if c in cols]
    out = []
    for i, row in enumerate(ds.select_columns(keep)):
        bad.total += 1
        value, text = row[audio_col], (row[text_col] or "").strip()
        rid = str(row.get("id") or f"{split}/{i}")
        path = value.get("path") if isinstance(value, dict) else value
        if not text:
            bad.add("empty_transcript", rid)
            continue
        if path and Path(path).is_file():
            audio = Path(path)
        elif isinstance(value, dict) and value.get("bytes"):
            audio = _stored_audio(value["bytes"], Path(path or "").suffix)
        else:
            bad.add("missing_file", rid)
            continue
        out.append(Utterance(rid, str(audio), text, str(row.get("language") or language)))
    return out


def split_records(records: list[Utterance], fractions: tuple[float, float], seed: int) -> dict[str, list[Utterance]]:
    """Split records deterministically into train/dev/test by hashing their ids with ``seed``.

    ``fractions`` are the dev and test shares. The assignment of a record does not depend on
    the order of the others, so adding rows never moves existing ones between splits.
    """
    dev_f, test_f = fractions
    out: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for r in records:
        u = int(hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out["test" if u < test_f else "dev" if u < test_f + dev_f else "train"].append(r)
    return out


def load_corpus(
    root: str | Path,
    language: str,
    fmt: str = "auto",
    split_fractions: tuple[float, float] = (0.1, 0.1),
    seed: int = 0,
    splits: Iterable[str] = SPLITS,
) -> tuple[dict[str, list[Utterance]], BadRows]:
    """Read the requested splits of a corpus (default all three).

    A split the corpus has is read as it is, and the other splits are not needed for it: a
    corpus with only ``test`` can be evaluated. A requested ``dev`` or ``test`` split the corpus
    lacks is carved out of ``train`` deterministically (``split_records``), taking only the shares
    of the missing splits, so no row is ever dropped.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown corpus format {fmt!r}; valid: {format_choices(FORMATS)}")
    wanted = tuple(splits)
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown split(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SPLITS)}")
    if not is_hf_dataset(root):
        root = Path(root)
        if not root.exists():
            raise DataError(f"corpus {root} does not exist")
    fmt = detect_format(root) if fmt == "auto" else fmt
    bad = BadRows()
    found: dict[str, list[Utterance]] = {}
    if fmt == "datasets":
        parts = _dataset_splits(root)
        available = lambda s: s in parts  # noqa: E731
        read = lambda s: read_hf_dataset(parts[s], language, s, bad)  # noqa: E731
        root = "the dataset" if is_hf_dataset(root) else root
    elif fmt == "audiofolder":
        metas = _audiofolder_splits(root)
        available = lambda s: s in metas  # noqa: E731

        def read(s: str) -> list[Utterance]:
            meta = metas[s]
            keys = (("file_name",), _TEXT_KEYS_AF)
            return _records(_read_table(meta), meta, meta.parent, language, f"{s}/", bad, keys)

    elif fmt == "manifest":
        path = root if root.is_file() else next(p for p in root.glob("*") if p.suffix in (".csv", ".tsv", ".jsonl"))
        rows = _read_table(path)
        if rows and "split" in rows[0]:
            present = [s for s in SPLITS if any(r.get("split") == s for r in rows)]
        else:
            present, rows = ["train"], [{**r, "split": "train"} for r in rows]
        available = lambda s: s in present  # noqa: E731
        read = lambda s: _records([r for r in rows if r.get("split") == s], path, path.parent, language, f"{s}/", bad)  # noqa: E731
    else:
        reader = read_dvoice if fmt == "dvoice" else read_commonvoice
        available = lambda s: _split_file(root, fmt, s).is_file()  # noqa: E731

        def read(s: str) -> list[Utterance]:
            nonlocal bad
            recs, b = reader(root, language, s)
            bad = bad.merge(b)
            return recs

    if not available("train") and any(s == "train" or not available(s) for s in wanted):
        need = (
            "train"
            if "train" in wanted
            else f"train (to carve {' and '.join(s for s in wanted if not available(s))} from)"
        )
        have = [s for s in SPLITS if available(s)]
        raise DataError(f"corpus {root} has no {need} split; splits found: {', '.join(have) or 'none'}")
    for s in wanted:
        if available(s):
            found[s] = read(s)
    carve = [s for s in ("dev", "test") if not available(s)]  # the corpus's missing splits, whatever was asked
    if carve and any(s == "train" or s in carve for s in wanted):
        # only the shares of the missing splits leave train, so no row is discarded, and train is the same
        # whichever splits a caller asks for
        shares = tuple(f if s in carve else 0.0 for s, f in zip(("dev", "test"), split_fractions, strict=True))
        carved = split_records(found["train"] if "train" in found else read("train"), shares, seed)
        found.update({s: carved[s] for s in (*carve, "train")})
    return {s: found[s] for s in wanted}, bad


def _split_file(root: Path, fmt: str, split: str) -> Path:
    return root / "texts" / f"{split}.csv" if fmt == "dvoice" else root / f"{split}.tsv"
