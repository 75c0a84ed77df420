"""fallback.py and the ladder of decode.py: fallbacks batched by temperature, per-row sampling, the loop stop."""

import pytest

from tests.conftest import LIBRIVOX
from whisper_lora.data.audio import load_audio
from whisper_lora.inference.decode import Decoding, decode_texts, features, generate_attempts, ladder
from whisper_lora.inference.fallback import LOOP_SPAN, Attempt, kept_text, needs_fallback, silent, stuck
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.transcriber import Transcriber


def test_stuck_needs_a_repeated_tail_and_a_text_far_over_the_threshold():
    loop = [5, 6, 7] * 10
    assert stuck(loop, None, 2.4)  # the tokens repeat: worth decoding the text
    assert stuck(loop, "la la la " * 30, 2.4)
    assert not stuck(loop, "a text that does not compress much at all", 2.4)
    assert not stuck(list(range(40)), None, 2.4)  # no repetition
    assert not stuck([1] * (LOOP_SPAN - 1), None, 2.4)  # too short to call it a loop
    assert stuck([9, 8] + [1] * LOOP_SPAN, None, 2.4)  # only the tail counts


def test_the_ladder_batches_each_temperature_over_the_rows_that_still_fail():
    calls = []
    fails = {0.0: {0, 2, 3}, 0.2: {2, 3}, 0.4: {3}}

    def batch(rows, temperature, cut):
        calls.append((rows, temperature, cut))
        return [Attempt("la " * 40 if i in fails.get(temperature, ()) else f"row {i}", -0.1) for i in rows]

    options = DecodeOptions(temperature=(0.0, 0.2, 0.4, 0.6))
    texts = ladder([0, 1, 2, 3], Decoding(options=options), batch)
    assert calls == [([0, 1, 2, 3], 0.0, True), ([0, 2, 3], 0.2, True), ([2, 3], 0.4, True), ([3], 0.6, False)]
    assert texts == ["row 0", "row 1", "row 2", "row 3"]
    calls.clear()  # the loop stop off: no call cuts; the last temperature keeps whatever it gives
    fails[0.6] = {3}
    off = DecodeOptions(temperature=(0.0, 0.2, 0.4, 0.6), stop_loops_early=False)
    assert ladder([0, 1, 2, 3], Decoding(options=off), batch)[3] == "la " * 40
    assert [c[2] for c in calls] == [False] * 4
    calls.clear()  # the loop guard off: one greedy pass
    ladder([0, 1], Decoding(options=DecodeOptions(compression_ratio_threshold=None)), batch)
    assert calls == [([0, 1], 0.0, False)]


def test_the_ladder_gives_each_row_as_soon_as_it_is_final_and_pauses_between_temperatures():
    events = []
    fails = {0.0: {0, 2}, 0.2: {2}}

    def batch(rows, temperature, cut):
        events.append(("batch", temperature, tuple(rows)))
        return [Attempt("la " * 40 if i in fails.get(temperature, ()) else f"row {i}", -0.1) for i in rows]

    options = DecodeOptions(temperature=(0.0, 0.2, 0.4))
    final = lambda i, text, segs: events.append(("final", i, text, segs))  # noqa: E731
    texts = ladder([0, 1, 2], Decoding(options=options), batch, final, lambda: events.append(("pause",)))
    assert texts == ["row 0", "row 1", "row 2"]
    assert events == [
        ("batch", 0.0, (0, 1, 2)),
        ("final", 1, "row 1", None),  # before the others fall back
        ("pause",),
        ("batch", 0.2, (0, 2)),
        ("final", 0, "row 0", None),
        ("pause",),
        ("batch", 0.4, (2,)),
        ("final", 2, "row 2", None),
    ]
    events.clear()  # a row failing at every temperature is given its final text once, at the end
    fails[0.4] = {2}
    ladder([2], Decoding(options=options), batch, final)
    assert [e for e in events if e[0] == "final"] == [("final", 2, "la " * 40, None)]


def test_fallback_rules():
    options = DecodeOptions()
    assert needs_fallback(Attempt("x", -0.1, cut=True), options, 0)
    assert needs_fallback(Attempt("la " * 40, -0.1), options, 0)
    assert not needs_fallback(Attempt("fine", -3.0), options, 0)  # the first step: the loop guard alone
    assert needs_fallback(Attempt("fine", -3.0), options, 1)  # later: a low log-probability too, as Whisper
    assert not needs_fallback(Attempt("fine", None), options, 1)  # beam search reports none


