from dataclasses import replace

import torch

from tests.conftest import tiny_train_config
from whisper_lora.base.hardware import cpu_info
from whisper_lora.base.model import load_base_model
from whisper_lora.base.profile import activation_bytes, choose_profile, count_base_parameters
from whisper_lora.training.train import resolve_auto_settings

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
    assert (got.precision, got.gradient_checkpointing, got.batch_size) == ("fp32", False, 8)
    assert got.trim_padding == 1.0  # every encoder layer adapted: trained on trimmed input, cheap steps, batch 8
    assert "profile: precision fp32" in caplog.text and "encoder input trimmed to the audio + 1 s" in caplog.text
    windows = resolve_auto_settings(replace(auto, trim_padding=None), CPU)
    assert windows.batch_size == 4  # 30 s windows on a CPU: more updates per minute
    explicit = tiny_train_config(
        tiny_dir, sw_corpus, tmp_path, precision="int8", gradient_checkpointing=True, trim_padding=None
    )
    assert resolve_auto_settings(explicit, CPU) is explicit


def test_trim_padding_auto_follows_the_adapter_shape_and_the_cache(tiny_dir, sw_corpus, tmp_path):
    def trim(**kw):
        return resolve_auto_settings(tiny_train_config(tiny_dir, sw_corpus, tmp_path, **kw), CPU).trim_padding

    decoder_only = {"stacks": ["decoder_self", "decoder_cross"]}
    top1 = {"encoder_top": 1}
    assert trim(lora=decoder_only) is None  # the base encoder only knows 30 s windows
    assert trim(lora=top1) is None  # frozen lower layers come from the per-utterance cache
    assert trim(lora=top1, cache_encoder=False) == 1.0
    assert trim(lora=decoder_only, trim_padding="none") is None
    assert trim(trim_padding=2.5) == 2.5


def test_little_ram_keeps_checkpointing_on_for_a_small_base():
    acts = activation_bytes(512, 6, 8)  # whisper-base, encoder adapted, batch 8: ~7.6 GB
    assert not choose_profile(CPU, 74_000_000, ram_bytes=24 * GIB, batch_activation_bytes=acts).gradient_checkpointing
    assert choose_profile(CPU, 74_000_000, ram_bytes=8 * GIB, batch_activation_bytes=acts).gradient_checkpointing


def test_a_gpu_trains_in_bf16_wherever_it_fits(monkeypatch):
    """Issue 32's measurements: bf16 is faster than the int8 base and peaks lower, so every card that holds large-v3
    in bf16 with checkpointing (about 3.5 bytes per parameter measured, 4.5 asked) trains it so; smaller cards int8."""
    gpu = torch.device("cuda", 0)
    native = {"bf16": True}
    # as torch answers: yes with emulation, natively only where the GPU has bf16
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native["bf16"]
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    for gib, n_params, want in [
        (8, 1_550_000_000, ("bf16", True)),  # large-v3 on an 8 GB consumer card: 6.5 GiB + 1 for the context
        (24, 1_550_000_000, ("bf16", True)),
        (7, 1_550_000_000, ("int8", True)),
        (8, 769_000_000, ("bf16", True)),  # medium
        (6, 242_000_000, ("bf16", False)),  # small: no checkpointing, 16 bytes per parameter asked
        (4, 242_000_000, ("int8", True)),
    ]:
        props = type("Props", (), {"total_memory": gib * GIB})()
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, p=props: p)
        p = choose_profile(gpu, n_params)
        assert (p.precision, p.gradient_checkpointing) == want, (gib, n_params, p.describe())
        assert p.batch_size == 8 and f"the GPU's {gib}" in p.describe()
    native["bf16"] = False  # a T4 or V100: torch emulates bf16 there (slowly), and says so only when asked
    props = type("Props", (), {"total_memory": 16 * GIB})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, p=props: p)
    p = choose_profile(gpu, 1_550_000_000)  # large-v3 on a 16 GB T4: bitsandbytes int8, as T4 recipes do
    assert (p.precision, p.gradient_checkpointing) == ("int8", True) and "only emulates bf16" in p.describe()
    p = choose_profile(gpu, 74_000_000)  # whisper-base fits in fp32: no bitsandbytes, no recomputation
    assert (p.precision, p.gradient_checkpointing) == ("fp32", False) and "only emulates bf16" in p.describe()
