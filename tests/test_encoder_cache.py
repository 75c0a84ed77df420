import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_train_config, train_until
from whisper_lora.data.prepare import prepare_splits
from whisper_lora.encoder_cache import EncoderCache, resolve_cache_precision
from whisper_lora.errors import ConfigError
from whisper_lora.lora import LoraSpec, apply_lora
from whisper_lora.model import load_base_model
from whisper_lora.train import train_adapter

DECODER_ONLY = LoraSpec(r=4, alpha=8, dropout=0.1, stacks=("decoder_self", "decoder_cross"))


@pytest.fixture(scope="module")
def peft_tiny(tiny_dir, sw_corpus):
    _loaded = load_base_model(str(tiny_dir), "fp32", "cpu")
    model, processor = _loaded.model, _loaded.processor
    train = prepare_splits(sw_corpus, "sw", processor, splits=("train",), progress=False)["train"][:6]
    return apply_lora(model, DECODER_ONLY), train


def _reference(peft_model, examples):
    feats = torch.stack([e.input_features for e in examples])
    with torch.no_grad():
        return peft_model.get_base_model().model.encoder(feats).last_hidden_state


def test_cache_fills_lazily_and_matches_the_encoder(peft_tiny):
    model, train = peft_tiny
    cache = EncoderCache(model, train, "base")
    got = cache.get([4, 1])
    assert len(cache) == 2 and not cache.complete  # only what was asked for was encoded
    torch.testing.assert_close(got, _reference(model, [train[4], train[1]]), rtol=1e-5, atol=1e-5)
    assert torch.equal(cache.get([1])[0], got[1])  # cached, not recomputed
    cache.get(range(len(train)))
    assert cache.complete


def test_bf16_copy_is_close_to_fp32_and_freed_when_complete(peft_tiny, tiny_dir):
    model, train = peft_tiny
    cache = EncoderCache(model, train, "bf16", str(tiny_dir))
    got = cache.get([0, 3])
    assert cache.holds_encoder_copy
    assert got.dtype == torch.bfloat16
    ref = _reference(model, [train[0], train[3]])
    assert float((got.float() - ref).norm() / ref.norm()) < 0.02
    cache.get(range(len(train)))
    assert not cache.holds_encoder_copy  # the separate copy is gone; the outputs stay
    assert torch.equal(cache.get([0, 3]), got)


def test_cache_precision_choices(peft_tiny):
    with pytest.raises(ConfigError, match="int4.*valid: auto, base, bf16, fp32"):
        resolve_cache_precision("int4", torch.device("cpu"))
    assert resolve_cache_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    with pytest.raises(ConfigError, match="needs the base checkpoint"):
        EncoderCache(peft_tiny[0], peft_tiny[1], "fp32")


def _cfg(tiny_dir, corpus, out, **kw):
    base = dict(
        lora=DECODER_ONLY,
        max_steps=8,
        eval_every=0,
        checkpoint_every=2,
        seed=3,
        final_eval=False,
        cache_precision="base",  # exact comparisons; bf16 has its own test above
        mixed_precision="no",
    )
    return tiny_train_config(tiny_dir, corpus, out, **{**base, **kw})


def _adapter(result):
    return load_file(result.adapter_dir / "adapter_model.safetensors")


def test_cached_training_matches_uncached(tiny_dir, sw_corpus, tmp_path):
    cached = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "c", cache_encoder=True), progress=False)
    plain = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "p", cache_encoder=False), progress=False)
    a, b = _adapter(cached), _adapter(plain)
    assert cached.metadata.training["cached_encoder"] == "base" and not plain.metadata.training["cached_encoder"]
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_resume_in_a_later_epoch_refills_the_cache_identically(tiny_dir, sw_corpus, tmp_path):
    # 24 training utterances at batch 4: steps 6-7 are in the second epoch, after the checkpoint at step 6
    full = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "full"), progress=False)

    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "resumed")
    train_until(cfg, 7)
    resumed = train_adapter(cfg, resume=True, progress=False)
    a, b = _adapter(full), _adapter(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_trains_like_fp32(tiny_dir, sw_corpus, tmp_path):
    kw = dict(max_steps=3, checkpoint_every=0, cache_encoder=False)
    fp32 = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "a", **kw), progress=False)
    bf16 = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "b", mixed_precision="bf16", **kw), progress=False)
    assert bf16.metadata.training["autocast_bf16"] and not fp32.metadata.training["autocast_bf16"]
    la, lb = fp32.metadata.training["loss_history"], bf16.metadata.training["loss_history"]
    assert la[0] == pytest.approx(lb[0], rel=0.02)  # same weights at step 1: same loss up to bf16 rounding
    assert lb[-1] < lb[0]  # and it learns
