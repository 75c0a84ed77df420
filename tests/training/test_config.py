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
            gradient_checkpointing="maybe",
            cache_storage="tape",
            batch_by_duration="yes",
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
        "batch_by_duration='yes'; valid: true, false",
    ):
        assert part in msg


def test_unknown_yaml_keys_are_named(tmp_path):
    (tmp_path / "c.yaml").write_text("language: sw\ndata: d\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown training config keys \['learning_rat'\]"):
        TrainConfig.from_yaml(tmp_path / "c.yaml")
