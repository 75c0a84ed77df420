"""Long-form decoding of many inputs at once (``inference/seek.py``): the window rules, a batch whose rows end and
fall back at different steps, eight adapters in one batch equal to each input alone (tiny model), and one input
alone decoding exactly as transformers' own long-form loop (real whisper-base, real English)."""

import numpy as np
import pytest
import torch

from tests.conftest import LIBRIVOX, REPO_ADAPTERS
from tests.inference.test_row_lora import ROWS, SPECS, eight  # noqa: F401 (a fixture)
from tests.inference.test_transcriber import CLIPS
from whisper_lora.data.audio import load_audio
from whisper_lora.data.longaudio import join_clips
from whisper_lora.inference import decode as decode_module
from whisper_lora.inference import row_lora
from whisper_lora.inference.decode import Decoding, model_windows
from whisper_lora.inference.longform import DecodeOptions, decode_segments
from whisper_lora.inference.seek import WindowDecode, _prompt, _Track, decode_windows, split_window
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.catalog import AdapterRegistry

TB = 1000  # the first timestamp token in these unit tests; text tokens are below it


@pytest.mark.parametrize(
    "tokens, segments, advance",
    [
        # two complete segments, the decode ends on a pair: seek moves to the last timestamp
        ([TB, 1, 2, TB + 50, TB + 50, 3, TB + 100, TB + 100], [(0.0, 1.0), (1.0, 2.0)], 2 * 100),
        # one segment then an unfinished one: that one is left to the next window
        ([TB, 1, TB + 50, TB + 60, 4, 5], [(0.0, 1.0)], 2 * 50),
        # a single timestamp before the end: nothing more was said, the whole window is done
        ([TB, 1, TB + 50, TB + 60, 2, TB + 70], [(0.0, 1.0), (1.2, 1.4)], 3000),
        # no pair: one segment up to the last timestamp, the whole window is done
        ([TB, 1, 2, TB + 40], [(0.0, 0.8)], 3000),
        ([1, 2], [(0.0, 30.0)], 3000),
        ([], [(0.0, 30.0)], 3000),
    ],
)
def test_a_window_splits_at_timestamp_pairs_as_transformers_does(tokens, segments, advance):
    pieces, moved = split_window(tokens, TB, 0.0, 3000)
    assert [(round(s, 3), round(e, 3)) for s, e, _ in pieces] == segments
    assert moved == advance
    assert [t for _, _, toks in pieces for t in toks] == tokens[: sum(len(p[2]) for p in pieces)]
    shifted, _ = split_window(tokens, TB, 12.5, 3000)  # times count from the window's start in the input
    assert [round(s - 12.5, 3) for s, _, _ in shifted] == [s for s, _ in segments]


def test_a_decode_that_moves_nothing_still_moves_on():
    assert split_window([TB, TB, 7], TB, 0.0, 3000)[1] == 3000


def test_prompts_follow_the_previous_text_and_its_temperature():
    sop, half = 900, 6
    on, off = DecodeOptions(), DecodeOptions(condition_on_previous_text=False)
    t = _Track(torch.zeros(80, 10))
    assert _prompt(t, on, [], sop, half, TB) == []  # the first window: nothing to condition on
    assert _prompt(t, off, [5, 6], sop, half, TB) == [sop, 5, 6]  # not conditioning: the initial prompt, every window
    t.history = [[TB, 1, 2, TB + 9, TB + 9], [TB + 9, 3, 4, 5, TB + 20]]
    # the last half - 1 tokens; a segment ending in two timestamps gives its last one to the next segment
    assert _prompt(t, on, [], sop, half, TB) == [sop, TB + 9, 3, 4, 5, TB + 20]
    t.condition = False  # the last window was decoded hotter than 0.5
    assert _prompt(t, on, [], sop, half, TB) == [sop]


