"""espeak-ng synthesis: an utterance depends only on its arguments."""

import hashlib
import subprocess
import sys

import numpy as np

from whisper_lora.data.synth import SynthConfig, SynthSplit, shipped_sentences, synthesize, synthesize_corpus

SENTENCE = shipped_sentences("sw", "test")[1]  # long enough for pitch flutter and breath noise to matter


def test_the_same_arguments_give_the_same_audio_after_other_utterances():
    first = synthesize(SENTENCE, "sw", "f2")
    synthesize("Saa ngapi sasa?", "sw", "m3", 180, 70)  # advance espeak-ng's internal state
    synthesize(shipped_sentences("id", "test")[3], "id", "klatt", 130, 30)
    again = synthesize(SENTENCE, "sw", "f2")
    assert np.array_equal(first, again)
    other = synthesize(SENTENCE, "sw", "m2")  # and the arguments do matter
    assert len(other) != len(first) or not np.allclose(other, first, atol=1e-3)


def test_the_same_arguments_give_the_same_audio_in_another_process():
    code = (
        "import hashlib, sys; from whisper_lora.data.synth import synthesize; "
        f"sys.stdout.write(hashlib.sha256(synthesize({SENTENCE!r}, 'sw', 'f2').tobytes()).hexdigest())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    here = hashlib.sha256(synthesize(SENTENCE, "sw", "f2").tobytes()).hexdigest()
    assert there == here


def test_a_corpus_is_the_same_in_every_run(tmp_path):
    split = SynthSplit("train", shipped_sentences("sw", "train")[:3], voices=("m1", "f3"))
    cfg = SynthConfig("sw", splits=(split,), seed=3)
    a = synthesize_corpus(cfg, tmp_path / "a", progress=False)
    synthesize("Habari za leo?", "sw", "klatt")  # something else spoken in between
    b = synthesize_corpus(cfg, tmp_path / "b", progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4  # texts/train.csv + 3 wavs
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
