"""``eval --write-metadata`` writes scores only into the adapter whose weights it scored: an adapter replaced on
disk while it was being evaluated is refused (the scores are still printed), a rewritten card is not a change."""

import json

import pytest

from tests.conftest import make_tiny_adapter
from whisper_lora.cli import main
from whisper_lora.registry.adapter_io import read_metadata
from whisper_lora.registry.card import make_hub_ready


@pytest.mark.parametrize(
    ("meanwhile", "code"),
    [("nothing", 0), ("card rewritten", 0), ("retrained", 2)],
)
def test_eval_writes_the_scores_only_into_the_adapter_it_scored(
    tiny_dir, sw_corpus, tmp_path, monkeypatch, capsys, meanwhile, code
):
    from whisper_lora.inference import scoring

    monkeypatch.setenv("WHISPER_LORA_CACHE", str(tmp_path / "cache"))
    adapter = make_tiny_adapter(tiny_dir, tmp_path, "sw", seed=1)
    compare = scoring.compare_base_and_adapter

    def while_decoding(*args, **kw):  # what another process does to the adapter while eval decodes
        result = compare(*args, **kw)
        if meanwhile == "card rewritten":
            make_hub_ready(adapter)
        elif meanwhile == "retrained":
            make_tiny_adapter(tiny_dir, tmp_path, "sw", seed=2)
        return result

    monkeypatch.setattr(scoring, "compare_base_and_adapter", while_decoding)
    args = ["eval", "--language", "sw", "--data", str(sw_corpus), "--adapter", str(adapter), "--base", str(tiny_dir)]
    args += ["--precision", "fp32", "--device", "cpu", "--max-new-tokens", "4", "--limit", "2", "--json"]
    assert main([*args, "--no-cache", "--write-metadata", "-q"]) == code
    out, err = capsys.readouterr()
    scores = json.loads(out.strip().splitlines()[-1])  # shown either way
    metrics = read_metadata(adapter).metrics
    if code == 0:
        assert metrics["adapter"] == scores["adapter"] and metrics["base"] == scores["base"]
    else:
        assert "was replaced after its weights were loaded" in err and "evaluate it again" in err
        assert metrics == {}  # the retrained adapter's metadata is as it was saved