class FakeModel:
    """Hooks for ``decode_windows``: each input's windows decode to text tokens then a timestamp that moves seek by a
    fixed number of frames (its first feature value); rows whose second feature value is over a temperature 'loop'
    (compress well) there, so they fall back up to it. Records every call's rows."""

    def __init__(self):
        self.calls: list[tuple[str, list[int], float | None]] = []

    def encode(self, rows, windows):
        self.calls.append(("encode", list(rows), None))
        return [w[:, :2].T.clone() for w in windows]  # (2, n_mels): what decode reads back

    def decode(self, rows, states, prompts, temperature):
        self.calls.append(("decode", list(rows), temperature))
        out = []
        for s in states:
            step, hot = int(s[0, 0]), float(s[0, 1])
            looping = temperature < hot
            tokens = (7,) * 60 if looping else (TB, 1, 2, 3, TB + step // 2)
            out.append(WindowDecode(tokens, True, -0.1))
        return out


def _feats(frames: int, step: int, hot: float) -> torch.Tensor:
    f = torch.zeros(80, frames)
    f[0], f[1] = step, hot
    return f


def test_a_batch_decodes_each_step_over_the_rows_left_and_falls_back_row_by_row():
    fake = FakeModel()
    feats = [_feats(6000, 3000, 0.0), _feats(2000, 1000, 0.3), _feats(9000, 3000, 0.0)]
    options = DecodeOptions(temperature=(0.0, 0.2, 0.4), logprob_threshold=None)
    special = {"sop": 900, "timestamp_begin": TB, "eot": 999}
    finished = []
    raws = decode_windows(
        feats,
        options,
        fake.encode,
        None,
        fake.decode,
        special=special,
        vocab_size=51865,
        half=224,
        done=lambda i, r: finished.append(i),
    )
    decodes = [(rows, t) for kind, rows, t in fake.calls if kind == "decode"]
    # step 1: all three; row 1 loops at 0.0 and 0.2 and is decoded again alone; row 1 ends after one window,
    # row 0 after two, row 2 after three
    assert decodes == [([0, 1, 2], 0.0), ([1], 0.2), ([1], 0.4), ([0, 2], 0.0), ([2], 0.0)]
    assert finished == [1, 0, 2]
    assert [len(r) for r in raws] == [2, 1, 3]
    assert [round(s.start, 2) for s in raws[2]] == [0.0, 30.0, 60.0]
    alone = []
    for f in feats:  # each input alone gives the same segments
        solo = FakeModel()
        alone.append(
            decode_windows([f], options, solo.encode, None, solo.decode, special=special, vocab_size=51865, half=224)[0]
        )
    assert raws == alone


def test_a_silent_window_is_skipped_whole_without_falling_back_or_prompting_the_next():
    """Window 2 of 3 is silent (the base's no-speech probability high, its text unlikely): it is not decoded hotter,
    gives no segment, seek passes the whole window, and window 3's prompt holds window 1's text only."""
    fake, prompts = FakeModel(), []
    f = _feats(9000, 3000, 0.0)
    f[2, 3000:6000] = 1.0  # the silent part: window 2

    def decode(rows, states, p, temperature):
        prompts.extend(p)
        return [
            WindowDecode(g.tokens, g.ended, -2.0 if s[0, 2] else -0.1)
            for g, s in zip(fake.decode(rows, states, p, temperature), states, strict=True)
        ]

    silence = lambda rows, states: [0.9 if s[0, 2] else 0.1 for s in states]  # noqa: E731
    special = {"sop": 900, "timestamp_begin": TB, "eot": 999}
    raws = decode_windows(
        [f], DecodeOptions(), fake.encode, silence, decode, special=special, vocab_size=51865, half=224
    )
    assert [(rows, t) for kind, rows, t in fake.calls if kind == "decode"] == [([0], 0.0)] * 3
    assert [s.start for s in raws[0]] == [0.0, 60.0]
    assert prompts == [[], [900, TB, 1, 2, 3, TB + 1500], [900, TB, 1, 2, 3, TB + 1500]]


def _long_inputs(n: int) -> list[np.ndarray]:
    """Inputs of 35 s to about 100 s (each ends at another step), from the LibriVox clips."""
    out = []
    for i in range(n):
        seconds = 35 + 9 * i
        joined = np.concatenate([CLIPS[(i + k) % len(CLIPS)] for k in range(12)])
        out.append(joined[: 16000 * seconds].astype(np.float32))
    return out


@pytest.mark.parametrize("row_indexed", [True, False])
def test_long_inputs_over_eight_adapters_in_one_batch_give_each_inputs_segments_alone(
    tiny_dir,
    eight,  # noqa: F811 (the fixture imported above)
    row_indexed,
    monkeypatch,
):
    """Nine long inputs, eight adapters and the base: every step of the batched loop decodes the windows of every
    unfinished input in one call (row-indexed LoRA, or peft's ``adapter_names``); the tiny model falls back and hits
    its token limit, so sampled and capped rows are in the batch too. Each input's segments equal its own alone."""
    t = Transcriber(
        str(tiny_dir), eight, precision="fp32", device="cpu", max_new_tokens=12, max_loaded=8, row_indexed=row_indexed
    )
    audio = _long_inputs(len(ROWS))
    langs = [lang or "en" for lang in ROWS]
    sizes: list[tuple[int, float]] = []
    real = decode_module.generate_windows

    def spy(model, processor, windows, langs, decoding, names=None, temperature=0.0, pause=None):
        sizes.append((len(windows), temperature))
        got = real(model, processor, windows, langs, decoding, names, temperature, pause)
        assert all(len(g.tokens) <= 12 for g in got)  # max_new_tokens per window, whatever the window
        return got

    monkeypatch.setattr("whisper_lora.inference.transcriber.generate_windows", spy)
    monkeypatch.setattr("whisper_lora.inference.decode.generate_windows", spy)
    alone = [
        t.transcribe(a, lang, adapter=name, timestamps=True) for a, lang, name in zip(audio, langs, ROWS, strict=True)
    ]
    calls_alone, sizes[:] = len(sizes), []
    used = []
    real_rows = row_lora.RowLoRA.rows
    monkeypatch.setattr(row_lora.RowLoRA, "rows", lambda self, names: used.append(names) or real_rows(self, names))
    mixed = t.transcribe_batch(audio, langs, adapter=list(ROWS), timestamps=True)
    assert [[(s.start, s.end, s.text) for s in r.segments] for r in mixed] == [
        [(s.start, s.end, s.text) for s in r.segments] for r in alone
    ]
    assert sizes[0] == (len(ROWS), 0.0)  # the first window of every input in one call
    assert any(temp > 0 and n > 1 for n, temp in sizes)  # rows fell back (sampled) together inside the batch
    assert len(sizes) < calls_alone / 3, (len(sizes), calls_alone)
    if row_indexed:  # the adapters change what is decoded: the base alone gives other segments for most inputs
        base = t.transcribe_batch(audio, langs, adapter=None, timestamps=True)
        changed = [b.text != m.text for b, m in zip(base, mixed, strict=True)][: len(SPECS)]
        assert sum(changed) >= len(SPECS) // 2, changed
    if row_indexed:  # one call, every row with its own adapter (peft names carry the version)
        assert [n and n.split("@")[0] for n in used[0]] == list(ROWS)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [(0.0,), DecodeOptions().temperature])
