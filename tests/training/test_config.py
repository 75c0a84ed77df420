from pathlib import Path

import pytest

from whisper_lora.errors import ConfigError
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.lora import LoraSpec

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "recipes" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_configs_are_valid(path):
    cfg = TrainConfig.from_yaml(path)
    assert (
        isinstance(cfg.lora, LoraSpec) and cfg.out_dir.parts[0] == "runs"
    )  # recipes never write into the tracked registry


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        TrainConfig(
            language="klingon",
            data="d",
            precision="int3",
            max_steps=0,
            learning_rate=-1,
            split_fractions=(0.6, 0.6),
            cache_precision="int4",
            mixed_precision="fp16",
            attention="sdpa",
            gradient_checkpointing="maybe",
            cache_storage="tape",
            batch_by_duration="yes",
            device="gpu",
        )
    msg = str(e.value)
    for part in (
        "unknown language 'klingon'",
        "precision='int3'; valid: auto, bf16, fp32, int8, nf4",
        "gradient_checkpointing='maybe'; valid: true, false, auto",
        "cache_storage='tape'; valid: disk, memory",
        "max_steps=0",
        "learning_rate=-1",
        "split_fractions",
        "cache_precision='int4'; valid: auto, base, bf16, fp32",
        "mixed_precision='fp16'; valid: auto, bf16, no",
        "attention='sdpa'; valid: auto, cudnn, efficient, flash, math, torch",
        "batch_by_duration='yes'; valid: true, false",
        "invalid device 'gpu'; valid: auto, cpu, cuda, cuda:N",  # not first found when the base is loaded
    ):
        assert part in msg


def test_unknown_yaml_keys_are_named(tmp_path):
    (tmp_path / "c.yaml").write_text("language: sw\ndata: d\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown training config keys \['learning_rat'\]"):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


# nothing at these paths: a check that needed the base or the corpus would fail on them instead
_NOWHERE = dict(language="sw", data="/nonexistent/corpus", base="/nonexistent/base")
_DECODER_ONLY = LoraSpec(stacks=("decoder_self", "decoder_cross"))


def test_trimming_or_masking_what_the_encoder_cache_serves_is_refused_by_the_config():
    with pytest.raises(ConfigError) as e:  # both problems in one error, before any base or corpus is read
        TrainConfig(**_NOWHERE, lora=_DECODER_ONLY, trim_padding=1.0, spec_augment=True)
    assert "set cache_encoder: false or trim_padding: null" in str(e.value)
    assert "set cache_encoder: false or spec_augment: false" in str(e.value)
    for frozen_bottom in (LoraSpec(encoder_top=0), LoraSpec(layers=(1, 2))):  # a frozen prefix on any base
        with pytest.raises(ConfigError, match="spec_augment: false"):
            TrainConfig(**_NOWHERE, lora=frozen_bottom, spec_augment=True)
    TrainConfig(**_NOWHERE, lora=_DECODER_ONLY, trim_padding=1.0, spec_augment=True, cache_encoder=False)
    TrainConfig(**_NOWHERE, trim_padding=1.0, spec_augment=True)  # every encoder layer adapted: nothing cached
    TrainConfig(**_NOWHERE, lora=_DECODER_ONLY)  # trim_padding auto: 30 s windows under a cache


def test_encoder_top_conflicts_depend_on_the_base_depth():
    cfg = TrainConfig(**_NOWHERE, lora=LoraSpec(encoder_top=2), spec_augment=True)  # valid until the depth is known
    cfg.check_base_depth(2)  # every encoder layer adapted: nothing cached
    with pytest.raises(ConfigError, match="set cache_encoder: false or spec_augment: false"):
        cfg.check_base_depth(4)  # the lower two cached


def test_scoring_caps_tokens_as_transcribe_does():
    from whisper_lora.inference.decode import MAX_NEW_TOKENS

    assert TrainConfig(**_NOWHERE).max_new_tokens == MAX_NEW_TOKENS
