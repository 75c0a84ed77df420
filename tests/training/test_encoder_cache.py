import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import fill_disk_halfway, tiny_train_config, train_until
from whisper_lora.base.model import load_base_model, load_whisper
from whisper_lora.data.audio import write_wav
from whisper_lora.data.features import Example
from whisper_lora.data.prepare import prepare_splits
from whisper_lora.errors import ConfigError, DiskFullError
from whisper_lora.training.encoder_cache import (
    STALE_TEMPORARY_SECONDS,
    DiskStore,
    EncoderCache,
    base_identity,
    encode_lower,
    encode_upper,
    encoder_precision,
    resolve_cache_precision,
)
from whisper_lora.training.lora import LoraSpec, apply_lora
from whisper_lora.training.train import train_adapter

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
    cache = EncoderCache(model, train, precision="base")
    got = cache.get([4, 1])
    assert len(cache) == 2 and not cache.complete  # only what was asked for was encoded
    torch.testing.assert_close(got, _reference(model, [train[4], train[1]]), rtol=1e-5, atol=1e-5)
    assert torch.equal(cache.get([1])[0], got[1])  # cached, not recomputed
    cache.get(range(len(train)))
    assert cache.complete


def test_bf16_copy_is_close_to_fp32_and_freed_when_complete(peft_tiny, tiny_dir):
    model, train = peft_tiny
    cache = EncoderCache(model, train, precision="bf16", base_path=str(tiny_dir))
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
        EncoderCache(peft_tiny[0], peft_tiny[1], precision="fp32")


def _cfg(tiny_dir, corpus, out, **kw):
    base = dict(
        lora=DECODER_ONLY,
        max_steps=8,
        eval_every=0,
        checkpoint_every=2,
        seed=3,
        final_eval=False,
        cache_precision="base",  # exact comparisons; bf16 has its own test above
        cache_storage="memory",
        mixed_precision="no",
        trim_padding=None,  # cached and uncached runs both see 30 s windows
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
    kw = dict(max_steps=3, checkpoint_every=0, cache_encoder=False, batch_size=24)  # the whole corpus every step
    fp32 = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "a", **kw), progress=False)
    bf16 = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "b", mixed_precision="bf16", **kw), progress=False)
    assert bf16.metadata.training["autocast_bf16"] and not fp32.metadata.training["autocast_bf16"]
    la, lb = fp32.metadata.training["loss_history"], bf16.metadata.training["loss_history"]
    assert la[0] == pytest.approx(lb[0], rel=0.02)  # same weights at step 1: same loss up to bf16 rounding
    assert lb[-1] < lb[0]  # and it learns (the same batch each step, so the loss is comparable)


TOP_LAYER = LoraSpec(r=4, alpha=8, dropout=0.1, encoder_top=1)  # tiny Whisper: encoder layer 1 + decoder


def test_lower_and_upper_passes_compose_to_the_encoder(peft_tiny):
    model, train = peft_tiny
    encoder = model.get_base_model().model.encoder
    feats = torch.stack([train[0].input_features, train[1].input_features])
    with torch.no_grad():
        full = encoder(feats, output_hidden_states=True)
        lower = encode_lower(encoder, feats, 1)
        torch.testing.assert_close(lower, full.hidden_states[1])  # the input of layer 1
        torch.testing.assert_close(encode_upper(encoder, lower, 1), full.last_hidden_state)
        torch.testing.assert_close(encode_lower(encoder, feats, None), full.last_hidden_state)


def test_top_layer_adapters_train_on_cached_lower_states_like_uncached(tiny_dir, sw_corpus, tmp_path):
    kw = dict(lora=TOP_LAYER, max_steps=6)
    cached = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "c", **kw), progress=False)
    plain = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "p", cache_encoder=False, **kw), progress=False)
    # the separate fp32 encoder copy (which keeps only the frozen layer) gives the same states as the base's own
    copy = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "f", cache_precision="fp32", **kw), progress=False)
    assert cached.metadata.training["cached_encoder_layers"] == 1
    assert copy.metadata.training["loss_history"] == pytest.approx(cached.metadata.training["loss_history"], rel=1e-4)
    a, b = _adapter(cached), _adapter(plain)
    enc = [k for k in a if "encoder.layers.1" in k and "lora_B" in k]
    assert enc and all(float(a[k].abs().sum()) > 0 for k in enc)  # the encoder adapter learned
    assert not any("encoder.layers.0." in k for k in a)  # the frozen layer has none
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_disk_cache_is_reused_by_a_second_run(tiny_dir, sw_corpus, tmp_path):
    kw = dict(lora=TOP_LAYER, max_steps=7, cache_storage="disk", cache_dir=str(tmp_path / "store"))
    first = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "a", **kw), progress=False)
    second = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "b", **kw), progress=False)
    n_train = first.metadata.data["train_utterances"]
    assert first.metadata.training["cache_encoded"] == n_train  # 7 steps x 4 > 24: every utterance once
    assert second.metadata.training["cache_encoded"] == 0  # nothing re-encoded
    files = list((tmp_path / "store").rglob("*.npy"))
    assert len(files) == n_train and {f.parent.name for f in files} == {"L1-fp32-fp16"}  # computed in fp32
    a, b = _adapter(first), _adapter(second)
    assert all(torch.equal(a[k], b[k]) for k in a)  # first use and reuse see the same stored numbers


