import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import tiny_train_config
from whisper_lora.base.model import load_base_model
from whisper_lora.data.features import Example
from whisper_lora.data.perturb import Perturbation, perturbed_copies
from whisper_lora.data.prepare import prepare_splits
from whisper_lora.errors import ConfigError
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.lora import LoraSpec
from whisper_lora.training.train import train_adapter

TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_changes_length_and_pitch_together(speed):
    out = Perturbation(speed=speed).apply(TONE, "u1")
    assert abs(len(out) - len(TONE) / speed) <= 1
    peak = np.argmax(np.abs(np.fft.rfft(out))) * 16000 / len(out)  # a 440 Hz tone moves to 440 * speed
    assert abs(peak - 440 * speed) < 3


def test_noise_has_the_asked_snr_and_is_fixed_per_utterance():
    p = Perturbation(snr_db=20)
    a, again, other = p.apply(TONE, "u1"), p.apply(TONE, "u1"), p.apply(TONE, "u2")
    snr = 10 * np.log10(np.mean(TONE**2) / np.mean((a - TONE) ** 2))
    assert abs(snr - 20) < 0.3
    assert np.array_equal(a, again) and not np.array_equal(a, other)


def _example(id_, duration, timestamped=False):
    return Example(id_, "t", "sw", "x.wav", [1, 2], duration, timestamped=timestamped)


def test_copies_per_speed_and_noise_level_with_their_durations():
    ex = [_example("a", 2.0), _example("b", 28.0), _example("c", 4.0, timestamped=True)]
    copies = perturbed_copies(ex, speeds=(0.9, 1.1), snrs_db=(20,))
    got = {(c.id, round(c.duration, 3)) for c in copies}
    assert got == {
        ("a#sp0.9", 2.222),  # b at 0.9 would last 31.1 s, past the 30 s window: left out
        ("a#sp1.1", 1.818),
        ("b#sp1.1", 25.455),
        ("a#snr20", 2.0),
        ("b#snr20", 28.0),
        ("c#snr20", 4.0),  # a timestamped utterance gets no speed copy (its end time would be wrong)
    }
    assert all(c.perturbation is not None and c.labels == [1, 2] for c in copies)
    assert perturbed_copies(ex) == []


def test_copy_features_differ_from_the_original_and_repeat(tiny_dir, sw_corpus):
    processor = load_base_model(str(tiny_dir), "fp32", "cpu").processor
    ex = prepare_splits(sw_corpus, "sw", processor, splits=("train",), progress=False)["train"][0]
    fast, noisy = perturbed_copies([ex], speeds=(1.1,), snrs_db=(10,))
    base = ex.input_features
    for copy in (fast, noisy):
        f = copy.input_features
        assert f.shape == base.shape and not torch.equal(f, base)
        assert torch.equal(f, copy.input_features)  # the same every time: one encoder-cache entry per copy
    assert fast.n_samples == pytest.approx(ex.n_samples / 1.1, abs=1)


@pytest.mark.parametrize(
    "kw, bad",
    [
        ({"speed_perturb": [1.0]}, "speed_perturb value 1.0"),
        ({"speed_perturb": [3]}, "speed_perturb value 3"),
        ({"speed_perturb": [0.9, 0.9]}, "repeats a speed"),
        ({"noise_snr_db": [-5]}, "noise_snr_db value -5"),
    ],
)
def test_bad_perturbation_settings_are_named(kw, bad):
    with pytest.raises(ConfigError, match=bad):
        TrainConfig(language="sw", data="x", **kw)


def test_augmented_training_adds_cache_entries_and_reuses_them(tiny_dir, sw_corpus, tmp_path):
    """Decoder-only LoRA on a cached encoder: each copy is its own disk-cache entry; a second run encodes none."""
    kw = dict(
        lora=LoraSpec(r=4, alpha=8, stacks=("decoder_self", "decoder_cross")),
        speed_perturb=[0.9, 1.1],
        noise_snr_db=[20],
        max_steps=30,  # 30 x 4 = 120 draws over 4 x 24 examples: every one is encoded
        batch_size=4,
        final_eval=False,
        cache_storage="disk",
        cache_dir=str(tmp_path / "store"),
        trim_padding=None,
    )
    first = train_adapter(tiny_train_config(tiny_dir, sw_corpus, tmp_path / "a", **kw), progress=False)
    n = first.metadata.data["train_utterances"]
    assert first.metadata.data["augmented_copies"] == 3 * n
    assert first.metadata.training["cache_encoded"] == 4 * n
    assert len(list((tmp_path / "store").rglob("*.npy"))) == 4 * n
    second = train_adapter(tiny_train_config(tiny_dir, sw_corpus, tmp_path / "b", **kw), progress=False)
    assert second.metadata.training["cache_encoded"] == 0
    plain = train_adapter(
        tiny_train_config(tiny_dir, sw_corpus, tmp_path / "c", **{**kw, "speed_perturb": [], "noise_snr_db": []}),
        progress=False,
    )
    assert plain.metadata.data["fingerprint"] == first.metadata.data["fingerprint"]  # the corpus, not the copies
    assert plain.metadata.data["augmented_copies"] == 0


def test_cli_passes_perturbation_flags(tmp_path):
    from whisper_lora.cli import build_parser
    from whisper_lora.cli.train import train_config

    a = build_parser().parse_args(
        ["train", "--language", "sw", "--data", str(tmp_path), "--speed-perturb", "0.9", "1.1", "--noise-snr-db", "20"]
    )
    cfg = train_config(a)
    assert cfg.speed_perturb == (0.9, 1.1) and cfg.noise_snr_db == (20.0,)
    assert dataclasses.replace(cfg).speed_perturb == (0.9, 1.1)
