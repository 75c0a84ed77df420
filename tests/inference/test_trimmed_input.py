"""Trimmed input at inference (``base/trim.py``, ``decode.Inputs``): an adapter whose encoder trained on clips plus a
little padding encodes short inputs so only where its held-out measurement chose it; rows of different encoder
lengths are encoded apart and decoded together with the cross-attention masked past each row's length, so every
row's result equals the one it gives alone."""

import json
import shutil
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from tests.conftest import LIBRIVOX, make_tiny_adapter
from whisper_lora.base.trim import WINDOW_FRAMES, allow_short_inputs, find_encoder, trimmed_frames
from whisper_lora.data.audio import load_audio
from whisper_lora.inference import decode
from whisper_lora.inference.decode import Decoding, EncoderStates, decode_texts
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.adapter_io import read_metadata
from whisper_lora.results import Comparison, Scores

CLIPS = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
SPEECH = np.concatenate(CLIPS)  # 13 s of LibriVox
# clips of 1.5 to 12 s: as many encoder lengths as rows
SHORT = [
    SPEECH[int(16000 * a) : int(16000 * (a + s))]
    for a, s in zip((0, 1, 2, 3, 4, 0), (1.5, 2.2, 3.1, 4.4, 6, 12), strict=True)
]
DECODING = Decoding(max_new_tokens=8)


def _scores(wer: float) -> dict:
    return Scores(wer, wer / 2, wer, wer / 2, 10).to_dict()


def _measured(adapter, trimmed_wer: float | None, padding: float | None = 1.0) -> None:
    """Write into ``adapter``'s metadata what training records: its padding and its held-out scores both ways."""
    path = adapter / "whisper_lora.json"
    meta = json.loads(path.read_text())
    meta["training"]["trim_padding"] = padding
    meta["metrics"] = {"split": "test", "n": 10, "base": _scores(0.8), "adapter": _scores(0.5)}
    if trimmed_wer is not None:
        meta["metrics"]["adapter_trimmed"] = _scores(trimmed_wer)
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_dir):
    """sw: trimmed scored as well as windows (chosen); cs: trimmed scored worse (windows kept); ary: trained on
    windows (never trimmed)."""
    root = tmp_path_factory.mktemp("trimmed")
    for seed, (lang, trimmed_wer) in enumerate((("sw", 0.5), ("cs", 0.55), ("ary", None))):
        adapter = make_tiny_adapter(tiny_dir, root, lang, seed)
        _measured(adapter, trimmed_wer, 1.0 if trimmed_wer is not None else None)
    return root


def test_the_measurement_alone_decides(registry, tmp_path):
    assert read_metadata(registry / "sw").trimmed_input == 1.0  # as good: trimmed
    assert read_metadata(registry / "cs").trimmed_input is None  # worse: windows
    assert read_metadata(registry / "ary").trimmed_input is None  # trained on windows
    unmeasured = shutil.copytree(registry / "sw", tmp_path / "sw")
    _measured(unmeasured, None)  # trained trimmed, but never scored trimmed: windows
    assert read_metadata(unmeasured).trimmed_input is None
    result = Comparison.from_dict(read_metadata(registry / "sw").metrics)
    assert result.trimmed_chosen and result.served == result.trimmed
    assert Comparison.from_dict(result.to_dict()) == result  # adapter_trimmed round-trips
    worse = Comparison.from_dict(read_metadata(registry / "cs").metrics)
    assert not worse.trimmed_chosen and worse.served == worse.adapter


def test_encoder_states_pad_and_unpad():
    rows = [torch.randn(n, 4) for n in (3, 5, 2)]
    states = EncoderStates.stack(rows)
    assert states.states.shape == (3, 5, 4) and states.padded and states.lengths == [3, 5, 2]
    assert all(torch.equal(states.row(i), r) for i, r in enumerate(rows))
    assert float(states.states[2, 2:].abs().sum()) == 0
    sub = states[[0, 2]]
    assert sub.states.shape == (2, 3, 4) and torch.equal(sub.row(1), rows[2])
    assert not EncoderStates.stack(rows[:1] * 2).padded


@pytest.fixture(scope="module")
def model(tiny_dir):
    from whisper_lora.base.model import load_base_model

    loaded = load_base_model(str(tiny_dir), "fp32", "cpu")
    allow_short_inputs(loaded.model)
    return loaded


def test_rows_of_different_lengths_decode_together_as_alone(model, monkeypatch):
    """Six clips, six encoder lengths: one decode of them all equals each clip alone; without the cross-attention
    mask (the padding seen) it does not."""
    m, processor = model.model, model.processor
    frames = {trimmed_frames(len(c), 1.0) for c in SHORT}
    assert len(frames) == len(SHORT) and max(frames) < WINDOW_FRAMES
    with torch.no_grad():
        together = decode_texts(m, processor, SHORT, "sw", DECODING, trim=1.0)
        alone = [decode_texts(m, processor, [c], "sw", DECODING, trim=1.0)[0] for c in SHORT]
        windows = decode_texts(m, processor, SHORT, "sw", DECODING)
        monkeypatch.setattr(decode, "cross_attention_mask", lambda model, states: nullcontext())
        unmasked = decode_texts(m, processor, SHORT, "sw", DECODING, trim=1.0)
    assert together == alone
    assert together != windows  # the encoder really read fewer frames
    assert unmasked != alone  # the mask is what makes a row's result its own


