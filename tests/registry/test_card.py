import json
import shutil

import yaml
from peft import PeftModel

from tests.conftest import REPO_ADAPTERS
from whisper_lora.base.model import load_whisper
from whisper_lora.base.resolve import resolve_base
from whisper_lora.registry.card import make_hub_ready, public_base_id


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_public_base_ids():
    assert public_base_id("whisper-base") == "openai/whisper-base"
    assert public_base_id("/root/.cache/whisper-lora/models/whisper-base") == "openai/whisper-base"
    assert public_base_id("someone/whisper-darija") == "someone/whisper-darija"


def test_shipped_adapters_are_hub_ready():
    for lang in ("sw", "id", "cs"):
        d = REPO_ADAPTERS / lang
        assert json.loads((d / "adapter_config.json").read_text())["base_model_name_or_path"] == "openai/whisper-base"
        card = (d / "README.md").read_text()
        front = _front_matter(card)
        meta = json.loads((d / "whisper_lora.json").read_text())
        assert front["language"] == [meta["language"]] and front["base_model"] == "openai/whisper-base"
        assert front["library_name"] == "peft" and front["pipeline_tag"] == "automatic-speech-recognition"
        wer = next(m["value"] for m in front["model-index"][0]["results"][0]["metrics"] if m["type"] == "wer")
        assert wer == meta["metrics"]["adapter"]["wer"]
        assert "More Information Needed" not in card
        trimmed = meta["training"].get("trim_padding") is not None  # cs: encoder trained on clip + 1 s
        assert ("instead of 30 s windows (`whisper-lora transcribe` encodes clips so where" in card) == trimmed
        assert trimmed == (lang == "cs")


def test_a_copied_adapter_loads_with_plain_peft_by_its_base_id(tmp_path):
    copy = tmp_path / "elsewhere" / "sw"
    shutil.copytree(REPO_ADAPTERS / "sw", copy)
    base_id = json.loads((copy / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = load_whisper(resolve_base(base_id), "fp32", "cpu")
    model = PeftModel.from_pretrained(base, str(copy))
    assert sum("lora_A" in n for n, _ in model.named_parameters()) > 0


def test_card_regeneration_is_idempotent(tmp_path):
    copy = tmp_path / "sw"
    shutil.copytree(REPO_ADAPTERS / "sw", copy)
    before = {f.name: f.read_bytes() for f in copy.iterdir()}
    assert make_hub_ready(copy) == "openai/whisper-base"
    assert {f.name: f.read_bytes() for f in copy.iterdir()} == before
