"""``whisper-lora eval`` scores what users get: checked against plain transformers + jiwer on real Czech."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest

N_LINES = 40


@pytest.fixture(scope="module")
def czech_test_manifest(tmp_path_factory) -> Path:
    """The first held-out test lines of real Czech voice acting (whole levels never used in training)."""
    if not DEFAULT_ROOT.is_dir():
        pytest.fail("real Czech speech missing: apt-get install fillets-ng-data-cs (the README's test command does)")
    out = tmp_path_factory.mktemp("fillets") / "manifest.csv"
    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, out)
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test"][:N_LINES]
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(test)
    return manifest


def _plain_transformers_scores(base_dir: Path, manifest: Path) -> tuple[float, float]:
    """Independent of whisper-lora: int8 (threshold 0) whisper-base, greedy generate, jiwer."""
    import jiwer
    import librosa
    import torch
    from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration, WhisperProcessor
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0)
    model = WhisperForConditionalGeneration.from_pretrained(base_dir, quantization_config=qc, device_map={"": "cpu"})
    processor = WhisperProcessor.from_pretrained(base_dir)
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    refs, hyps = [], []
    for r in rows:
        audio, _ = librosa.load(r["audio"], sr=16000)
        feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language="cs", task="transcribe", max_new_tokens=224)
        hyps.append(processor.batch_decode(ids, skip_special_tokens=True)[0])
        refs.append(r["text"])
    norm = BasicTextNormalizer()
    pairs = [(" ".join(norm(r).split()), " ".join(norm(h).split())) for r, h in zip(refs, hyps, strict=True)]
    pairs = [p for p in pairs if p[0]]
    return jiwer.wer([p[0] for p in pairs], [p[1] for p in pairs]), jiwer.cer(
        [p[0] for p in pairs], [p[1] for p in pairs]
    )


@pytest.mark.slow
def test_eval_of_the_base_agrees_with_plain_transformers_on_real_czech(czech_test_manifest, base_dir, tmp_path):
    env = {**os.environ, "WHISPER_LORA_CACHE": str(tmp_path / "cache")}
    (tmp_path / "cache").mkdir()
    for name in ("models",):  # reuse the converted whisper-base, not the score cache
        src = Path(os.environ.get("WHISPER_LORA_CACHE") or Path.home() / ".cache" / "whisper-lora") / name
        (tmp_path / "cache" / name).symlink_to(src)
    cmd = [
        sys.executable,
        "-m",
        "whisper_lora.cli",
        "eval",
        "--language",
        "cs",
        "--data",
        str(czech_test_manifest),
        "--json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["n"] == N_LINES and got["precision"] == "int8"
    wer, cer = _plain_transformers_scores(base_dir, czech_test_manifest)
    assert abs(got["base"]["wer"] - wer) <= 0.01, (got["base"], wer)
    assert abs(got["base"]["cer"] - cer) <= 0.01, (got["base"], cer)
    # the second evaluation reuses the base's scores instead of decoding again
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert "base scores reused" in again.stderr and json.loads(again.stdout.strip().splitlines()[-1]) == got
