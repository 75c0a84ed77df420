"""decode.py: the one decoding path; eval and training's scoring get exactly what transcribe returns."""

import pytest

from tests.conftest import LIBRIVOX
from whisper_lora.data.audio import load_audio
from whisper_lora.errors import ConfigError
from whisper_lora.inference.decode import Decoding, decode_texts, looped
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.transcriber import Transcriber


def test_decoding_validates_every_setting_at_once():
    with pytest.raises(ConfigError) as e:
        Decoding(num_beams=0, max_new_tokens=1000)
    assert "num_beams=0" in str(e.value) and "max_new_tokens=1000" in str(e.value)
    assert Decoding().key() != Decoding(max_new_tokens=100).key()


def test_loop_guard_runs_and_decode_texts_equals_transcriber(tiny_dir, tiny_registry):
    """A random model loops: the guard re-decodes those clips, the same way in both paths."""
    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=24)
    clips = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))[:3]]
    unguarded = Decoding(max_new_tokens=24, options=DecodeOptions(compression_ratio_threshold=None))
    raw = decode_texts(t.model, t.processor, clips, "sw", unguarded)
    assert looped(raw, Decoding()), "the random model should produce a repetition loop"
    guarded = decode_texts(t.model, t.processor, clips, "sw", Decoding(max_new_tokens=24))
    assert guarded != raw
    assert guarded == [r.text for r in t.transcribe_batch(clips, "sw", adapter=None)]


@pytest.mark.slow
def test_real_base_decode_texts_equals_transcriber_on_librivox():
    t = Transcriber("whisper-base", precision="int8")
    clips = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    want = [r.text for r in t.transcribe_batch(clips, "en", adapter=None)]
    assert decode_texts(t.model, t.processor, clips, "en", t.decoding) == want
    assert all(want)
