import contextlib
import threading

import numpy as np
import pytest
import torch

from tests.conftest import LIBRIVOX
from whisper_lora.data.audio import load_audio
from whisper_lora.errors import ConfigError
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.request import Request
from whisper_lora.inference.transcriber import Transcriber

CLIPS = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
LANGS = ["sw", "cs", "en", "ary", "sw", "en"]  # en has no adapter: the base serves it


def _audio(i):
    rng = np.random.default_rng(i)
    return (CLIPS[i % len(CLIPS)] + rng.normal(0, 0.01, len(CLIPS[i % len(CLIPS)]))).astype(np.float32)


AUDIO = [_audio(i) for i in range(len(LANGS))]


@pytest.fixture(scope="module", params=["fp32", "int8"])
def routed(request, tiny_dir, tiny_registry):
    return Transcriber(str(tiny_dir), tiny_registry, precision=request.param, device="cpu", max_new_tokens=8)


@pytest.mark.parametrize("beams", [1, 2])
def test_mixed_batch_equals_isolated_runs(routed, beams):
    mixed = routed.transcribe_batch(AUDIO, LANGS, num_beams=beams)
    alone = [routed.transcribe(a, lang, num_beams=beams) for a, lang in zip(AUDIO, LANGS, strict=True)]
    assert [m.text for m in mixed] == [a.text for a in alone]
    assert [m.adapter for m in mixed] == ["sw", "cs", None, "ary", "sw", None]
    assert len({m.text for m in mixed}) > 2  # adapters really change the output


def test_language_without_adapter_is_bit_identical_to_base(routed, tiny_dir):
    from whisper_lora.base.model import load_base_model

    routed.transcribe_batch(AUDIO[:2], ["sw", "cs"])  # adapters attached
    assert routed.loaded_adapters()[-2:] == ["sw", "cs"]  # most recently used last
    _loaded = load_base_model(str(tiny_dir), routed.base_info.precision, "cpu")
    base, processor = _loaded.model, _loaded.processor
    feats = routed.features(AUDIO[:2])
    with torch.no_grad():  # language ID runs on the base: its probabilities are the base's
        logits = base(input_features=feats, decoder_input_ids=torch.tensor([[50258]] * 2)).logits[:, -1]
    lang_ids = list(base.generation_config.lang_to_id.values())
    probs = logits[:, lang_ids].float().softmax(-1)
    got_probs = [p for _, p in routed.detect_language(AUDIO[:2])]
    assert np.allclose(got_probs, probs.max(-1).values.tolist(), atol=1e-5)
    ids = base.generate(input_features=feats, language="en", task="transcribe", max_new_tokens=8)
    expected = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    plain = DecodeOptions(compression_ratio_threshold=None)  # the loop guard would re-decode "yemek yemek ..."
    got = routed.transcribe_batch(AUDIO[:2], "en", options=plain)
    assert [g.text for g in got] == expected and all(g.adapter is None for g in got)


def test_hotswap_equals_a_fresh_load(tiny_dir, tiny_registry):
    swap = Transcriber(
        str(tiny_dir), tiny_registry, precision="fp32", device="cpu", mode="hotswap", max_loaded=2, max_new_tokens=8
    )
    seq = [swap.transcribe(AUDIO[0], lang).text for lang in ("sw", "cs", "ary", "sw", "en", "cs")]
    for lang, text in zip(("sw", "cs", "ary", "sw", "en", "cs"), seq, strict=True):
        fresh = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
        assert fresh.transcribe(AUDIO[0], lang).text == text, lang
    assert swap.loaded_adapters() == ["sw", "cs"]  # the LRU cap holds: ary was evicted
    mixed = swap.transcribe_batch(AUDIO, LANGS)
    routed = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    assert [m.text for m in mixed] == [r.text for r in routed.transcribe_batch(AUDIO, LANGS)]


def test_routed_lru_evicts_but_results_stay_right(tiny_dir, tiny_registry):
    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_loaded=1, max_new_tokens=8)
    ref = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    for lang in ("sw", "cs", "sw"):
        assert t.transcribe(AUDIO[1], lang).text == ref.transcribe(AUDIO[1], lang).text
    assert t.loaded_adapters() == ["sw"]
    with pytest.raises(ConfigError, match="needs 2 adapters but max_loaded=1"):
        t.transcribe_batch(AUDIO[:2], ["sw", "cs"])


def test_bad_input_leaves_the_model_working(routed):
    before = routed.transcribe_batch(AUDIO[:3], LANGS[:3], num_beams=2)
    with pytest.raises(ConfigError, match="unknown language 'zz'"):
        routed.transcribe_batch(AUDIO[:3], ["sw", "zz", "en"], num_beams=2)
    with pytest.raises(ConfigError, match="3 inputs but 2 languages"):
        routed.transcribe_batch(AUDIO[:3], ["sw", "cs"])
    after = routed.transcribe_batch(AUDIO[:3], LANGS[:3], num_beams=2)
    assert [a.text for a in after] == [b.text for b in before]


