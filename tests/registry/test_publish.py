"""Publishing: push over huggingface_hub.upload_folder (stubbed: nothing here reaches the hub), cards the hub
parses, and adapters used through transformers.pipeline. What is pushed is a checked copy: regular files only, a
profile that reads as one, and no local path in its metadata, config or card."""

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import REPO_ADAPTERS, make_tiny_adapter
from whisper_lora.errors import AdapterError
from whisper_lora.registry.adapter_io import ADDED_TOKENS_FILE, read_metadata
from whisper_lora.registry.publish import UPLOADED, asr_pipeline, push_adapter


class FakeApi:
    calls: list = []
    uploaded: dict = {}  # name -> bytes of the last upload_folder

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        from pathlib import Path

        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir() if p.is_file())
        FakeApi.calls.append(("upload_folder", kw, files))
        FakeApi.uploaded = {p.name: p.read_bytes() if p.is_file() else None for p in Path(kw["folder_path"]).iterdir()}
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.uploaded = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_uploads_exactly_the_adapter_files(fake_hub, tmp_path):
    adapter = shutil.copytree(REPO_ADAPTERS / "sw", tmp_path / "sw")
    (adapter / "notes.txt").write_text("private")
    url = push_adapter(adapter, "me/whisper-base-sw", token="hf_x", private=True)
    assert url == "https://huggingface.co/me/whisper-base-sw/commit/abc"
    (name, repo, kw), (_, up, _) = fake_hub.calls
    assert name == "create_repo" and repo == "me/whisper-base-sw" and kw["private"] and kw["exist_ok"]
    assert up["repo_id"] == "me/whisper-base-sw" and sorted(up["allow_patterns"]) == sorted(UPLOADED)
    assert "notes.txt" not in up["allow_patterns"]


def test_push_refuses_bad_repo_ids_and_broken_adapters(fake_hub, tmp_path):
    with pytest.raises(AdapterError, match="invalid repo id 'sw'"):
        push_adapter(REPO_ADAPTERS / "sw", "sw")
    broken = shutil.copytree(REPO_ADAPTERS / "sw", tmp_path / "sw")
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError):
        push_adapter(broken, "me/sw")
    assert fake_hub.calls == []  # nothing uploaded


def _profile_symlinked_to_a_private_file(adapter, tmp_path):
    private = tmp_path / "id_rsa"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    (adapter / "language_profile.safetensors").unlink()
    (adapter / "language_profile.safetensors").symlink_to(private)


def _weights_symlinked_to_another_adapter(adapter, tmp_path):
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.safetensors").symlink_to(REPO_ADAPTERS / "sw" / "adapter_model.safetensors")


def _profile_is_other_safetensors(adapter, tmp_path):
    shutil.copy(adapter / "adapter_model.safetensors", adapter / "language_profile.safetensors")


def _profile_is_a_directory(adapter, tmp_path):
    (adapter / "language_profile.safetensors").unlink()
    (adapter / "language_profile.safetensors").mkdir()


def _profile_is_a_fifo(adapter, tmp_path):
    (adapter / "language_profile.safetensors").unlink()
    os.mkfifo(adapter / "language_profile.safetensors")


UNPUBLISHABLE = {
    "profile symlinked to a private file": (_profile_symlinked_to_a_private_file, "is a symlink .*regular files"),
    "weights symlinked to another adapter": (_weights_symlinked_to_another_adapter, "is a symlink .*regular files"),
    "profile that is other safetensors": (_profile_is_other_safetensors, "is not a language profile"),
    "profile that is a directory": (_profile_is_a_directory, "not a regular file"),
    "profile that is a fifo": (_profile_is_a_fifo, "not a regular file"),
}


@pytest.mark.parametrize("fault", list(UNPUBLISHABLE))
def test_push_refuses_what_is_not_a_regular_adapter_file(fake_hub, tmp_path, fault):
    adapter = shutil.copytree(REPO_ADAPTERS / "id", tmp_path / "id")
    damage, message = UNPUBLISHABLE[fault]
    damage(adapter, tmp_path)
    with pytest.raises(AdapterError, match=message):
        push_adapter(adapter, "me/whisper-base-id")
    assert fake_hub.calls == []  # nothing uploaded, not even the repo created


