"""Auto language routing with the real whisper-base and the shipped Swahili adapter."""

from pathlib import Path

import pytest

from tests.conftest import LIBRIVOX
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.registry import AdapterRegistry
from whisper_lora.transcriber import Transcriber

SHIPPED = Path(__file__).resolve().parent.parent / "adapters"


@pytest.fixture(scope="module")
def transcriber():
    reg = AdapterRegistry(SHIPPED)
    assert "sw" in reg.names(), "the Swahili adapter ships in adapters/sw"
    return Transcriber("whisper-base", reg, precision="fp32", device="cpu", max_new_tokens=64)


@pytest.mark.slow
def test_auto_routes_swahili_to_its_adapter_and_english_to_the_base(transcriber):
    sentence = shipped_sentences("sw", "test")[5]
    swahili = synthesize(sentence, "sw", "m4", 160, 50)  # a held-out voice
    english = str(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")
    sw, en = transcriber.transcribe_batch([swahili, english], "auto")
    assert (sw.language, sw.adapter) == ("sw", "sw") and sw.language_probability >= 0.5
    assert (en.language, en.adapter) == ("en", None) and en.language_probability > 0.9
    assert "ill" in en.text.lower() and "young man" in en.text.lower()


@pytest.mark.slow
def test_shipped_adapters_are_small_safetensors_with_metrics():
    reg = AdapterRegistry(SHIPPED)
    for e in reg.entries():
        size = sum(f.stat().st_size for f in e.path.iterdir())
        assert size < 10e6, e.name
        m = e.metadata.metrics
        assert m["adapter"]["cer"] < m["base"]["cer"], e.name
        assert e.metadata.base["name"] == "whisper-base"