def test_threads_equal_isolated_calls(tiny_dir, tiny_registry):
    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    expected = {i: t.transcribe(AUDIO[i], LANGS[i]).text for i in range(len(LANGS))}
    got, errors = {}, []

    def work(k):
        try:
            for j in range(3):
                i = (k + j) % len(LANGS)
                got[(k, j)] = (i, t.transcribe(AUDIO[i], LANGS[i]).text)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(got) == 24
    assert all(text == expected[i] for i, text in got.values())


def _exact(segments):
    """Segments without their window's float scores (a batch's composition rounds them differently, ~1e-7)."""
    return [(s.id, s.start, s.end, s.text, s.tokens, s.repetition, s.compression_ratio) for s in segments]


def _scores(segments):
    return [x for s in segments for x in (s.avg_logprob, s.no_speech_prob)]


def test_long_audio_is_decoded_window_by_window_alike_in_every_mode(tiny_dir, tiny_registry):
    """Past 30 s the long-form algorithm runs with the input's adapter: routed == hot-swap, mixed == alone. Routed
    mode's row-indexed LoRA sums its terms in float64 (``row_lora``), hot-swap mode in peft's layers: on this random
    model rounding decides tokens, so the modes are compared with routed mode on peft's layers too."""
    long = np.concatenate([AUDIO[0]] * 6)  # > 30 s
    assert len(long) > 30 * 16000
    results = {}
    for mode in ("routed", "hotswap", "routed-peft"):
        t = Transcriber(
            str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8, mode=mode.split("-")[0]
        )
        t._pool.row_indexed = mode != "routed-peft"
        torch.manual_seed(0)
        mixed = t.transcribe_batch([long, long, AUDIO[1]], ["sw", "cs", "en"], timestamps=True)
        torch.manual_seed(0)
        alone = t.transcribe(long, "sw", timestamps=True)
        assert [m.adapter for m in mixed] == ["sw", "cs", None]
        assert _exact(mixed[0].segments) == _exact(alone.segments) and mixed[0].text == alone.text
        assert _scores(mixed[0].segments) == pytest.approx(_scores(alone.segments), rel=1e-5)
        assert all(a.start <= a.end <= b.start for a, b in zip(alone.segments, alone.segments[1:], strict=False))
        results[mode] = [m.segments for m in mixed]
    assert [_exact(s) for s in results["routed-peft"]] == [_exact(s) for s in results["hotswap"]]
    flat = {mode: [x for segments in results[mode] for x in _scores(segments)] for mode in results}
    assert flat["routed-peft"] == pytest.approx(flat["hotswap"], rel=1e-5)


def test_forced_adapter_and_forced_base(tiny_dir, tiny_registry):
    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    routed = t.transcribe(AUDIO[0], "cs")
    forced = t.transcribe(AUDIO[0], "auto", adapter="cs")  # the adapter's own language is used
    assert (forced.text, forced.adapter, forced.language) == (routed.text, "cs", "cs")
    base = t.transcribe(AUDIO[0], "cs", adapter=None)
    assert base.adapter is None and base.text != routed.text
    mixed = t.transcribe_batch(AUDIO[:3], ["sw", "sw", "sw"], adapter=["cs", None, "route"])
    assert [m.adapter for m in mixed] == ["cs", None, "sw"]
    with pytest.raises(Exception, match="no adapter 'de'"):
        t.transcribe(AUDIO[0], "sw", adapter="de")


def test_broken_adapters_are_left_out_and_named_when_asked_for(tiny_dir, tiny_registry, tmp_path):
    import shutil

    from whisper_lora.errors import BrokenAdapterError

    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    weights = root / "cs" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    t = Transcriber(str(tiny_dir), root, precision="fp32", device="cpu", max_new_tokens=8)
    ref = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    assert t.adapters() == ["ary", "sw"]
    assert [(b.name, "truncated" in b.reason) for b in t.broken_adapters()] == [("cs", True)]
    assert t.transcribe(AUDIO[0], "sw").text == ref.transcribe(AUDIO[0], "sw").text  # the rest serve
    with pytest.raises(BrokenAdapterError, match="adapter 'cs' is broken: .*truncated"):
        t.transcribe(AUDIO[0], "cs")
    with pytest.raises(BrokenAdapterError, match="adapter 'cs' is broken"):
        t.transcribe(AUDIO[0], "sw", adapter="cs")


