import json
import shutil

import pytest

from whisper_lora.errors import AdapterError
from whisper_lora.model import load_base_model
from whisper_lora.registry import AdapterRegistry


def test_lists_and_resolves_codes_and_aliases(tiny_registry):
    reg = AdapterRegistry(tiny_registry)
    assert reg.names() == ["ary", "cs", "sw"]
    assert reg.find("swa").name == "sw" and reg.find("ces").name == "cs"
    assert reg.find("darija").name == "ary" and reg.find("ary").whisper_language == "ar"
    assert reg.find("en") is None


@pytest.mark.parametrize("name", ["../sw", "/etc", "sw/../../x", "..", "SW", "a" * 40, ""])
def test_names_cannot_escape_the_registry(tiny_registry, name):
    with pytest.raises(AdapterError, match="invalid adapter name"):
        AdapterRegistry(tiny_registry).get(name)


def test_symlink_out_of_the_registry_is_refused(tiny_registry, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    outside = tmp_path / "outside"
    shutil.copytree(root / "sw", outside)
    (root / "xx").symlink_to(outside)
    with pytest.raises(AdapterError, match="outside the registry"):
        AdapterRegistry(root).get("xx")


def test_pickled_weights_are_refused(tiny_registry, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    (root / "sw" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(AdapterError, match=r"pickled weights \(adapter_model.bin\); only safetensors"):
        AdapterRegistry(root).get("sw")


def test_incompatible_base_is_refused(tiny_registry, tiny_dir, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    meta_path = root / "cs" / "whisper_lora.json"
    meta = json.loads(meta_path.read_text())
    meta["base"]["d_model"] = 512
    meta["base"]["fingerprint"] = "0123456789abcdef"
    meta_path.write_text(json.dumps(meta))
    reg = AdapterRegistry(root)
    info = load_base_model(str(tiny_dir), "fp32", "cpu")[0].whisper_lora_base
    reg.check_compatible(reg.get("sw"), info)  # the untouched one is fine
    with pytest.raises(AdapterError, match="incompatible.*d_model 512 != base 64.*fingerprint 0123456789abcdef"):
        reg.check_compatible(reg.get("cs"), info)


def test_missing_adapter_lists_available(tiny_registry):
    with pytest.raises(AdapterError, match="no adapter 'de'.*available: ary, cs, sw"):
        AdapterRegistry(tiny_registry).get("de")
