import logging
from pathlib import Path

import pytest
import torch

from whisper_lora.base.model import load_base_model, pick_device
from whisper_lora.base.resolve import resolve_base
from whisper_lora.data.features import collate, featurize
from whisper_lora.data.readers import load_corpus
from whisper_lora.errors import ConfigError, ModelNotFoundError
from whisper_lora.training.lora import LoraSpec, apply_lora


def test_int8_load_and_one_training_step(tiny_dir, sw_corpus, caplog):
    import bitsandbytes as bnb

    _loaded = load_base_model(str(tiny_dir), "int8", device="cpu")
    model, processor = _loaded.model, _loaded.processor
    assert isinstance(model.model.encoder.layers[0].self_attn.q_proj, bnb.nn.Linear8bitLt)
    assert model.model.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    model = apply_lora(model, LoraSpec(r=4, alpha=8))
    frozen = model.get_base_model().model.encoder.layers[0].self_attn.q_proj.base_layer.weight.clone()
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    splits, _ = load_corpus(sw_corpus, "sw")
    examples, _ = featurize(splits["train"][:2], processor)
    batch = collate(examples)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    with caplog.at_level(logging.WARNING):
        loss = model(**batch).loss
        loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not any("inputs will be cast" in r.getMessage() for r in caplog.records)  # bnb spam silenced
    changed = [n for n, p in model.named_parameters() if n in lora_b and not torch.equal(p, lora_b[n])]
    assert len(changed) == len(lora_b)  # every adapter moved
    assert torch.equal(model.get_base_model().model.encoder.layers[0].self_attn.q_proj.base_layer.weight, frozen)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "nf4"])
def test_other_precisions_generate(tiny_dir, precision):
    _loaded = load_base_model(str(tiny_dir), precision, device="cpu")
    model = _loaded.model
    feats = torch.zeros(1, 80, 3000, dtype=next(model.parameters()).dtype if precision != "nf4" else torch.float32)
    out = model.generate(input_features=feats, language="sw", task="transcribe", max_new_tokens=3)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 3
    q = model.model.decoder.layers[0].self_attn.q_proj
    expected = {"fp32": "Linear", "bf16": "Linear", "nf4": "Linear4bit"}[precision]
    assert type(q).__name__ == expected
    assert (q.weight.dtype == torch.bfloat16) == (precision == "bf16")
    assert _loaded.info.precision == precision


def test_bad_precision_device_and_name():
    with pytest.raises(ConfigError, match="valid: bf16, fp32, int8, nf4"):
        load_base_model("whisper-base", "int4")
    with pytest.raises(ConfigError, match="valid: auto, cpu"):
        pick_device("gpu0")
    with pytest.raises(ModelNotFoundError, match="short names: whisper-base"):
        resolve_base("whisper-huge-v9")
    assert pick_device("auto").type in ("cpu", "cuda")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_quantised_model_lets_go_of_the_checkpoint_file(tiny_dir, precision):
    import gc

    gc.collect()
    checkpoint = str((tiny_dir / "model.safetensors").resolve())
    assert checkpoint not in Path("/proc/self/maps").read_text()  # nothing else here maps it
    model = load_base_model(str(tiny_dir), precision, "cpu").model
    gc.collect()
    assert checkpoint not in Path("/proc/self/maps").read_text()  # no view of the mapped file is left
    ref = load_base_model(str(tiny_dir), "fp32", "cpu").model
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight  # still tied
    torch.testing.assert_close(model.model.decoder.embed_tokens.weight, ref.model.decoder.embed_tokens.weight)