def test_a_silent_row_neither_falls_back_nor_keeps_its_made_up_text():
    """Whisper's rule: likely silent (no-speech probability over the threshold) and an unlikely text: no text, and no
    hotter decode; likely silent but a likely text, or no silence detection: as before."""
    options = DecodeOptions()
    silence = Attempt("la " * 40, -1.5, no_speech_prob=0.9)
    assert silent(silence, options) and not needs_fallback(silence, options, 0) and kept_text(silence, options) == ""
    confident = Attempt("la " * 40, -0.5, no_speech_prob=0.9)  # a loop Whisper is sure of: it falls back
    assert not silent(confident, options) and needs_fallback(confident, options, 0)
    assert not silent(Attempt("you", -1.5, no_speech_prob=0.5), options)
    assert not silent(Attempt("you", None, no_speech_prob=0.9), options)  # beam search: no log-probability
    assert not silent(silence, DecodeOptions(no_speech_threshold=None))
    assert silent(Attempt("you", -0.1, no_speech_prob=0.9), DecodeOptions(logprob_threshold=None))

    calls = []

    def batch(rows, temperature, cut):
        calls.append(rows)
        return [silence if i == 1 else Attempt(f"row {i}", -0.1, no_speech_prob=0.0) for i in rows]

    assert ladder([0, 1], Decoding(options=options), batch) == ["row 0", ""]
    assert calls == [[0, 1]]


@pytest.mark.slow
def test_real_base_gives_no_text_for_noise_and_the_same_text_for_speech():
    """Real whisper-base: a second of faint noise was transcribed "you" (the classic made-up text); its no-speech
    probability is over 0.9 and the text unlikely, so it now gives none. Speech keeps its text, and
    ``no_speech_threshold=None`` brings the old behaviour back."""
    import numpy as np

    t = Transcriber("whisper-base", precision="int8")
    noise = np.random.default_rng(0).normal(0, 1e-3, 16000).astype(np.float32)
    speech = load_audio(sorted(LIBRIVOX.glob("*.wav"))[0])
    assert [r.text for r in t.transcribe_batch([noise, speech], "en")] == ["", t.transcribe(speech, "en").text]
    assert t.transcribe(speech, "en").text
    assert t.transcribe(noise, "en", options=DecodeOptions(no_speech_threshold=None)).text


@pytest.fixture(scope="module")
def looping(tiny_dir):
    """A random model (it loops) and real speech."""
    t = Transcriber(str(tiny_dir), precision="fp32", device="cpu", max_new_tokens=48)
    return t, [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))[:3]]


def test_a_sampled_row_does_not_depend_on_its_batch(looping):
    t, clips = looping
    feats = features(t.model, t.processor, clips)
    d = Decoding(max_new_tokens=24)
    together = generate_attempts(t.model, t.processor, feats, ["sw"] * 3, d, temperature=0.8)
    alone = [generate_attempts(t.model, t.processor, feats[i : i + 1], ["sw"], d, temperature=0.8)[0] for i in range(3)]
    assert [a.text for a in together] == [a.text for a in alone]
    assert together != generate_attempts(t.model, t.processor, feats, ["sw"] * 3, d)  # sampling did sample
    assert all(a.avg_logprob is not None and a.avg_logprob < 0 for a in together)


def test_loops_stop_early_and_the_final_texts_do_not_change(looping):
    """The random model loops: cut decodes end long before the token cap, and what decode_texts (and so eval and
    transcribe) returns is the same with the stop on and off."""
    t, clips = looping
    feats = features(t.model, t.processor, clips)
    d = Decoding(max_new_tokens=48)
    full = generate_attempts(t.model, t.processor, feats, ["sw"] * 3, d)
    cut = generate_attempts(t.model, t.processor, feats, ["sw"] * 3, d, cut_loops=True)
    assert any(a.cut for a in cut), "the random model should loop"
    for f, c in zip(full, cut, strict=True):
        if c.cut:
            assert needs_fallback(f, d.options, 0), "a cut decode, run to its end, fails the loop guard"
            assert len(t.processor.tokenizer(c.text).input_ids) < len(t.processor.tokenizer(f.text).input_ids)
    on = decode_texts(t.model, t.processor, clips, "sw", d)
    off = decode_texts(
        t.model, t.processor, clips, "sw", Decoding(max_new_tokens=48, options=DecodeOptions(stop_loops_early=False))
    )
    assert on == off
    assert on == [r.text for r in t.transcribe_batch(clips, "sw", adapter=None)]


