import csv
import json

import numpy as np
import pytest
from transformers import WhisperProcessor

from whisper_lora.data.audio import write_wav
from whisper_lora.data.features import featurize, label_ids
from whisper_lora.data.readers import load_corpus, read_commonvoice, read_dvoice, read_manifest, split_records
from whisper_lora.data.records import BAD_REASONS, BadRows, Utterance
from whisper_lora.errors import ConfigError, DataError
from whisper_lora.languages import decoder_token


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_dvoice_reads_every_split(sw_corpus):
    splits, bad = load_corpus(sw_corpus, "sw")
    assert {k: len(v) for k, v in splits.items()} == {"train": 24, "dev": 4, "test": 4}
    assert bad.bad == 0 and bad.total == 32
    first = splits["train"][0]
    assert first.language == "sw" and first.duration > 0 and first.audio.endswith(".wav")
    assert first.text == _rows(sw_corpus / "texts" / "train.csv")[0]["words"]


def test_dvoice_missing_split_lists_what_exists(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "dev.csv").write_text("wav\twords\tduration\n")
    with pytest.raises(DataError, match=r"train.*found: dev.csv"):
        read_dvoice(tmp_path, "sw", "train")


def test_a_test_only_corpus_can_be_read_for_its_test_split(corpus_copy):
    (corpus_copy / "texts" / "train.csv").unlink()
    (corpus_copy / "texts" / "dev.csv").unlink()
    splits, bad = load_corpus(corpus_copy, "sw", splits=("test",))
    assert list(splits) == ["test"] and len(splits["test"]) == 4 and bad.bad == 0
    with pytest.raises(DataError, match=r"no train \(to carve dev from\) split; splits found: test"):
        load_corpus(corpus_copy, "sw", splits=("dev",))
    with pytest.raises(DataError, match="no train split; splits found: test"):
        load_corpus(corpus_copy, "sw")


def test_carving_a_missing_dev_split_discards_nothing(corpus_copy):
    (corpus_copy / "texts" / "dev.csv").unlink()
    splits, _ = load_corpus(corpus_copy, "sw", split_fractions=(0.25, 0.25))
    ids = {k: sorted(r.id for r in v) for k, v in splits.items()}
    assert len(ids["train"]) + len(ids["dev"]) == 24 and len(ids["dev"]) > 0  # every training row is kept
    assert ids["test"] == sorted(r.id for r in load_corpus(corpus_copy, "sw", splits=("test",))[0]["test"])
    # train is the same whichever splits are asked for
    assert sorted(r.id for r in load_corpus(corpus_copy, "sw", splits=("train", "test"))[0]["train"]) == ids["train"]


def test_commonvoice_layout(sw_corpus, tmp_path):
    (tmp_path / "clips").mkdir()
    rows = _rows(sw_corpus / "texts" / "train.csv")[:3]
    with open(tmp_path / "train.tsv", "w") as f:
        f.write("client_id\tpath\tsentence\n")
        for r in rows:
            (tmp_path / "clips" / r["wav"]).write_bytes((sw_corpus / "wavs" / r["wav"]).read_bytes())
            f.write(f"x\t{r['wav']}\t{r['words']}\n")
    recs, bad = read_commonvoice(tmp_path, "sw", "train")
    assert [r.text for r in recs] == [r["words"] for r in rows] and bad.bad == 0
    # no dev/test: carved out deterministically
    splits, _ = load_corpus(tmp_path, "sw", split_fractions=(0.34, 0.34), seed=1)
    again, _ = load_corpus(tmp_path, "sw", split_fractions=(0.34, 0.34), seed=1)
    assert sum(len(v) for v in splits.values()) == 3
    assert {k: [r.id for r in v] for k, v in splits.items()} == {k: [r.id for r in v] for k, v in again.items()}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_generic_manifest(sw_corpus, tmp_path, suffix):
    rows = _rows(sw_corpus / "texts" / "train.csv")[:4]
    items = [
        {"audio": str(sw_corpus / "wavs" / r["wav"]), "text": r["words"], "split": s}
        for r, s in zip(rows, ["train", "train", "dev", "test"], strict=True)
    ]
    path = tmp_path / f"m{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(i) for i in items))
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["audio", "text", "split"])
            w.writeheader()
            w.writerows(items)
    recs, _ = read_manifest(path, "sw")
    assert len(recs) == 4
    splits, _ = load_corpus(path, "sw")
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [2, 1, 1]


def test_split_records_is_order_independent():
    recs = [Utterance(f"u{i}", "/x", "t", "sw") for i in range(200)]
    a = split_records(recs, (0.1, 0.1), seed=3)
    b = split_records(list(reversed(recs)), (0.1, 0.1), seed=3)
    assert {k: sorted(r.id for r in v) for k, v in a.items()} == {k: sorted(r.id for r in v) for k, v in b.items()}
    assert 5 < len(a["test"]) < 40 and split_records(recs, (0.1, 0.1), seed=4)["test"] != a["test"]