def test_bad_signals_are_refused_and_silence_gives_no_text(routed):
    from whisper_lora.data.audio import AudioError

    with pytest.raises(AudioError, match="input 0 has 16000 non-finite"):
        routed.transcribe(np.full(16000, np.nan, np.float32), "sw")
    with pytest.raises(AudioError, match="input 1 holds no audio samples"):
        routed.transcribe_batch([AUDIO[0], np.zeros(0, np.float32)], "sw")
    silent = routed.transcribe_batch([np.zeros(3 * 16000, np.float32), AUDIO[1]], ["sw", "cs"])
    assert silent[0].text == "" and silent[1].text == routed.transcribe(AUDIO[1], "cs").text


@pytest.mark.parametrize("mode", ["routed", "hotswap"])
def test_adapters_changed_on_disk_are_picked_up(tiny_dir, tiny_registry, tmp_path, mode):
    import os
    import shutil

    from tests.conftest import make_tiny_adapter

    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    t = Transcriber(str(tiny_dir), root, precision="fp32", device="cpu", max_new_tokens=8, mode=mode)
    before = t.transcribe(AUDIO[0], "sw").text
    assert t.transcribe(AUDIO[1], "cs").adapter == "cs"
    assert t.refresh_adapters() is False  # nothing changed
    new = make_tiny_adapter(tiny_dir, tmp_path / "sw-new", "sw", seed=77)
    os.replace(root / "sw", tmp_path / "sw-old")
    os.replace(new, root / "sw")
    shutil.rmtree(root / "cs")
    assert t.refresh_adapters() is True
    assert t.adapters() == ["ary", "sw"] and "cs" not in t.routing()["adapters"]
    after = t.transcribe(AUDIO[0], "sw").text
    fresh_root = tmp_path / "fresh"
    fresh_root.mkdir()
    shutil.copytree(root / "sw", fresh_root / "sw")
    fresh = Transcriber(str(tiny_dir), fresh_root, precision="fp32", device="cpu", max_new_tokens=8)
    assert after == fresh.transcribe(AUDIO[0], "sw").text != before
    assert t.transcribe(AUDIO[1], "cs").adapter is None  # gone from the registry: the base serves Czech


@pytest.mark.parametrize("mode", ["routed", "hotswap"])
def test_unloaded_adapters_load_again_and_given_routes_are_used(tiny_dir, tiny_registry, mode):
    """What Ray Serve's multiplexing does to a replica: adapters dropped (``unload``) and ``auto`` inputs routed
    elsewhere first (``decisions``); every answer stays what a plain call gives."""
    from whisper_lora.inference.routing import RouteDecision

    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", mode=mode, max_new_tokens=8)
    long = np.concatenate([AUDIO[2]] * 5)  # past 30 s: window by window
    base = [t.transcribe(a, "en").text for a in (AUDIO[2], long)]  # before any adapter is attached
    ref = [t.transcribe(AUDIO[1], lang).text for lang in ("sw", "cs")]
    t.unload("sw")
    t.unload("sw")  # not loaded any more: nothing to do
    assert t.loaded_adapters() == ["cs"]
    t.unload("cs")
    assert t.loaded_adapters() == []  # nothing attached any more
    # the base still decodes, short and long (a PeftModel whose last adapter was deleted raised KeyError: a Ray
    # replica whose multiplexed adapters were all evicted answered every base request with a 500)
    assert [t.transcribe(a, "en").text for a in (AUDIO[2], long)] == base
    assert [t.transcribe(AUDIO[1], lang).text for lang in ("sw", "cs")] == ref
    routes = t.route(AUDIO[:2])
    plain = t.transcribe_batch(AUDIO[:2], "auto")
    given = t.transcribe_batch(AUDIO[:2], "auto", decisions=routes)
    assert [(g.text, g.adapter, g.route) for g in given] == [(p.text, p.adapter, p.route) for p in plain]
    forced = RouteDecision("cs", 0.99, "cs", "router")  # a decision made elsewhere is taken as it is
    out = t.transcribe_batch(AUDIO[:2], "auto", decisions=[forced, None])
    assert (out[0].adapter, out[0].language, out[0].text) == ("cs", "cs", ref[1]) and out[1].text == plain[1].text
    with pytest.raises(ConfigError, match="1 route decisions"):
        t.transcribe_batch(AUDIO[:2], "auto", decisions=[None])
    with t._lock:  # a decode holds the model: unload does not wait, the adapter goes before the next decode
        t.unload("sw")
        assert "sw" in t.loaded_adapters()
    t.transcribe(AUDIO[1], "cs")
    assert "sw" not in t.loaded_adapters() and "cs" in t.loaded_adapters()
    with t._lock:
        t.unload("cs")
    assert t.transcribe(AUDIO[1], "cs").text == ref[1] and "cs" in t.loaded_adapters()  # in use again: kept
    t.transcribe(AUDIO[0], "sw")
    # Ray evicts sw while a decode holds the model: it goes when that decode ends, not at some later call (before,
    # /health showed more adapters loaded than Ray's max_loaded until the replica decoded again)
    t.transcribe_requests([Request(AUDIO[1], "cs", "cs")], done=lambda i, r: t.unload("sw"))
    assert "sw" not in t.loaded_adapters() and "cs" in t.loaded_adapters()


