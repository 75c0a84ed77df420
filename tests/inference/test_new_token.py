"""Adapters that add a language token Whisper lacks (``language_token: new``), served beside Whisper's own tokens."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.conftest import make_tiny_adapter
from whisper_lora.base.language_tokens import token_id
from whisper_lora.errors import ConfigError
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.adapter_io import ADDED_TOKENS_FILE, load_adapter, read_metadata

rng = np.random.default_rng(3)
AUDIO = [rng.standard_normal(16000 * s).astype(np.float32) * 0.1 for s in (2, 3, 4, 2, 3)]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_dir):
    """Two adapters that each add a token (``eo``, ``ga``: both trained at the same id) and one with Whisper's own."""
    root = tmp_path_factory.mktemp("new-token-registry")
    make_tiny_adapter(tiny_dir, root, "eo", seed=11, new_token=True)
    make_tiny_adapter(tiny_dir, root, "ga", seed=12, new_token=True)
    make_tiny_adapter(tiny_dir, root, "sw", seed=13)
    return root


def _transcriber(tiny_dir, registry, mode="routed"):
    return Transcriber(str(tiny_dir), adapters=registry, precision="fp32", device="cpu", mode=mode, max_new_tokens=6)


def test_the_adapter_saves_its_row_and_the_tokenizer_addition_not_the_embedding(registry, tiny_dir):
    eo = registry / "eo"
    meta = read_metadata(eo)
    assert meta.new_token == "eo" and meta.whisper_language == "eo"
    with safe_open(str(eo / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if "lora_" not in k}
    assert list(shapes.values()) == [(1, 64)], shapes  # one row of d_model: 256 bytes, no 51866 x 64 matrix
    assert json.loads((eo / ADDED_TOKENS_FILE).read_text()) == {"<|eo|>": 51865}
    # both were trained at id 51865: a process that loads both gives them different ids
    assert json.loads((registry / "ga" / ADDED_TOKENS_FILE).read_text()) == {"<|ga|>": 51865}


def test_two_new_tokens_and_own_tokens_in_one_mixed_batch_equal_isolated_runs(registry, tiny_dir):
    t = _transcriber(tiny_dir, registry)
    langs = ["eo", "ga", "sw", "fr", "eo"]
    mixed = t.transcribe_batch(AUDIO, langs)
    assert [m.adapter for m in mixed] == ["eo", "ga", "sw", None, "eo"]
    tok = t.processor.tokenizer
    ids = {c: token_id(tok, c) for c in ("eo", "ga")}
    assert sorted(ids.values()) == [51865, 51866]  # assigned by this process, no collision
    assert t.model.get_input_embeddings().weight.shape[0] == 51867
    alone = [_transcriber(tiny_dir, registry).transcribe(a, lang) for a, lang in zip(AUDIO, langs, strict=True)]
    assert [m.text for m in mixed] == [a.text for a in alone]
    # loaded in the other order the ids swap, and nothing else changes
    other = _transcriber(tiny_dir, registry)
    other.transcribe(AUDIO[1], "ga")
    assert token_id(other.processor.tokenizer, "ga") == 51865
    assert [m.text for m in other.transcribe_batch(AUDIO, langs)] == [m.text for m in mixed]


def test_the_trained_row_is_what_the_decoder_is_prompted_with(registry, tiny_dir):
    t = _transcriber(tiny_dir, registry)
    text = t.transcribe(AUDIO[0], "eo").text
    row = t.model.get_input_embeddings().weight[token_id(t.processor.tokenizer, "eo")]
    with safe_open(str(registry / "eo" / "adapter_model.safetensors"), "pt") as f:
        saved = next(f.get_tensor(k) for k in f.keys() if "trainable_tokens_delta" in k)[0]
    assert torch.equal(row, saved)
    with torch.no_grad():  # another row under <|eo|> gives another transcript: the token is really forced
        t.model.get_input_embeddings().weight[token_id(t.processor.tokenizer, "eo")] = row.flip(0) * 3
    assert t.transcribe(AUDIO[0], "eo").text != text


def test_a_base_row_is_untouched_by_added_tokens(registry, tiny_dir, tmp_path):
    plain = Transcriber(str(tiny_dir), adapters=tmp_path, precision="fp32", device="cpu", max_new_tokens=6)
    extended = _transcriber(tiny_dir, registry)
    extended.transcribe_batch(AUDIO[:2], ["eo", "ga"])  # both tokens added, rows set
    got = extended.transcribe_batch(AUDIO, "fr")
    want = plain.transcribe_batch(AUDIO, "fr")
    assert [g.text for g in got] == [w.text for w in want] and all(g.adapter is None for g in got)


def test_hotswap_equals_routed(registry, tiny_dir):
    langs = ["eo", "ga", "sw", "fr", "ga"]
    routed = _transcriber(tiny_dir, registry).transcribe_batch(AUDIO, langs)
    swap = _transcriber(tiny_dir, registry, mode="hotswap").transcribe_batch(AUDIO, langs)
    assert [r.text for r in routed] == [s.text for s in swap]


def test_loading_a_new_token_adapter_needs_the_tokenizer(registry, tiny_dir):
    from whisper_lora.base.model import load_base_model

    loaded = load_base_model(str(tiny_dir), "fp32", "cpu")
    with pytest.raises(ConfigError, match=r"adds the language token <\|eo\|>: load it with the base's tokenizer"):
        load_adapter(loaded.model, registry / "eo")
    model = load_adapter(loaded.model, registry / "eo", tokenizer=loaded.processor.tokenizer)
    assert token_id(loaded.processor.tokenizer, "eo") == 51865
    assert loaded.model.generation_config.lang_to_id["<|eo|>"] == 51865
    assert 51865 in loaded.model.generation_config.suppress_tokens  # never generated as text
    assert not any(p.requires_grad for p in model.parameters())


def test_a_language_without_token_or_adapter_is_refused_by_name(tiny_dir, registry):
    t = _transcriber(tiny_dir, registry)
    with pytest.raises(ConfigError, match=r"Whisper has no token for Guarani \(gn\)"):
        t.transcribe(AUDIO[0], "gn")


def test_merge_pipeline_card_and_ctranslate2_decode_the_new_token_as_the_transcriber(registry, tiny_dir, tmp_path):
    """Round trips of an adapter with a new token: a merged checkpoint carries the extended tokenizer and language
    table, ``asr_pipeline`` and the card's plain-peft code force ``<|eo|>``, CTranslate2 exports and decodes it."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_lora.inference.longform import DecodeOptions
    from whisper_lora.inference.merge import merge_adapter
    from whisper_lora.registry.card import usage_code
    from whisper_lora.registry.publish import asr_pipeline

    t = _transcriber(tiny_dir, registry)
    audio = AUDIO[2]
    greedy = DecodeOptions(compression_ratio_threshold=None)  # plain greedy, as generate and the pipeline decode
    want = t.transcribe(audio, "eo", options=greedy).text
    report = merge_adapter(registry / "eo", tmp_path / "merged", base=str(tiny_dir), ct2_out=tmp_path / "ct2")
    assert report.max_logit_diff < 1e-3
    merged = WhisperForConditionalGeneration.from_pretrained(tmp_path / "merged")
    processor = WhisperProcessor.from_pretrained(tmp_path / "merged")
    eo = processor.tokenizer.convert_tokens_to_ids("<|eo|>")
    assert eo == 51865 and merged.generation_config.lang_to_id["<|eo|>"] == eo
    feats = t.features([audio])
    ids = merged.generate(input_features=feats, language="<|eo|>", task="transcribe", max_new_tokens=6)
    assert processor.batch_decode(ids, skip_special_tokens=True)[0].strip() == want

    # the pipeline (its own feature pass, so compared by what it forces) and the card's plain-peft code
    asr = asr_pipeline(registry / "eo", base=str(tiny_dir), device="cpu")
    seen, generate = {}, asr.model.generate
    asr.model.generate = lambda *a, **kw: seen.update(kw) or generate(*a, **kw)
    asr(audio.copy(), generate_kwargs={"max_new_tokens": 6})
    assert seen["language"] == "<|eo|>" and asr.tokenizer.convert_tokens_to_ids("<|eo|>") == 51865
    scope: dict = {}
    exec(usage_code(read_metadata(registry / "eo"), str(tiny_dir), str(registry / "eo")), scope)
    ids = scope["model"].generate(input_features=feats, language="<|eo|>", task="transcribe", max_new_tokens=6)
    assert scope["processor"].batch_decode(ids, skip_special_tokens=True)[0].strip() == want

    # CTranslate2: the converter takes the token into the vocabulary and the language table; prompted with it, the
    # export's first token is transformers' (a random model: later steps differ, ct2 lets timestamps through)
    ctranslate2 = pytest.importorskip("ctranslate2")
    ct2_dir = tmp_path / "ct2"
    vocab = json.loads((ct2_dir / "vocabulary.json").read_text())
    assert vocab[eo] == "<|eo|>" and eo in json.loads((ct2_dir / "config.json").read_text())["lang_ids"]
    ct2 = ctranslate2.models.Whisper(report.ct2, device="cpu", compute_type="float32")
    prompt = ["<|startoftranscript|>", "<|eo|>", "<|transcribe|>", "<|notimestamps|>"]
    res = ct2.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt], beam_size=1, max_length=8)
    assert res[0].sequences_ids[0][:3] == [eo, *processor.tokenizer.convert_tokens_to_ids(prompt[2:])]
    first = next(i for i in ids[0].tolist() if i < processor.tokenizer.eos_token_id)
    assert res[0].sequences_ids[0][3] == first


def test_vllm_args_refuses_a_new_token_adapter_with_the_reason(registry):
    from whisper_lora.errors import AdapterError
    from whisper_lora.serving.vllm.export import vllm_modules

    with pytest.raises(AdapterError, match="it adds a language token"):
        vllm_modules(registry / "eo")


def test_the_base_decodes_a_new_token_language_with_the_adapters_proxy(registry, tiny_dir):
    """The base asked for Esperanto (``adapter=None``, the demo's side-by-side) has no ``<|eo|>`` of its own: it
    decodes with the proxy the ``eo`` adapter's row started from (``en`` here), exactly as the base in English."""
    t = _transcriber(tiny_dir, registry)
    got = t.transcribe(AUDIO[1], "eo", adapter=None)
    assert got.adapter is None and got.text == t.transcribe(AUDIO[1], "en", adapter=None).text


def test_a_proxy_picked_for_one_adapter_does_not_claim_that_language(tiny_dir, tmp_path):
    """An ``eo`` adapter decoded under ``<|es|>`` (detected) is not Spanish's adapter: ``language=es`` gets the base,
    while a table proxy (``ary`` under ``<|ar|>``) still serves Arabic requests, as before."""
    make_tiny_adapter(tiny_dir, tmp_path, "eo", seed=31, proxy="es")
    make_tiny_adapter(tiny_dir, tmp_path, "ary", seed=32)
    t = _transcriber(tiny_dir, tmp_path)
    assert t.registry.for_language("es") is None and t.registry.for_language("ar").name == "ary"
    assert t.transcribe(AUDIO[0], "es").adapter is None
    eo = t.transcribe(AUDIO[0], "eo")
    assert eo.adapter == "eo" and eo.text == t.transcribe(AUDIO[0], "es", adapter="eo").text
