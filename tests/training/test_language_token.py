"""Training for a language Whisper lacks: a proxy token (given, from the table, or found by Whisper's language ID)
or a new token trained with the adapter."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_train_config, train_until
from whisper_lora.base.model import load_base_model
from whisper_lora.errors import ConfigError
from whisper_lora.registry.adapter_io import ADDED_TOKENS_FILE, read_metadata
from whisper_lora.training.language_token import DETECT_CLIPS
from whisper_lora.training.lora import LoraSpec
from whisper_lora.training.train import train_adapter

_CFG = dict(language="eo", lora=LoraSpec(r=4, alpha=8, dropout=0.1), max_steps=4, eval_every=2, seed=5)


@pytest.fixture(scope="module")
def new_token(tiny_dir, sw_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("new-token") / "eo"
    return train_adapter(tiny_train_config(tiny_dir, sw_corpus, out, language_token="new", proxy="es", **_CFG))


def test_a_new_token_is_added_started_from_the_proxy_and_trained(new_token, tiny_dir):
    meta = read_metadata(new_token.adapter_dir)
    assert (meta.language, meta.whisper_language, meta.new_token) == ("eo", "eo", "eo")
    assert meta.language_token == {"mode": "new", "proxy": "es", "proxy_source": "config"}
    weights = load_file(new_token.adapter_dir / "adapter_model.safetensors")
    rows = [v for k, v in weights.items() if "trainable_tokens_delta" in k]
    assert len(rows) == 1 and rows[0].shape == (1, 64)  # the row, never the embedding matrix
    assert not any(v.shape[0] >= 51865 for v in weights.values())
    assert json.loads((new_token.adapter_dir / ADDED_TOKENS_FILE).read_text()) == {"<|eo|>": 51865}
    base = load_base_model(str(tiny_dir), "fp32", "cpu")
    proxy_row = base.model.get_input_embeddings().weight[base.processor.tokenizer.convert_tokens_to_ids("<|es|>")]
    assert not torch.allclose(rows[0][0], proxy_row)  # trained away from where it started


def test_scores_stored_by_training_are_what_eval_gives_after_reloading(new_token, tiny_dir, sw_corpus, capsys):
    """Saved, reloaded (the token added again, its row put back) and decoded with ``<|eo|>`` forced: ``eval`` gives
    the scores training stored, clip for clip."""
    from whisper_lora.cli import main

    meta = read_metadata(new_token.adapter_dir)
    args = ["eval", "--language", "eo", "--data", str(sw_corpus), "--base", str(tiny_dir), "--max-new-tokens", "4"]
    assert main([*args, "--adapter", str(new_token.adapter_dir), "--json", "--no-cache"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["adapter"] == meta.metrics["adapter"] and out["base"] == meta.metrics["base"]
    # the base's scores are the untouched base's: decoded with the proxy, not with the trained row of <|eo|>
    from whisper_lora.data.prepare import prepare_splits
    from whisper_lora.inference.decode import Decoding
    from whisper_lora.inference.scoring import evaluate_examples

    base = load_base_model(str(tiny_dir), "int8", "cpu", int8_threshold=0.0)
    test = prepare_splits(str(sw_corpus), "eo", base.processor, splits=("test",), token="es")["test"]
    scores, _ = evaluate_examples(
        base.model, base.processor, test, "eo", decoding=Decoding(max_new_tokens=4), token="es"
    )
    assert scores.to_dict() == meta.metrics["base"]


def test_a_proxy_is_found_by_whispers_language_id_when_none_is_known(tiny_dir, sw_corpus, tmp_path):
    cfg = tiny_train_config(tiny_dir, sw_corpus, tmp_path / "eo", final_eval=False, **{**_CFG, "max_steps": 1})
    meta = read_metadata(train_adapter(cfg, progress=False).adapter_dir)
    record = meta.language_token
    assert record["mode"] == "proxy" and record["proxy_source"] == "detected"
    votes = record["detected"]
    assert sum(votes.values()) == min(DETECT_CLIPS, 24)  # the corpus's 24 training clips, at most 32 asked
    assert meta.whisper_language == record["proxy"] == max(votes, key=votes.get)
    assert meta.new_token is None and not (tmp_path / "eo" / ADDED_TOKENS_FILE).exists()
    weights = load_file(tmp_path / "eo" / "adapter_model.safetensors")
    assert all("lora_" in k for k in weights)


def test_a_resumed_new_token_run_equals_an_uninterrupted_one(new_token, tiny_dir, sw_corpus, tmp_path):
    cfg = tiny_train_config(tiny_dir, sw_corpus, tmp_path / "eo", language_token="new", proxy="es", **_CFG)
    train_until(cfg, 2)
    resumed = train_adapter(cfg, resume=True, progress=False)
    a = load_file(new_token.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(language="sw", language_token="new"), r"language_token: new: Swahili \(sw\) has Whisper's own token"),
        (dict(language="sw", proxy="en"), r"proxy='en': Swahili \(sw\) has Whisper's own token"),
        (dict(language="gn", proxy="eo"), r"proxy='eo': a proxy must be a language Whisper has a token for"),
        (dict(language="gn", language_token="fresh"), r"language_token='fresh'; valid: new, proxy"),
    ],
)
def test_token_settings_are_validated(tiny_dir, sw_corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_train_config(tiny_dir, sw_corpus, tmp_path / "x", **overrides)
