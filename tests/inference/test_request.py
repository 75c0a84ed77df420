"""``Request``: one object per transcription, validated once with every problem reported."""

from dataclasses import replace

import numpy as np
import pytest

from whisper_lora.errors import ConfigError
from whisper_lora.inference.decode import Decoding
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.request import AUTO, ROUTE, Request, RequestError
from whisper_lora.inference.routing import RouteDecision


def test_every_bad_field_is_reported_at_once_in_field_order():
    with pytest.raises(RequestError) as e:
        Request(
            np.zeros((2, 8), np.float32),
            language="klingon",
            adapter="",
            response_format="docx",
            temperature=1.5,
            num_beams=0,
        )
    assert [f for f, _ in e.value.problems] == [
        "audio",
        "language",
        "adapter",
        "response_format",
        "temperature",
        "num_beams",
    ]
    message = str(e.value)
    assert "unknown language 'klingon'" in message
    assert "unsupported response_format 'docx'; valid: json, text, srt, vtt, verbose_json" in message
    assert "temperature=1.5 must be between 0 and 1" in message and "num_beams=0 must be >= 1" in message
    assert e.value.field == "audio" and isinstance(e.value, ConfigError)


def test_defaults_normalise_and_decoding_overrides():
    r = Request("clip.wav", language=" SW ", response_format="txt")
    assert (r.language, r.adapter, r.response_format, r.timed) == ("sw", ROUTE, "text", False)
    assert Request(None).language == AUTO
    default = Decoding()
    assert r.decoding(default) is default  # nothing overridden: the Transcriber's own settings
    hot = Request(None, prompt="Jambo", temperature=0.5, word_timestamps=True, num_beams=2)
    d = hot.decoding(default)
    assert hot.timed and d.num_beams == 2 and d.options.prompt == "Jambo" and d.options.word_timestamps
    assert d.options.temperature == (0.5, 0.7, 0.9)
    plain = DecodeOptions(compression_ratio_threshold=None)
    assert Request(None, options=plain).decoding(default).options == plain
    assert Request(None, response_format="srt").timed


def test_a_route_decision_is_only_for_auto():
    decision = RouteDecision("sw", 0.9, "sw", "router")
    assert Request(None, decision=decision).decision == decision
    with pytest.raises(RequestError, match="route decision is for language 'auto'"):
        Request(None, language="sw", decision=decision)
    with pytest.raises(RequestError, match="num_beams"):
        replace(Request(None), num_beams=-1)  # replace validates again
