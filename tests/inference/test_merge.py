import json

import pytest
import torch

from tests.conftest import REPO_ADAPTERS
from whisper_lora.base.model import load_base_model
from whisper_lora.errors import ConfigError
from whisper_lora.inference.merge import merge_adapter
from whisper_lora.inference.transcriber import Transcriber


def test_fp32_merge_matches_the_unmerged_adapter(tiny_dir, tiny_registry, tmp_path):
    report = merge_adapter(tiny_registry / "sw", tmp_path / "merged", base=str(tiny_dir), precision="fp32")
    assert report.max_logit_diff < 1e-3
    _loaded = load_base_model(str(tmp_path / "merged"), "fp32", "cpu")
    merged, processor = _loaded.model, _loaded.processor
    assert not any("lora" in n for n, _ in merged.named_parameters())
    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    audio = torch.randn(16000 * 3).numpy() * 0.1
    ids = merged.generate(input_features=t.features([audio]), language="sw", task="transcribe", max_new_tokens=8)
    assert processor.batch_decode(ids, skip_special_tokens=True)[0].strip() == t.transcribe(audio, "sw").text
    assert json.loads((tmp_path / "merged" / "whisper_lora_merge.json").read_text())["precision"] == "fp32"


def test_int8_merge_reports_its_rounding(tiny_dir, tiny_registry, tmp_path):
    fp = merge_adapter(tiny_registry / "cs", tmp_path / "fp", base=str(tiny_dir), precision="fp32")
    q = merge_adapter(tiny_registry / "cs", tmp_path / "q", base=str(tiny_dir), precision="int8")
    assert q.max_logit_diff > fp.max_logit_diff  # requantising the merged weights rounds
    with pytest.raises(ConfigError, match="valid: bf16, fp32, int8"):
        merge_adapter(tiny_registry / "cs", tmp_path / "x", base=str(tiny_dir), precision="nf4")


@pytest.mark.slow
def test_ctranslate2_export_transcribes_the_same(tmp_path):
    """Merge the shipped Swahili adapter into the real whisper-base, export with ctranslate2's converter."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from whisper_lora.data.synth import shipped_sentences, synthesize

    adapter = REPO_ADAPTERS / "sw"
    report = merge_adapter(adapter, tmp_path / "merged", ct2_out=tmp_path / "ct2")
    assert report.max_logit_diff < 1e-2
    _loaded = load_base_model(str(tmp_path / "merged"), "fp32", "cpu")
    merged, processor = _loaded.model, _loaded.processor
    clips = [synthesize(s, "sw", "f4") for s in shipped_sentences("sw", "test")[:3]]
    feats = processor.feature_extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
    ours = processor.batch_decode(
        merged.generate(input_features=feats, language="sw", task="transcribe"), skip_special_tokens=True
    )
    ct2 = ctranslate2.models.Whisper(report.ct2, device="cpu", compute_type="float32")
    prompt = ["<|startoftranscript|>", "<|sw|>", "<|transcribe|>", "<|notimestamps|>"]
    res = ct2.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt] * 3, beam_size=1)
    theirs = [processor.tokenizer.decode(r.sequences_ids[0]) for r in res]
    assert [t.strip() for t in ours] == [t.strip() for t in theirs]
