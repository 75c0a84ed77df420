import torch

from tests.conftest import tiny_train_config
from whisper_lora.hardware import cpu_info
from whisper_lora.model import load_base_model
from whisper_lora.profile import activation_bytes, choose_profile, count_base_parameters
from whisper_lora.train import resolve_auto_settings

CPU = torch.device("cpu")
GIB = 2**30


def test_small_base_on_a_cpu_trains_in_fp32_without_checkpointing():
    p = choose_profile(CPU, 74_000_000, ram_bytes=24 * GIB)  # whisper-base on a 24 GB box
    assert (p.precision, p.gradient_checkpointing, p.batch_size) == ("fp32", False, 4)
    assert cpu_info().cpu_class in p.describe()  # says which CPU it decided for


def test_large_base_on_a_small_cpu_box_is_quantised_and_checkpointed():
    p = choose_profile(CPU, 1_550_000_000, ram_bytes=8 * GIB)  # large-v3 on 8 GB
    assert (p.precision, p.gradient_checkpointing) == ("int8", True)
    assert "int8" in p.describe() and "checkpointing on" in p.describe()


def test_parameter_count_comes_from_the_config_alone(tiny_dir):
    model = load_base_model(str(tiny_dir), "fp32", "cpu").model
    assert count_base_parameters(str(tiny_dir)) == sum(p.numel() for p in model.parameters())


def test_auto_settings_resolve_and_explicit_ones_stay(tiny_dir, sw_corpus, tmp_path, caplog):
    auto = tiny_train_config(
        tiny_dir, sw_corpus, tmp_path, precision="auto", gradient_checkpointing="auto", batch_size="auto"
    )
    with caplog.at_level("INFO", logger="whisper_lora"):
        got = resolve_auto_settings(auto, CPU, show=True)
    assert (got.precision, got.gradient_checkpointing, got.batch_size) == ("fp32", False, 4)
    assert "profile: precision fp32" in caplog.text
    explicit = tiny_train_config(tiny_dir, sw_corpus, tmp_path, precision="int8", gradient_checkpointing=True)
    assert resolve_auto_settings(explicit, CPU) is explicit


def test_little_ram_keeps_checkpointing_on_for_a_small_base():
    acts = activation_bytes(512, 6, 8)  # whisper-base, encoder adapted, batch 8: ~7.6 GB
    assert not choose_profile(CPU, 74_000_000, ram_bytes=24 * GIB, batch_activation_bytes=acts).gradient_checkpointing
    assert choose_profile(CPU, 74_000_000, ram_bytes=8 * GIB, batch_activation_bytes=acts).gradient_checkpointing
