"""Transcript documents: SRT, WebVTT, OpenAI verbose JSON, and the decoding options behind them."""

import json

import pytest

from whisper_lora.errors import ConfigError
from whisper_lora.inference.formats import render, to_srt, to_vtt, verbose_json
from whisper_lora.inference.longform import DecodeOptions, Segment, Word, compression_ratio
from whisper_lora.inference.transcriber import Transcription


def _seg(i, start, end, text, words=None):
    return Segment(i, start, end, text, -0.3, compression_ratio(text), 0.01, False, (1, 2), words)


T = Transcription(
    "Hello there. General Kenobi.",
    "en",
    None,
    None,
    3725.5,
    (
        _seg(0, 0.0, 2.5, "Hello there.", (Word(" Hello", 0.0, 0.8), Word(" there.", 0.8, 2.5))),
        _seg(1, 3723.25, 3725.0, "General Kenobi."),
    ),
)


def test_srt_cues_are_numbered_with_comma_milliseconds():
    assert to_srt(T) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:02:03,250 --> 01:02:05,000\nGeneral Kenobi.\n"
    )


def test_vtt_has_its_header_and_dot_milliseconds():
    assert to_vtt(T) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:02:03.250 --> 01:02:05.000\nGeneral Kenobi.\n"
    )


def test_verbose_json_is_openais_shape_plus_routing():
    d = verbose_json(T, words=True)
    assert d["task"] == "transcribe" and d["language"] == "english" and d["language_code"] == "en"
    assert d["duration"] == 3725.5 and d["text"] == T.text
    seg = d["segments"][0]
    assert {"id", "start", "end", "text", "tokens", "avg_logprob", "compression_ratio", "no_speech_prob"} <= set(seg)
    assert d["words"] == [{"word": " Hello", "start": 0.0, "end": 0.8}, {"word": " there.", "start": 0.8, "end": 2.5}]
    assert "words" not in verbose_json(T)
    assert json.loads(render(T, "verbose_json")) == verbose_json(T)
    assert render(T, "txt") == T.text + "\n" and json.loads(render(T, "json")) == {"text": T.text}


def test_timed_formats_need_segments_and_unknown_formats_are_named():
    plain = Transcription("hi", "en", None, None, 1.0)
    with pytest.raises(ConfigError, match="timestamps=True"):
        to_srt(plain)
    with pytest.raises(ConfigError, match="unknown format 'docx'; valid: "):
        render(plain, "docx")


def test_decode_options_are_validated_in_one_place():
    with pytest.raises(ConfigError) as e:
        DecodeOptions(temperature=(0.4, 0.2), no_speech_threshold=1.5, compression_ratio_threshold=0.5)
    msg = str(e.value)
    assert "must not decrease" in msg and "no_speech_threshold=1.5" in msg and "compression_ratio_threshold=0.5" in msg
    assert DecodeOptions(temperature=0).temperature == (0.0,)


def test_a_starting_temperature_falls_back_in_steps_of_0_2():
    base = DecodeOptions()
    assert base.with_temperature(None) is base
    assert base.with_temperature(0.0).temperature == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert base.with_temperature(0.5).temperature == (0.5, 0.7, 0.9)
    assert base.with_temperature(1.0).temperature == (1.0,)


def test_compression_ratio_sees_loops():
    assert compression_ratio("to " * 100) > 10 > 2.4 > compression_ratio("Myslím, že jsme skutečně na stopě.")
    assert compression_ratio("") == 0.0