@pytest.mark.parametrize("mode", ["routed", "routed-peft", "hotswap"])
def test_transcriber_trims_only_the_adapters_that_chose_it(tiny_dir, registry, mode):
    t = Transcriber(str(tiny_dir), registry, precision="fp32", device="cpu", max_new_tokens=8, mode=mode.split("-")[0])
    t._pool.row_indexed = mode == "routed"
    seen: list[int] = []  # frames of every encoder input
    find_encoder(t.model).register_forward_pre_hook(
        lambda mod, args, kw: seen.append((args[0] if args else kw["input_features"]).shape[-1]), with_kwargs=True
    )
    langs = ["sw", "cs", "ary", "en", "sw", "sw"]  # sw trimmed; cs, ary and the base (en) on windows
    for beams in (1, 2):
        seen.clear()
        mixed = t.transcribe_batch(SHORT, langs, num_beams=beams)
        assert [m.adapter for m in mixed] == ["sw", "cs", "ary", None, "sw", "sw"]
        trimmed = sorted(trimmed_frames(len(SHORT[i]), 1.0) for i in (0, 4, 5))
        assert sorted(n for n in seen if n < WINDOW_FRAMES) == trimmed  # each sw row at its own length
        assert WINDOW_FRAMES in seen
        alone = [t.transcribe(c, lang, num_beams=beams) for c, lang in zip(SHORT, langs, strict=True)]
        assert [m.text for m in mixed] == [a.text for a in alone]
    seen.clear()
    t.trimmed = False  # Transcriber(trimmed=False): 30 s windows for every adapter
    t.transcribe_batch(SHORT, langs)
    assert set(seen) == {WINDOW_FRAMES}


def test_long_and_timed_inputs_keep_windows(tiny_dir, registry):
    t = Transcriber(str(tiny_dir), registry, precision="fp32", device="cpu", max_new_tokens=8)
    seen: list[int] = []
    find_encoder(t.model).register_forward_pre_hook(
        lambda mod, args, kw: seen.append((args[0] if args else kw["input_features"]).shape[-1]), with_kwargs=True
    )
    t.transcribe(SHORT[0], "sw", timestamps=True)
    t.transcribe(np.concatenate([CLIPS[0]] * 6), "sw")
    assert seen and set(seen) == {WINDOW_FRAMES}


def test_trained_trimmed_is_scored_both_ways_and_eval_records_it(tiny_dir, sw_corpus, tmp_path, monkeypatch, capsys):
    """``eval --write-metadata`` of an adapter whose encoder trained trimmed scores it on windows and trimmed and
    records both; the choice follows."""
    from whisper_lora.cli import main

    monkeypatch.setenv("WHISPER_LORA_CACHE", str(tmp_path / "cache"))
    adapter = make_tiny_adapter(tiny_dir, tmp_path, "sw", seed=1)
    _measured(adapter, None)  # trained trimmed, not scored yet
    args = ["eval", "--language", "sw", "--data", str(sw_corpus), "--adapter", str(adapter), "--base", str(tiny_dir)]
    args += ["--precision", "fp32", "--device", "cpu", "--max-new-tokens", "4", "--limit", "3"]
    assert main([*args, "--write-metadata", "-q"]) == 0
    out = capsys.readouterr().out
    assert "trimmed" in out
    result = read_metadata(adapter).comparison
    assert result.trimmed is not None and result.trimmed.n == result.adapter.n == 3
    assert read_metadata(adapter).trimmed_input == (1.0 if result.trimmed.wer <= result.adapter.wer else None)


@pytest.mark.slow
def test_real_czech_clips_trimmed_in_a_mixed_batch_equal_alone():
    """The shipped ``cs`` adapter chose trimmed input (its metadata): on real whisper-base int8, eight real Czech
    clips of different lengths, half with the adapter (trimmed) and half on the base (windows), decode in one batch
    as each does alone; the adapter's rows really read fewer frames."""
    from pathlib import Path

    from tests.conftest import REPO_ADAPTERS
    from whisper_lora.data.fillets import DEFAULT_ROOT

    assert read_metadata(REPO_ADAPTERS / "cs").trimmed_input == 1.0
    czech = sorted(Path(DEFAULT_ROOT, "sound").glob("*/cs/*.ogg"))[200:208]
    assert len(czech) == 8, "needs Debian's fillets-ng-data-cs"
    clips = [load_audio(p) for p in czech]
    t = Transcriber("whisper-base", REPO_ADAPTERS, precision="int8", device="cpu")
    seen: list[int] = []
    find_encoder(t.model).register_forward_pre_hook(
        lambda mod, args, kw: seen.append((args[0] if args else kw["input_features"]).shape[-1]), with_kwargs=True
    )
    adapters = ["cs", None] * 4
    mixed = t.transcribe_batch(clips, "cs", adapter=adapters)
    assert sorted(n for n in seen if n < WINDOW_FRAMES) == sorted(trimmed_frames(len(c), 1.0) for c in clips[::2])
    alone = [t.transcribe(c, "cs", adapter=a) for c, a in zip(clips, adapters, strict=True)]
    assert [m.text for m in mixed] == [a.text for a in alone]
    assert all(m.text for m in mixed)