@pytest.mark.slow
def test_real_base_texts_agree_with_the_loop_stop_on_and_off(monkeypatch):
    """Real whisper-base: LibriVox English (no loops) and synthetic Swahili of a voice it loops on (sentence 6 repeats
    one word up to the cap): the stop cuts decodes, and the final texts are those of decodes run to their end."""
    import whisper_lora.inference.decode as decode
    from whisper_lora.data.synth import shipped_sentences, synthesize

    cuts = []
    real = decode.generate_attempts

    def spy(*args, **kwargs):
        attempts = real(*args, **kwargs)
        cuts.extend(a.cut for a in attempts)
        return attempts

    monkeypatch.setattr(decode, "generate_attempts", spy)
    t = Transcriber("whisper-base", precision="int8")
    corpora = {
        "en": [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))],
        "sw": [synthesize(s, "sw", "m2") for s in shipped_sentences("sw", "test")[:8]],
    }
    off = Decoding(options=DecodeOptions(stop_loops_early=False))
    for language, clips in corpora.items():
        on = decode_texts(t.model, t.processor, clips, language, t.decoding)
        assert on == decode_texts(t.model, t.processor, clips, language, off), language
        assert all(on)
    assert any(cuts), "whisper-base should loop on synthetic Swahili, and the stop cut it"


def test_no_speech_is_read_once_per_row_whatever_the_temperatures(looping, monkeypatch):
    """The random model loops, so its rows fall back through the ladder; each row's no-speech probability is read
    once (one decoder step on its encoder output), not again at every temperature."""
    import whisper_lora.inference.decode as decode

    t, clips = looping
    read, steps = [], []
    real, batch = decode.no_speech_probs, decode.generate_attempts
    monkeypatch.setattr(decode, "no_speech_probs", lambda m, s: read.append(len(s)) or real(m, s))
    monkeypatch.setattr(decode, "generate_attempts", lambda *a, **k: steps.append(1) or batch(*a, **k))
    texts = decode_texts(t.model, t.processor, clips, "sw", Decoding(max_new_tokens=24))
    assert len(steps) > 1, "the random model should fall back"
    assert sum(read) == len(clips) and len(texts) == len(clips)
    read.clear()
    steps.clear()
    monkeypatch.setattr(
        "whisper_lora.inference.transcriber.generate_attempts", lambda *a, **k: steps.append(1) or batch(*a, **k)
    )
    t.transcribe_batch(clips, "sw", adapter=None)
    assert len(steps) > 1, "the random model should fall back"
    assert sum(read) == len(clips)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "row_indexed"), [("routed", False), ("routed", True), ("hotswap", None)])
def test_an_adapter_that_unlearnt_no_speech_still_gives_no_text_for_noise(mode, row_indexed):
    """The shipped ``sw`` adapter was trained on speech alone: its own decoder gives ``<|nospeech|>`` about 0 on
    noise and made up "Mkuri" for it. No-speech is read by the base's decoder on the row's own encoder output, in
    every pool mode and on the window path (timestamps) too; speech keeps its text, in a batch or alone."""
    import numpy as np

    from whisper_lora.data.synth import shipped_sentences, synthesize

    t = Transcriber("whisper-base", precision="int8", mode=mode, row_indexed=row_indexed)
    noise = np.random.default_rng(0).normal(0, 3e-3, 48000).astype(np.float32)
    speech = synthesize(shipped_sentences("sw", "test")[0], "sw", "m2")
    alone = t.transcribe(speech, "sw", adapter="sw").text
    got = t.transcribe_batch([noise, speech, noise], ["sw", "sw", "en"], adapter=["sw", "sw", None])
    assert [r.text for r in got] == ["", alone, ""] and alone
    assert [r.adapter for r in got] == ["sw", "sw", None]
    assert t.transcribe(noise, "sw", adapter="sw", timestamps=True).segments == ()
    assert t.transcribe(speech, "sw", adapter="sw", timestamps=True).text == alone
    made_up = t.transcribe(noise, "sw", adapter="sw", options=DecodeOptions(no_speech_threshold=None)).text
    assert made_up, "without the rule the adapter makes text up for noise"
