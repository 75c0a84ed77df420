"""Ready-made synthetic corpora built from the shipped sentence lists."""

from __future__ import annotations

from whisper_lora.data.synth import TEST_VOICES, TRAIN_VOICES, SynthConfig, SynthSplit, shipped_sentences


def default_synth_config(language: str, dev_sentences: int = 16, train_repeats: int = 2, seed: int = 0) -> SynthConfig:
    """Train on the shipped training sentences with training voices; dev and test use held-out voices.

    The last ``dev_sentences`` training sentences are held back for dev (model selection); the
    test split is the separate held-out sentence list, spoken only by voices never trained on.
    """
    train = shipped_sentences(language, "train")
    test = shipped_sentences(language, "test")
    return SynthConfig(
        language=language,
        splits=(
            SynthSplit("train", train[:-dev_sentences], TRAIN_VOICES, train_repeats),
            SynthSplit("dev", train[-dev_sentences:], TEST_VOICES, 1),
            SynthSplit("test", test, TEST_VOICES, 1),
        ),
        seed=seed,
    )
