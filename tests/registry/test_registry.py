import json
import re
import shutil

import numpy as np
import pytest

from whisper_lora.base.model import load_base_model
from whisper_lora.errors import AdapterError, BrokenAdapterError
from whisper_lora.registry.catalog import AdapterRegistry


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


@pytest.fixture
def registry_copy(tiny_registry, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    return root


def _break_metadata(root, tmp_path):
    (root / "sw" / "whisper_lora.json").write_text('{"language": "sw", "base": ')  # cut short


def _truncate_weights(root, tmp_path):
    f = root / "sw" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _add_pickle(root, tmp_path):
    (root / "sw" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")


def _escape_by_symlink(root, tmp_path):
    outside = tmp_path / "outside"
    shutil.move(root / "sw", outside)
    (root / "sw").symlink_to(outside)


def _wrong_rank(root, tmp_path):
    f = root / "sw" / "adapter_config.json"
    cfg = json.loads(f.read_text())
    cfg["r"] = 8  # the weights have rank 4
    f.write_text(json.dumps(cfg))


FAULTS = {
    "malformed metadata": (_break_metadata, "whisper_lora.json is malformed"),
    "truncated safetensors": (_truncate_weights, "damaged \\(truncated or not safetensors\\)"),
    "pickled weights": (_add_pickle, r"pickled weights \(adapter_model.bin\); only safetensors"),
    "symlink out of the registry": (_escape_by_symlink, "resolves outside the registry"),
    "rank differs from the config": (_wrong_rank, r"adapter_config.json says r=\[8\]"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_one_broken_adapter_is_listed_with_its_reason_and_the_rest_serve(registry_copy, tmp_path, fault):
    damage, reason = FAULTS[fault]
    damage(registry_copy, tmp_path)
    reg = AdapterRegistry(registry_copy)
    good, broken = reg.scan()
    assert [e.name for e in good] == ["ary", "cs"] and reg.names() == ["ary", "cs"]
    assert [b.name for b in broken] == ["sw"]
    assert re.search(reason, broken[0].reason), broken[0].reason
    assert reg.find("cs").name == "cs"  # the healthy ones still resolve
    with pytest.raises(BrokenAdapterError, match="adapter 'sw' is broken: .*" + reason):
        reg.find("sw")  # never a silent fall-back to the base


def test_incompatible_base_is_refused(tiny_registry, tiny_dir, tmp_path):
    root = tmp_path / "reg"
    shutil.copytree(tiny_registry, root)
    meta_path = root / "cs" / "whisper_lora.json"
    meta = json.loads(meta_path.read_text())
    meta["base"]["d_model"] = 512
    meta["base"]["fingerprint"] = "0123456789abcdef"
    meta_path.write_text(json.dumps(meta))
    reg = AdapterRegistry(root)
    info = load_base_model(str(tiny_dir), "fp32", "cpu").info
    reg.check_compatible(reg.get("sw"), info)  # the untouched one is fine
    with pytest.raises(AdapterError, match="incompatible.*d_model 512 != base 64.*fingerprint 0123456789abcdef"):
        reg.check_compatible(reg.get("cs"), info)
    good, broken = reg.with_base(info).scan()  # a registry that knows its base lists it as broken
    assert [e.name for e in good] == ["ary", "sw"] and [b.name for b in broken] == ["cs"]
    assert "d_model 512 != base 64" in broken[0].reason


def test_missing_adapter_lists_available(tiny_registry):
    with pytest.raises(AdapterError, match="no adapter 'de'.*available: ary, cs, sw"):
        AdapterRegistry(tiny_registry).get("de")


def test_a_repointed_root_symlink_is_a_change_and_a_vanished_one_is_empty(tiny_registry, tmp_path, caplog):
    """``adapters -> v1`` repointed to ``v2`` and ``v1`` deleted: the next look sees v2's adapters; a root whose
    target is gone is an empty registry with a warning, never an exception."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    shutil.copytree(tiny_registry, v1)
    v2.mkdir()
    shutil.copytree(tiny_registry / "sw", v2 / "sw")
    shutil.copytree(tiny_registry / "sw", v2 / "id")  # a name v1 lacks
    link = tmp_path / "adapters"
    link.symlink_to(v1)
    reg = AdapterRegistry(link)
    assert reg.names() == ["ary", "cs", "sw"] and not reg.changed()
    tmp = tmp_path / "adapters.tmp"
    tmp.symlink_to(v2)
    tmp.replace(link)  # atomic repoint, as a deployment does it
    shutil.rmtree(v1)
    assert reg.changed()
    reg.refresh()
    assert reg.names() == ["id", "sw"] and reg.broken() == []
    assert reg.get("sw").path == v2 / "sw" and reg.digest().keys() == {"id", "sw"} and not reg.changed()
    shutil.rmtree(v2)  # the target is gone
    assert reg.changed()
    with caplog.at_level("WARNING", logger="whisper_lora"):
        reg.refresh()
    assert reg.scan() == ([], []) and reg.digest() == {} and not reg.changed()
    assert f"adapter registry {link} is gone" in caplog.text
    shutil.copytree(tiny_registry, v2)  # and back
    assert reg.changed() and reg.refresh().names() == ["ary", "cs", "sw"]


def test_a_transcriber_needs_no_registry_unless_one_is_named(tiny_dir, tiny_registry, tmp_path, monkeypatch, caplog):
    """Outside a checkout (no ./adapters, no $WHISPER_LORA_ADAPTERS) the base serves every language; a registry that
    was named and does not exist stays an error, and a ./adapters made later is picked up by a refresh."""
    from whisper_lora.inference.transcriber import Transcriber
    from whisper_lora.registry.catalog import ENV_VAR, serving_registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    with caplog.at_level("INFO", logger="whisper_lora"):
        t = Transcriber(str(tiny_dir), precision="fp32", device="cpu", max_new_tokens=4)
    assert t.adapters() == [] and "the base serves every language" in caplog.text
    assert "is gone" not in caplog.text
    clip = np.zeros(16000, dtype=np.float32)
    clip[::50] = 0.5  # not silent: decoded
    assert t.transcribe(clip, language="sw").adapter is None
    for named in ({"root": tmp_path / "nowhere"}, {}):
        if not named:
            monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
        with pytest.raises(AdapterError, match="does not exist"):
            serving_registry(**named)
    monkeypatch.delenv(ENV_VAR)
    shutil.copytree(tiny_registry, tmp_path / "adapters")
    assert t.refresh_adapters() and t.adapters() == ["ary", "cs", "sw"]
