"""Encoding a clip's own frames instead of a 30 s window (whisper_lora/trim.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_train_config
from whisper_lora.base.trim import WINDOW_FRAMES, allow_short_inputs, trim_batch, trimmed_frames
from whisper_lora.errors import ConfigError


def _tiny(tiny_dir, max_source_positions=None):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig.from_pretrained(tiny_dir)
    if max_source_positions is None:
        return WhisperForConditionalGeneration.from_pretrained(tiny_dir).eval()
    cfg.max_source_positions = max_source_positions
    model = WhisperForConditionalGeneration(cfg).eval()
    full = WhisperForConditionalGeneration.from_pretrained(tiny_dir).state_dict()
    for name in ("model.encoder.embed_positions.weight",):
        full[name] = full[name][:max_source_positions]
    model.load_state_dict(full)
    return model


def test_trimmed_frames_round_up_to_half_seconds_and_cap_at_the_window():
    assert trimmed_frames(3 * 16000, 1.0) == 400
    assert trimmed_frames(3 * 16000 + 1, 1.0) == 450  # one sample more needs one more frame: next 0.5 s
    assert trimmed_frames(3 * 16000, 0.0) == 300
    assert trimmed_frames(29 * 16000, 2.0) == WINDOW_FRAMES
    feats = torch.zeros(2, 80, WINDOW_FRAMES)
    assert trim_batch(feats, [16000, 3 * 16000], 0.5).shape[-1] == 350  # the longest row decides
    assert trim_batch(feats, [16000], None) is feats


def test_short_input_equals_transformers_at_that_length(tiny_dir):
    """A 4 s input through the lifted check == transformers' own encoder built for 200 positions."""
    model = _tiny(tiny_dir)
    allow_short_inputs(model)
    allow_short_inputs(model)  # idempotent
    reference = _tiny(tiny_dir, max_source_positions=200)
    feats = torch.randn(2, 80, 400)
    with torch.no_grad():
        got = model.model.encoder(feats).last_hidden_state
        want = reference.model.encoder(feats).last_hidden_state
    assert got.shape == (2, 200, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_full_windows_are_untouched_and_bad_lengths_refused(tiny_dir):
    plain, patched = _tiny(tiny_dir), _tiny(tiny_dir)
    allow_short_inputs(patched)
    feats = torch.randn(1, 80, WINDOW_FRAMES)
    with torch.no_grad():
        torch.testing.assert_close(
            patched.model.encoder(feats).last_hidden_state, plain.model.encoder(feats).last_hidden_state, rtol=0, atol=0
        )
        with pytest.raises(ValueError, match="expects the mel input features to be of length 3000"):
            plain.model.encoder(torch.randn(1, 80, 400))  # transformers' own check, where not lifted
        with pytest.raises(ValueError, match="401 log-mel frames"):
            patched.model.encoder(torch.randn(1, 80, 401))


def test_training_steps_see_trimmed_input_and_evaluations_30_s_windows(tiny_dir, sw_corpus, tmp_path):
    from whisper_lora.base.trim import find_encoder
    from whisper_lora.training.train import train_adapter

    cfg = tiny_train_config(tiny_dir, sw_corpus, tmp_path / "sw", max_steps=3)  # auto: every encoder layer adapted
    seen: list[tuple[bool, int]] = []  # (training mode, frames) of every encoder input from step 2 on

    def watch(state, model):
        if state.step == 1:
            find_encoder(model).register_forward_pre_hook(
                lambda m, args, kw: seen.append((m.training, (args[0] if args else kw["input_features"]).shape[-1])),
                with_kwargs=True,
            )

    result = train_adapter(cfg, progress=False, callbacks=[watch])
    assert result.metadata.training["trim_padding"] == 1.0
    longest = max(trimmed_frames(round(d * 16000), 1.0) for d in _durations(sw_corpus))
    steps = [n for training, n in seen if training]
    evals = [n for training, n in seen if not training]
    assert len(steps) == 2 and max(steps) <= longest < WINDOW_FRAMES  # steps 2 and 3 on their clips' frames
    assert evals and set(evals) == {WINDOW_FRAMES}  # dev scored on 30 s windows
    # the held-out split: base and adapter on 30 s windows, the adapter again trimmed (tests/inference/
    # test_trimmed_input.py), on the int8 model transcribe loads
    metrics = result.metadata.metrics
    assert metrics["adapter"]["n"] == metrics["adapter_trimmed"]["n"] > 0
    chosen = metrics["adapter_trimmed"]["wer"] <= metrics["adapter"]["wer"]
    assert result.metadata.trimmed_input == (1.0 if chosen else None)


def _durations(corpus):
    import soundfile as sf

    return [sf.info(p).duration for p in sorted((corpus / "wavs").glob("*.wav"))]


def test_trim_with_an_encoder_cache_is_refused(tiny_dir, sw_corpus, tmp_path):
    decoder_only = {"r": 4, "alpha": 8, "stacks": ["decoder_self", "decoder_cross"]}
    with pytest.raises(ConfigError, match="set cache_encoder: false or trim_padding: null"):  # by the config itself
        tiny_train_config(tiny_dir, sw_corpus, tmp_path / "sw", max_steps=1, trim_padding=1.0, lora=decoder_only)
    with pytest.raises(ConfigError, match="trim_padding=-1"):
        tiny_train_config(tiny_dir, sw_corpus, tmp_path / "x", trim_padding=-1)