def test_every_bad_row_reason_is_counted(corpus_copy, base_dir):
    """One damaged row per reason; each is skipped and counted under its own name."""
    processor = WhisperProcessor.from_pretrained(base_dir)
    wavs = corpus_copy / "wavs"
    write_wav(wavs / "long.wav", np.random.default_rng(0).uniform(-0.3, 0.3, 16000 * 31).astype(np.float32))
    write_wav(wavs / "silent.wav", np.zeros(16000, np.float32))
    (wavs / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    good = _rows(corpus_copy / "texts" / "train.csv")[0]
    extra = [
        ("missing.wav", "hakuna faili"),
        (good["wav"], ""),
        ("broken.wav", "faili bovu"),
        ("long.wav", "sauti ndefu sana"),
        ("silent.wav", "kimya"),
        (good["wav"], "neno " * 460),
    ]
    with open(corpus_copy / "texts" / "train.csv", "a", encoding="utf-8") as f:
        for wav, text in extra:
            f.write(f"{wav}\t{text}\t1.0\n")
    splits, bad = load_corpus(corpus_copy, "sw")
    assert bad.reasons == {"missing_file": 1, "empty_transcript": 1}
    _, bad = featurize(splits["train"], processor, bad)
    assert dict(bad.reasons) == {r: 1 for r in BAD_REASONS}
    assert bad.total == 32 + len(extra)
    summary = bad.summary()
    assert all(r in summary for r in BAD_REASONS)
    with pytest.raises(DataError, match="more than the allowed 5%.*too_long_labels"):
        bad.check(0.05, "corpus")
    bad.check(0.5, "corpus")  # within the allowed fraction: no error


def test_labels_carry_language_prefix(base_dir):
    tok = WhisperProcessor.from_pretrained(base_dir).tokenizer
    ids = label_ids(tok, "habari", "sw")
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<|sw|>", "<|transcribe|>", "<|notimestamps|>"]
    assert tok.decode(ids, skip_special_tokens=True).strip() == "habari"
    # labels start with a Whisper token code: Darija's, from the table, is Arabic's; a token the tokenizer lacks is refused
    assert tok.convert_ids_to_tokens(label_ids(tok, "salam", decoder_token("ary"))[:1]) == ["<|ar|>"]
    with pytest.raises(ConfigError, match=r"<\|ary\|> is not a token of this tokenizer"):
        label_ids(tok, "salam", "ary")


def test_bad_reason_name_is_checked():
    with pytest.raises(ValueError, match="valid: missing_file"):
        BadRows().add("nope", "x")


def _sw_dataset(sw_corpus, split="train"):
    from datasets import Audio, Dataset

    rows = _rows(sw_corpus / "texts" / f"{split}.csv")
    ds = Dataset.from_dict(
        {"audio": [str(sw_corpus / "wavs" / r["wav"]) for r in rows], "sentence": [r["words"] for r in rows]}
    )
    return ds.cast_column("audio", Audio(sampling_rate=16000)), rows  # as in the seed tutorial


def test_a_datasets_dict_maps_its_splits(sw_corpus):
    from datasets import DatasetDict

    train, rows = _sw_dataset(sw_corpus)
    dev, _ = _sw_dataset(sw_corpus, "dev")
    splits, bad = load_corpus(DatasetDict(train=train, validation=dev), "sw")
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 24 - len(splits["test"]),
        "dev": 4,
        "test": len(splits["test"]),
    }
    assert splits["test"], "the missing test split is carved out of train"
    got = {u.text for s in splits.values() for u in s}
    assert got == {r["words"] for r in rows} | {u.text for u in splits["dev"]}
    assert bad.bad == 0


def test_inline_audio_bytes_are_stored_once(sw_corpus, tmp_path, monkeypatch):
    from datasets import Audio, Dataset

    monkeypatch.setenv("WHISPER_LORA_CACHE", str(tmp_path / "cache"))
    rows = _rows(sw_corpus / "texts" / "test.csv")
    blobs = [(sw_corpus / "wavs" / r["wav"]).read_bytes() for r in rows]
    ds = Dataset.from_dict({"audio": [{"bytes": b, "path": None} for b in blobs], "text": [r["words"] for r in rows]})
    ds = ds.cast_column("audio", Audio()).add_item({"audio": None, "text": "no audio"})
    splits, bad = load_corpus(ds, "sw", splits=("train",))
    assert [open(u.audio, "rb").read() for u in splits["train"]] == blobs
    assert bad.reasons["missing_file"] == 1


def test_audiofolder_layout(sw_corpus, tmp_path):
    for ours, theirs in (("train", "train"), ("dev", "validation")):
        d = tmp_path / "af" / theirs
        d.mkdir(parents=True)
        with open(d / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file_name", "transcription"])
            for r in _rows(sw_corpus / "texts" / f"{ours}.csv"):
                (d / r["wav"]).write_bytes((sw_corpus / "wavs" / r["wav"]).read_bytes())
                w.writerow([r["wav"], r["words"]])
    splits, bad = load_corpus(tmp_path / "af", "sw")
    assert (len(splits["train"]) + len(splits["test"]), len(splits["dev"]), bad.bad) == (24, 4, 0)  # test carved
    assert splits["dev"][0].text == _rows(sw_corpus / "texts" / "dev.csv")[0]["words"]


def test_a_dataset_without_a_text_column_is_refused(sw_corpus):
    ds, _ = _sw_dataset(sw_corpus)
    with pytest.raises(DataError, match=r"text column.*found columns audio, label"):
        load_corpus(ds.rename_column("sentence", "label"), "sw", splits=("train",))