def test_push_publishes_no_local_paths_and_leaves_the_local_adapter_alone(fake_hub, tmp_path):
    adapter = shutil.copytree(REPO_ADAPTERS / "sw", tmp_path / "sw")
    home = "/home/alice"
    meta = json.loads((adapter / "whisper_lora.json").read_text())
    meta["data"]["source"] = f"{home}/corpora/dvoice-sw"
    meta["base"]["name"] = f"{home}/.cache/whisper-lora/models/whisper-base"  # the offline conversion
    meta["training"] |= {"base": meta["base"]["name"], "cache_dir": f"{home}/.cache/enc", "note": "../../secret/x"}
    (adapter / "whisper_lora.json").write_text(json.dumps(meta))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = meta["base"]["name"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    local = {p.name: p.read_bytes() for p in adapter.iterdir()}
    push_adapter(adapter, "me/whisper-base-sw")
    up = fake_hub.uploaded
    assert sorted(up) == sorted(f for f in UPLOADED if f != ADDED_TOKENS_FILE)  # sw adds no language token
    for name, data in up.items():
        assert home.encode() not in data and b"secret" not in data, name
    published = json.loads(up["whisper_lora.json"])
    assert published["data"]["source"] == "<local>/dvoice-sw" and published["training"]["cache_dir"] == "<local>/enc"
    assert published["base"]["name"] == published["training"]["base"] == "openai/whisper-base"
    assert json.loads(up["adapter_config.json"])["base_model_name_or_path"] == "openai/whisper-base"
    assert "`<local>/dvoice-sw`" in up["README.md"].decode()
    assert up["adapter_model.safetensors"] == local["adapter_model.safetensors"]
    assert up["language_profile.safetensors"] == local["language_profile.safetensors"]
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == local  # the local files are as they were


def test_cli_adapters_push(fake_hub, tmp_path, capsys):
    from whisper_lora.cli import main

    adapter = shutil.copytree(REPO_ADAPTERS / "id", tmp_path / "id")
    assert main(["adapters", "push", str(adapter), "me/whisper-base-id"]) == 0
    assert "https://huggingface.co/me/whisper-base-id/commit/abc" in capsys.readouterr().out


def test_cards_parse_with_huggingface_hub():
    from huggingface_hub import ModelCard

    for lang in ("cs", "sw", "id"):
        card = ModelCard.load(REPO_ADAPTERS / lang / "README.md")
        meta = read_metadata(REPO_ADAPTERS / lang)
        results = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert results == {"wer": meta.metrics["adapter"]["wer"], "cer": meta.metrics["adapter"]["cer"]}
        assert card.data.base_model == "openai/whisper-base" and card.data.language == [meta.language]
        assert f'"language": "<|{meta.whisper_language}|>"' in card.text  # the pipeline snippet forces the token


def test_pipeline_forces_the_whisper_token_of_a_proxy_language(tiny_dir, tmp_path):
    """An ``ary`` (Darija) adapter decodes with Whisper's ``ar`` token through transformers.pipeline."""
    adapter = make_tiny_adapter(tiny_dir, tmp_path, "ary", seed=3)
    asr = asr_pipeline(adapter, base=str(tiny_dir), device="cpu")
    seen = {}
    generate = asr.model.generate

    def spy(*args, **kw):
        seen.update(kw)
        return generate(*args, **kw)

    asr.model.generate = spy
    asr(np.zeros(16000, dtype=np.float32) + 0.01, generate_kwargs={"max_new_tokens": 3})
    assert seen["language"] == "<|ar|>" and seen["task"] == "transcribe"


@pytest.mark.slow
def test_pipeline_with_the_shipped_czech_adapter_beats_the_base_on_real_czech(tmp_path):
    """PeftModel + processor + the language token through transformers.pipeline, on held-out real Czech lines."""
    import csv

    from whisper_lora.data.audio import load_audio
    from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest
    from whisper_lora.inference.scoring import score

    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, tmp_path / "manifest.csv")
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"][:12]
    audios = [load_audio(r["audio"]) for r in rows]
    adapted = asr_pipeline(REPO_ADAPTERS / "cs")
    assert adapted.model.__class__.__name__ == "WhisperForConditionalGeneration"  # merged: plain transformers
    hyps = [adapted(a.copy())["text"] for a in audios]
    base = pipeline_of_base()
    base_hyps = [base(a.copy(), generate_kwargs={"language": "cs", "task": "transcribe"})["text"] for a in audios]
    refs = [r["text"] for r in rows]
    assert score(refs, hyps, "cs").cer < score(refs, base_hyps, "cs").cer


def pipeline_of_base():
    from transformers import pipeline

    from whisper_lora.base.model import load_base_model

    loaded = load_base_model("whisper-base", "fp32", "cpu")
    return pipeline(
        "automatic-speech-recognition",
        model=loaded.model,
        tokenizer=loaded.processor.tokenizer,
        feature_extractor=loaded.processor.feature_extractor,
    )


def test_push_uploads_the_tokenizer_addition_of_a_new_token_adapter(fake_hub, tiny_dir, tmp_path):
    adapter = make_tiny_adapter(tiny_dir, tmp_path, "eo", seed=4, new_token=True)
    push_adapter(adapter, "me/whisper-tiny-eo")
    up = fake_hub.uploaded
    assert json.loads(up[ADDED_TOKENS_FILE]) == {"<|eo|>": 51865}
    assert "<|eo|>" in up["README.md"].decode() and "added_tokens.json" in up["README.md"].decode()