def test_one_input_alone_decodes_as_transformers_long_form_loop(temperature):
    """Real whisper-base on 45 s of real English: the owned loop gives transformers' segments, times and texts."""
    t = Transcriber("whisper-base", AdapterRegistry(REPO_ADAPTERS), precision="fp32", device="cpu")
    wavs = sorted(LIBRIVOX.glob("*.wav")) * 2
    audio = join_clips([load_audio(w) for w in wavs], [""] * len(wavs), pause=1.0).audio
    options = DecodeOptions(temperature=temperature)
    with torch.random.fork_rng():
        want = decode_segments(t.model, t.processor, audio, "en", options)
    got = model_windows(t.model, t.processor, [audio], ["en"], Decoding(options=options))[0]
    assert len(want) >= 5
    assert [(s.start, s.end, s.text, s.tokens) for s in got] == [(s.start, s.end, s.text, s.tokens) for s in want]
    assert [round(s.avg_logprob, 4) for s in got] == [round(s.avg_logprob, 4) for s in want]
    assert [s.no_speech_prob for s in got] == pytest.approx([s.no_speech_prob for s in want], abs=1e-5)


def test_a_batch_needing_more_adapters_than_max_loaded_runs_in_parts(tiny_dir, eight, monkeypatch):  # noqa: F811
    t = Transcriber(str(tiny_dir), eight, precision="fp32", device="cpu", max_new_tokens=6, max_loaded=2)
    names = ["sw", "cs", "id", None, "sw"]
    audio = [x[: 16000 * 32] for x in _long_inputs(len(names))]
    langs = [n or "en" for n in names]
    alone = [
        t.transcribe(a, lang, adapter=n, timestamps=True).text for a, lang, n in zip(audio, langs, names, strict=True)
    ]
    firsts = []
    real = decode_module.generate_windows

    def spy(model, processor, windows, langs, decoding, names=None, temperature=0.0, pause=None):
        if temperature == 0.0:
            firsts.append(len(windows))
        return real(model, processor, windows, langs, decoding, names, temperature, pause)

    monkeypatch.setattr("whisper_lora.inference.transcriber.generate_windows", spy)
    mixed = t.transcribe_batch(audio, langs, adapter=names, timestamps=True)
    assert [r.text for r in mixed] == alone
    assert firsts[0] == 2 and max(firsts) == 3  # sw and cs together; then id, the base and sw again
