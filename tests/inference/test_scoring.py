import math

from whisper_lora.inference.scoring import normalize_arabic, normalizer_for, score


def test_arabic_normalisation_strips_diacritics_and_unifies_alef():
    assert normalize_arabic("أَحْمَد إلى آخر") == "احمد الى اخر"
    assert normalizer_for("ary")("السَّلامُ، عليكم!") == normalizer_for("ary")("السلام عليكم")


def test_english_normaliser_only_for_english():
    assert normalizer_for("en")("Mr. Smith has two cats!") == "mister smith has 2 cats"
    assert normalizer_for("sw")("Habari, Yako!") == "habari yako"


def test_scores_orthographic_and_normalised():
    s = score(["Habari yako.", "Asante sana"], ["habari yako", "asante sana"], "sw")
    assert s.wer == 0.0 and s.cer == 0.0 and s.wer_orthographic > 0 and s.n == 2
    s = score(["habari yako", "!!!"], ["habari", "x"], "sw")  # a reference that normalises to empty is dropped
    assert s.n == 1 and math.isclose(s.wer, 0.5)
