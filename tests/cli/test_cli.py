import json
import subprocess
import sys

import pytest

from whisper_lora.cli import main


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "whisper_lora.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_train_then_eval_json(tiny_dir, sw_corpus, tmp_path):
    out = tmp_path / "sw"
    r = _run(
        "train",
        "--language",
        "sw",
        "--data",
        str(sw_corpus),
        "--out",
        str(out),
        "--base",
        str(tiny_dir),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",  # the random model never stops on its own: scoring would decode to the window's cap
        "--quiet",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held-out test (4 utterances, sw)" in r.stdout and (out / "adapter_model.safetensors").exists()
    r = _run(
        "eval",
        "--language",
        "sw",
        "--data",
        str(sw_corpus),
        "--adapter",
        str(out),
        "--base",
        str(tiny_dir),
        "--precision",
        "fp32",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["language"] == "sw" and obj["n"] == 4
    assert set(obj["base"]) >= {"wer", "cer"} and set(obj["adapter"]) >= {"wer", "cer"}


def test_synth_writes_dvoice_layout_with_chosen_voices(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("habari ya leo\nasante sana\nkaribu tena\nlala salama\n")
    assert (
        main(
            [
                "synth",
                "--language",
                "sw",
                "--out",
                str(tmp_path / "c"),
                "--sentences",
                str(sentences),
                "--test-sentences",
                str(sentences),
                "--voices",
                "m3",
                "--test-voices",
                "f4",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    train = (tmp_path / "c" / "texts" / "train.csv").read_text().splitlines()
    test = (tmp_path / "c" / "texts" / "test.csv").read_text().splitlines()
    assert train[0] == "wav\twords\tduration" and len(train) == 1 + 3
    assert all(line.split("\t")[0].endswith("_m3.wav") for line in train[1:])
    assert all(line.split("\t")[0].endswith("_f4.wav") for line in test[1:])


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--language", "xx", "--data", "d"], "unknown language 'xx'; valid codes:"),
        (["eval", "--language", "sw", "--data", "/nonexistent"], "corpus /nonexistent does not exist"),
        (["synth", "--language", "sw", "--out", "o", "--voices", "nobody"], "unknown espeak-ng variants ['nobody']"),
        (["train", "--language", "sw"], "train needs --data"),
        (["transcribe", "/nonexistent.wav"], "no such file: /nonexistent.wav"),
        (["adapters", "list", "--adapters", "/nonexistent"], "adapter registry /nonexistent does not exist"),
    ],
)
def test_bad_input_is_named(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--voices" in args:
        (tmp_path / "s.txt").write_text("habari\nasante\n")
        args = args + ["--sentences", "s.txt"]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_adapters_list_and_transcribe_json(tiny_dir, tiny_registry, capsys):
    assert main(["adapters", "list", "--adapters", str(tiny_registry), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["language"] for r in rows] == ["ary", "cs", "sw"] and rows[0]["whisper_language"] == "ar"
    clip = "tests/assets/librivox/sense_and_sensibility_01_austen_64kb-0930.wav"
    r = _run(
        "transcribe",
        clip,
        "--language",
        "sw",
        "--adapters",
        str(tiny_registry),
        "--base",
        str(tiny_dir),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(line) == {"file", "language", "language_probability", "adapter", "route", "duration", "text"}
    assert line["adapter"] == "sw" and line["language_probability"] is None and line["file"] == clip


def test_adapters_list_shows_broken_entries_apart(tiny_registry, tmp_path, capsys):
    import shutil

    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    (root / "sw" / "adapter_model.pt").write_bytes(b"\x80\x04pickle")
    assert main(["adapters", "list", "--adapters", str(root)]) == 0
    out = capsys.readouterr().out
    table, broken = out.split("broken (1), left out:")
    assert "ary " in table and "cs " in table and "sw " not in table
    assert "sw    " in broken and "pickled weights (adapter_model.pt)" in broken
    assert main(["adapters", "list", "--adapters", str(root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["language"], r.get("broken", False)) for r in rows] == [("ary", False), ("cs", False), ("sw", True)]
    assert main(["adapters", "list", "--adapters", str(root), "--strict"]) == 1
    assert "1 broken adapter(s)" in capsys.readouterr().err


def test_bad_audio_exits_2_with_one_clean_line(tiny_dir, tiny_registry, tmp_path):
    import numpy as np
    import soundfile as sf

    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3" + b"\x00" * 200)
    common = ["--adapters", str(tiny_registry), "--base", str(tiny_dir), "--precision", "fp32", "--device", "cpu"]
    for f, message in (
        (nan, "nan.wav has 16000 non-finite (NaN or infinite) samples"),
        (corrupt, "cannot decode corrupt.mp3"),
    ):
        r = _run("transcribe", str(f), "--language", "sw", *common)
        assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr[-2000:]


def test_eval_on_a_corpus_with_only_a_test_split(tiny_dir, corpus_copy):
    (corpus_copy / "texts" / "train.csv").unlink()
    (corpus_copy / "texts" / "dev.csv").unlink()
    common = ["--base", str(tiny_dir), "--precision", "fp32", "--device", "cpu", "--max-new-tokens", "4"]
    r = _run("eval", "--language", "sw", "--data", str(corpus_copy), "--split", "test", "--json", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == 4


def test_version_and_quiet(capsys):
    from whisper_lora.registry.adapter_io import library_version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"whisper-lora {library_version()}"
    r = _run("-q", "adapters", "list")
    assert r.returncode == 0 and r.stderr == "" and "sw" in r.stdout