def test_disk_store_keeps_16_bit_values(tmp_path):
    x = torch.randn(1500, 64) * 30
    fp16 = DiskStore(tmp_path / "h", torch.float32)
    got = fp16.get("k") if fp16.put("k", x) is not None else None
    assert got.dtype == torch.float16 and float((got.float() - x).norm() / x.norm()) < 1e-3
    bf16 = DiskStore(tmp_path / "b", torch.bfloat16)
    xb = x.to(torch.bfloat16)
    assert torch.equal(bf16.put("k", xb), xb) and torch.equal(bf16.get("k"), xb)  # lossless
    (tmp_path / "h" / "bad.npy").write_bytes(b"truncated")
    assert fp16.get("bad") is None  # a damaged entry is recomputed, not trusted


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_disk_cache_memory_does_not_grow_with_the_corpus(peft_tiny, tmp_path):
    """Thousands of distinct utterances: RSS stays flat with the disk store (RAM would need ~370 MB)."""
    model, train = peft_tiny
    fe = train[0].feature_extractor
    rng = np.random.default_rng(0)
    clips = []
    for i in range(1200):
        path = tmp_path / "wav" / f"{i}.wav"
        path.parent.mkdir(exist_ok=True)
        write_wav(path, rng.uniform(-0.3, 0.3, 4000).astype(np.float32))
        clips.append(Example(str(i), "x", "sw", str(path), [1], 0.25, fe))
    cache = EncoderCache(model, clips, precision="base", storage="disk", root=tmp_path / "s", fingerprint="f")
    cache.get(range(100))  # warm-up: allocator pools, first mappings
    before = _rss_mb()
    for start in range(100, len(clips), 50):
        cache.get(range(start, start + 50))
    grown = _rss_mb() - before
    per_state = 1500 * 64 * 4 / 2**20
    assert cache.complete and cache.encoded == len(clips)
    assert grown < 0.1 * per_state * len(clips), f"RSS grew {grown:.0f} MB over {len(clips)} utterances"


def test_cached_training_under_bf16_autocast(tiny_dir, sw_corpus, tmp_path):
    """Features are computed lazily inside the autocast step: they must stay fp32 (the main job's settings)."""
    kw = dict(max_steps=2, checkpoint_every=0, mixed_precision="bf16", cache_precision="fp32", cache_storage="disk")
    result = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "a", **kw), progress=False)
    assert result.metadata.training["autocast_bf16"] and result.metadata.training["cache_encoded"] == 8
    assert all(np.isfinite(result.metadata.training["loss_history"]))


def test_the_disk_cache_key_names_the_weights_and_the_precision_of_the_states(peft_tiny, tiny_dir, tmp_path):
    model, train = peft_tiny
    kw = dict(storage="disk", root=tmp_path, fingerprint="f")
    assert EncoderCache(model, train, precision="base", **kw).store.dir == tmp_path / "f" / "L2-fp32-fp16"
    bf16 = EncoderCache(model, train, precision="bf16", base_path=str(tiny_dir), **kw)
    assert bf16.store.dir == tmp_path / "f" / "L2-bf16-bf16"  # computed in bf16, kept bit for bit
    assert encoder_precision(load_whisper(str(tiny_dir), "int8", "cpu").model.encoder) == "int8"


def test_a_hub_base_is_keyed_by_its_commit(peft_tiny, tmp_path):
    assert base_identity("0123abcd", "openai/whisper-base", None) == "0123abcd"  # local files: their fingerprint
    assert base_identity("unknown", "openai/whisper-base", "a1b2c3") == "hub-openai--whisper-base-a1b2c3"
    with pytest.raises(ConfigError, match="no hub commit; set cache_storage: memory"):
        base_identity("unknown", "openai/whisper-base", None)
    model, train = peft_tiny
    config = model.get_base_model().config
    config._commit_hash = "c0ffee"  # what transformers records for a checkpoint loaded from the hub
    try:
        cache = EncoderCache(model, train, storage="disk", root=tmp_path, fingerprint="unknown")
    finally:
        config._commit_hash = None
    assert cache.store.dir.parent.name.startswith("hub-") and cache.store.dir.parent.name.endswith("-c0ffee")


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_entry(peft_tiny, tmp_path, monkeypatch):
    model, train = peft_tiny
    cache = EncoderCache(model, train, storage="disk", root=tmp_path, fingerprint="f")
    cache.get([0])
    fill_disk_halfway(monkeypatch)
    with pytest.raises(DiskFullError, match=f"encoder cache: no space left in {cache.store.dir} ") as e:
        cache.get([1])
    assert f"The {len(train) - 1} training utterances not cached yet need about" in str(e.value)
    assert "cache_storage: memory" in str(e.value)
    monkeypatch.undo()
    entries = list(cache.store.dir.iterdir())
    assert len(entries) == 1 and DiskStore(cache.store.dir, torch.float32).get(entries[0].stem) is not None


def test_temporaries_of_killed_runs_are_deleted(tmp_path):
    store = tmp_path / "L2-fp32-fp16"
    store.mkdir()
    old, fresh = store / ".k1.npy.abc123", store / ".k2.npy.def456"  # atomic_write_bytes' temporary names
    old.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    long_ago = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    DiskStore(store, torch.float32)
    assert sorted(p.name for p in store.iterdir()) == [fresh.name]  # a live run's temporary is left alone
