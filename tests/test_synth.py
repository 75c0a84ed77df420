"""espeak-ng synthesis: an utterance depends only on its arguments."""

import hashlib
import subprocess
import sys

import numpy as np

from whisper_lora.data.synth import shipped_sentences, synthesize

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
