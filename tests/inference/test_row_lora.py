"""Row-indexed LoRA (``row_lora.RowLoRA``): a batch over eight adapters of different ranks and target sets plus base
rows gives what peft's ``adapter_names`` gives and what each row gives alone (logits within rounding, texts equal),
on fp32 and int8 bases, greedy and beam search; the Transcriber's mixed batches take it; adapters it cannot stack
(DoRA) keep peft's path. The real whisper-base with the shipped adapters: tests/inference/test_row_lora_real.py."""

import pytest
import torch

from tests.conftest import make_tiny_adapter
from tests.inference.test_transcriber import AUDIO
from whisper_lora.base.model import load_base_model
from whisper_lora.inference import row_lora
from whisper_lora.inference.row_lora import RowLoRA
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.adapter_io import load_adapter
from whisper_lora.training.lora import LoraSpec

# eight adapters: ranks 2 to 16, targets from q/v alone to every projection and the FFN, one encoder-free
SPECS = {
    "sw": LoraSpec(r=2, alpha=4, targets=("q", "v")),
    "cs": LoraSpec(r=4, alpha=8, targets=("q", "k", "v", "out")),
    "id": LoraSpec(r=8, alpha=8, targets=("fc1", "fc2")),
    "fr": LoraSpec(r=16, alpha=16, targets=("q", "v", "fc1")),
    "de": LoraSpec(r=4, alpha=16, targets=("v",)),
    "es": LoraSpec(r=8, alpha=16, targets=("q", "v"), stacks=("decoder_self", "decoder_cross")),
    "pl": LoraSpec(r=2, alpha=2, targets=("k", "out", "fc2")),
    "nl": LoraSpec(r=16, alpha=32, targets=("q", "v"), layers=(0,)),
}
ROWS = [*SPECS, None]  # the last row: the base


@pytest.fixture(scope="module")
def eight(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eight")
    for seed, (lang, spec) in enumerate(SPECS.items()):
        make_tiny_adapter(tiny_dir, root, lang, 10 + seed, spec=spec)
    return root


def _peft(tiny_dir, root, precision):
    loaded = load_base_model(str(tiny_dir), "fp32" if precision == "fp64" else precision, "cpu")
    model = loaded.model
    for lang in SPECS:
        model = load_adapter(model, root / lang, adapter_name=lang)
    return (model.double() if precision == "fp64" else model).eval(), loaded.processor


def _inputs(processor, n):
    audio = [AUDIO[i % len(AUDIO)][: 16000 * (2 + i % 3)] for i in range(n)]
    feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    start = processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>"])
    ids = torch.tensor([start + [400 + 7 * i for i in range(5)]] * n)
    return feats, ids


# largest difference from peft's logits, relative to their largest: fp64 shows the computation is the same; in fp32
# the LoRA terms are summed in another order (in float64, ``RowLoRA.exact``), and the B weights of these random
# adapters, 40 times a trained adapter's, amplify that rounding through the layers; an int8 base quantises each
# layer's activations, so a rounding difference can move a value across a quantisation step
TOLERANCE = {"fp64": 1e-10, "fp32": 1e-3, "int8": 1e-2}


@pytest.mark.parametrize("precision", ["fp64", "fp32", "int8"])
def test_logits_equal_peft_adapter_names_and_each_row_alone(tiny_dir, eight, precision):
    peft, processor = _peft(tiny_dir, eight, precision)
    feats, ids = _inputs(processor, len(ROWS))
    feats = feats.double() if precision == "fp64" else feats
    with torch.no_grad():
        want = peft(input_features=feats, decoder_input_ids=ids, adapter_names=[n or "__base__" for n in ROWS]).logits
        rows = RowLoRA(peft)
        assert rows.supports(list(SPECS))
        with rows.rows(ROWS):
            got = peft(input_features=feats, decoder_input_ids=ids).logits
        alone = []
        for i, name in enumerate(ROWS):
            if name is None:
                with peft.disable_adapter():
                    alone.append(peft(input_features=feats[i : i + 1], decoder_input_ids=ids[i : i + 1]).logits[0])
            else:
                peft.set_adapter(name)
                alone.append(peft(input_features=feats[i : i + 1], decoder_input_ids=ids[i : i + 1]).logits[0])
    scale = want.abs().max()
    assert (got - want).abs().max() < TOLERANCE[precision] * scale, (got - want).abs().max() / scale
    # alone: int8 decides outlier columns over the whole batch, so peft's mixed batch differs from alone too
    alone_tolerance = 0.03 if precision == "int8" else TOLERANCE[precision]
    assert (got - torch.stack(alone)).abs().max() < alone_tolerance * scale
    # the adapters change outputs (the test would pass for zero adapters otherwise), each differently
    assert all((got[i] - got[-1]).abs().max() > 1e-3 * scale for i in range(len(SPECS)))
    # peft's own state is as it was: adapters enabled, no hook left
    peft.set_adapter("sw")
    with torch.no_grad():
        again = peft(input_features=feats[:1], decoder_input_ids=ids[:1]).logits[0]
    assert torch.allclose(again, alone[0])


@pytest.mark.parametrize("beams", [1, 2])
def test_mixed_batches_over_eight_adapters_give_each_rows_text_alone(tiny_dir, eight, beams, monkeypatch):
    t = Transcriber(
        str(tiny_dir), eight, precision="fp32", device="cpu", max_new_tokens=8, max_loaded=8, row_indexed=True
    )
    audio = [AUDIO[i % len(AUDIO)] for i in range(len(ROWS))]
    langs = [lang or "en" for lang in ROWS]

    def alone():
        return [
            t.transcribe(a, lang, adapter=name, num_beams=beams).text
            for a, lang, name in zip(audio, langs, ROWS, strict=True)
        ]

    def mixed():
        return [r.text for r in t.transcribe_batch(audio, langs, adapter=list(ROWS), num_beams=beams)]

    one_by_one = alone()
    used = []
    real_rows = row_lora.RowLoRA.rows
    monkeypatch.setattr(row_lora.RowLoRA, "rows", lambda self, names: used.append(names) or real_rows(self, names))
    assert mixed() == one_by_one
    # one call, every row with its own adapter (peft names carry the version): the row-indexed path
    assert [[n and n.split("@")[0] for n in names] for names in used if names] == [list(ROWS)]
    assert len(set(one_by_one)) > 3  # the adapters decode differently
    t._pool.row_indexed = False  # peft's layers (``adapter_names``): mixed equals alone there too
    assert mixed() == alone()


def test_a_dora_adapter_keeps_pefts_path(tiny_dir):
    from peft import LoraConfig, get_peft_model

    model = load_base_model(str(tiny_dir), "fp32", "cpu").model
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), adapter_name="plain")
    peft.add_adapter("dora", LoraConfig(r=2, target_modules=["q_proj", "v_proj"], use_dora=True))
    rows = RowLoRA(peft)
    assert rows.supports(["plain"]) and not rows.supports(["dora"]) and not rows.supports(["plain", "dora"])
