import pytest
from transformers import WhisperForConditionalGeneration

from whisper_lora.errors import ConfigError
from whisper_lora.training.lora import LoraSpec, apply_lora, count_parameters


@pytest.mark.parametrize(
    "spec, n_modules",
    [
        (LoraSpec(r=4, alpha=8), 2 * (2 + 2 + 2)),  # q, v on all three stacks of 2 layers
        (LoraSpec(r=8, alpha=16, targets=("q", "k", "v", "out"), stacks=("decoder_self", "decoder_cross")), 4 * 4),
        (LoraSpec(r=2, alpha=4, targets=("q", "fc1", "fc2"), stacks=("encoder_self",)), 3 * 2),
        (LoraSpec(r=4, alpha=8, layers=(1,)), 2 * 3),
        (  # the vLLM-servable shape: no LoRA on the cross-attention k/v that read encoder frames
            LoraSpec(
                r=4,
                alpha=8,
                targets=("q", "k", "v", "out"),
                stacks=("decoder_self", "decoder_cross"),
                cross_targets=("q", "out"),
            ),
            2 * (4 + 2),
        ),
    ],
)
def test_trainable_counts_match_the_spec(tiny_dir, spec, n_modules):
    model = apply_lora(WhisperForConditionalGeneration.from_pretrained(tiny_dir), spec)
    counts = count_parameters(model)
    d, ffn = 64, 128
    per = {"q": d + d, "k": d + d, "v": d + d, "out": d + d, "fc1": d + ffn, "fc2": ffn + d}
    expected = 0
    mods = [n for n, _ in model.named_modules() if n.endswith("lora_A.default")]
    for n in mods:
        proj = n.split(".")[-3]
        key = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "out"}.get(proj, proj)
        expected += spec.r * per[key]
    assert counts.adapter_modules == n_modules == len(mods)
    assert counts.trainable == expected
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_spec_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        LoraSpec(r=0, dropout=1.5, targets=("q", "gate"), stacks=("encoder_cross",))
    msg = str(e.value)
    for part in ("r=0", "dropout=1.5", "valid targets are fc1, fc2, k, out, q, v", "valid stacks are decoder_cross"):
        assert part in msg


def test_peft_task_type_stays_unset():
    cfg = LoraSpec().peft_config(2, 2)
    assert cfg.task_type is None
    assert "model.decoder.layers.1.encoder_attn.v_proj" in cfg.target_modules


def test_encoder_top_adapts_only_the_upper_encoder_layers():
    spec = LoraSpec(targets=("q", "v"), encoder_top=2)
    names = spec.target_modules(encoder_layers=6, decoder_layers=6)
    enc = sorted({int(n.split(".")[3]) for n in names if ".encoder." in n})
    assert enc == [4, 5] and spec.frozen_encoder_layers(6) == 4
    assert sum(".decoder." in n for n in names) == 6 * 2 * 2  # decoder self + cross, q and v, untouched
    assert LoraSpec().frozen_encoder_layers(6) == 0  # default: every encoder layer adapted, nothing to cache
    decoder_only = LoraSpec(stacks=("decoder_self", "decoder_cross"))
    assert decoder_only.frozen_encoder_layers(6) == 6 and not decoder_only.touches_encoder
    assert LoraSpec(encoder_top=0).frozen_encoder_layers(6) == 6
    with pytest.raises(ConfigError, match="encoder_top=-1"):
        LoraSpec(encoder_top=-1)


def test_cross_targets_choose_the_cross_attention_projections_alone():
    spec = LoraSpec(targets=("q", "v"), stacks=("decoder_self", "decoder_cross"), cross_targets=("q", "out"))
    names = spec.target_modules(encoder_layers=2, decoder_layers=1)
    assert names == [
        "model.decoder.layers.0.encoder_attn.out_proj",
        "model.decoder.layers.0.encoder_attn.q_proj",
        "model.decoder.layers.0.self_attn.q_proj",
        "model.decoder.layers.0.self_attn.v_proj",
    ]
    assert LoraSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match=r"cross_targets=\['fc1'\]: valid cross-attention targets are k, out, q, v"):
        LoraSpec(cross_targets=("fc1",))
