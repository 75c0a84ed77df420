"""``whisper-lora synth``: a synthetic DVoice-layout corpus from espeak-ng."""

from __future__ import annotations

from dataclasses import replace

from whisper_lora.errors import ConfigError


def add_parser(sub) -> None:
    s = sub.add_parser("synth", help="write a synthetic DVoice-layout corpus with espeak-ng")
    s.add_argument("--language", required=True, help="language code (sw, id, ...): espeak-ng voice and sentences")
    s.add_argument("--out", required=True, help="corpus directory to write (texts/ and wavs/)")
    s.add_argument("--sentences", help="training sentences, one a line (default: the shipped list)")
    s.add_argument("--test-sentences", help="held-out sentences for the test split")
    s.add_argument("--voices", help="comma-separated espeak-ng variants for training (default: the training set)")
    s.add_argument("--test-voices", help="variants for dev/test (default: voices never used for training)")
    s.add_argument("--repeats", type=int, default=2, help="voices per training sentence (default 2)")
    s.add_argument("--seed", type=int, default=0, help="voice assignment and prosody seed (default 0)")
    s.add_argument("--max-sentences", type=int, help="at most N sentences per split (a quick corpus to try things on)")
    s.set_defaults(fn=run)


def run(a) -> int:
    from whisper_lora.data.synth import (
        TEST_VOICES,
        TRAIN_VOICES,
        SynthConfig,
        SynthSplit,
        read_sentences,
        synthesize_corpus,
    )
    from whisper_lora.data.synth_presets import default_synth_config

    if a.sentences:
        train = read_sentences(a.sentences)
        test = read_sentences(a.test_sentences) if a.test_sentences else []
        n_dev = max(1, len(train) // 10)
        voices = a.voices.split(",") if a.voices else TRAIN_VOICES
        test_voices = a.test_voices.split(",") if a.test_voices else TEST_VOICES
        splits = [
            SynthSplit("train", train[:-n_dev], voices, a.repeats),
            SynthSplit("dev", train[-n_dev:], test_voices),
        ]
        if test:
            splits.append(SynthSplit("test", test, test_voices))
        cfg = SynthConfig(a.language, tuple(splits), seed=a.seed)
    else:
        cfg = default_synth_config(a.language, train_repeats=a.repeats, seed=a.seed)
    if a.max_sentences is not None:
        if a.max_sentences < 1:
            raise ConfigError(f"--max-sentences {a.max_sentences} must be >= 1")
        cfg = replace(cfg, splits=tuple(replace(sp, sentences=sp.sentences[: a.max_sentences]) for sp in cfg.splits))
    out = synthesize_corpus(cfg, a.out)
    print(f"wrote {out}")
    return 0