def test_bad_settings_are_all_reported_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError) as e:
        Transcriber(
            str(tmp_path / "no-such-base"),
            tmp_path,
            mode="sideways",
            max_loaded=0,
            detect_threshold=2.0,
            languages=["klingon"],
            num_beams=0,
        )
    message = str(e.value)
    for problem in ("invalid mode 'sideways'; valid: hotswap, routed", "max_loaded=0", "detect_threshold=2.0"):
        assert problem in message
    assert "unknown language 'klingon'" in message and "num_beams=0" in message


@contextlib.contextmanager
def encoded_rows(t: Transcriber):
    """The number of rows of each call of ``t``'s encoder while the block runs (a list, filled as they come)."""
    from whisper_lora.base.trim import find_encoder

    rows: list[int] = []

    def count(module, args, kwargs):
        rows.append(len(args[0] if args else kwargs["input_features"]))

    hook = find_encoder(t.model).register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield rows
    finally:
        hook.remove()


@pytest.mark.parametrize("mode", ["routed", "routed-peft", "hotswap", "routed-peft-int8"])
def test_auto_inputs_the_base_decodes_are_encoded_once(tiny_dir, tiny_registry, mode):
    """Routing already ran the base's encoder over an ``auto`` input's 30 s window: an input the base then decodes starts
    from that encoding (the decode encodes only the adapters' rows), and every answer equals the input's alone."""
    kw = {"mode": "hotswap"} if mode == "hotswap" else {"row_indexed": mode == "routed"}
    # int8 through peft: the adapters' rows are encoded apart with per-row adapter names (bitsandbytes' outputs)
    kw["precision"] = "int8" if mode.endswith("int8") else "fp32"
    # threshold 1: Whisper's language ID (these adapters have no profile) never reaches it, so auto gives the base
    t = Transcriber(str(tiny_dir), tiny_registry, device="cpu", max_new_tokens=8, detect_threshold=1.0, **kw)
    audio, langs = AUDIO[:5], ["auto", "sw", "auto", "cs", "auto"]
    alone = [t.transcribe(a, lang) for a, lang in zip(audio, langs, strict=True)]
    with encoded_rows(t) as encoded:
        mixed = t.transcribe_batch(audio, langs)
    assert [m.adapter for m in mixed] == [None, "sw", None, "cs", None]
    assert sum(encoded) == 3 + 2  # routing encodes the three auto inputs; the decode only the rows of sw and cs
    assert [m.text for m in mixed] == [a.text for a in alone]
    assert [m.route for m in mixed] == [a.route for a in alone]
    # and equal to the base given the detected language, whose decode encodes its input itself
    for m, a in zip(mixed, audio, strict=True):
        if m.adapter is None:
            assert t.transcribe(a, m.language, adapter=None).text == m.text


def test_auto_inputs_of_a_decoder_only_adapter_are_encoded_once(tiny_dir, tmp_path):
    """An adapter without LoRA in the encoder encodes as the base does: its auto inputs start from routing's pass too;
    an adapter that adapts the encoder encodes its inputs itself."""
    from tests.conftest import make_tiny_adapter
    from whisper_lora.registry.adapter_io import touches_encoder
    from whisper_lora.training.lora import LoraSpec

    decoder_only = LoraSpec(r=4, alpha=8, targets=("q", "v"), stacks=("decoder_self", "decoder_cross"))
    sw = make_tiny_adapter(tiny_dir, tmp_path, "sw", 0, spec=decoder_only)
    cs = make_tiny_adapter(tiny_dir, tmp_path, "cs", 1)
    assert not touches_encoder(sw) and touches_encoder(cs)
    for language, decode_rows in (("sw", 0), ("cs", 3)):
        # one candidate language: Whisper's language ID names it with probability 1, so auto gives its adapter
        t = Transcriber(str(tiny_dir), tmp_path, precision="fp32", device="cpu", max_new_tokens=8, languages=[language])
        alone = [t.transcribe(a) for a in AUDIO[:3]]
        with encoded_rows(t) as encoded:
            mixed = t.transcribe_batch(AUDIO[:3])
        assert [m.adapter for m in mixed] == [language] * 3
        assert sum(encoded) == 3 + decode_rows
        assert [m.text for m in mixed] == [a.text for a in alone]
        forced = t.transcribe_batch(AUDIO[:3], language, adapter=language)  # encoded inside generate
        assert [m.text for m in mixed] == [f.text for f in forced]
