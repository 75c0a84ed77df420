"""estimate.py: the phases a run logs at its start, from the rates of the machine's CPU class."""

import torch
from pytest import approx

from whisper_lora.base.hardware import CpuInfo
from whisper_lora.training import estimate
from whisper_lora.training.estimate import RATES, WHISPER_BASE_PARAMS, describe, estimate_phases

AVX512 = CpuInfo("EPYC", 2, ("avx2", "avx512f", "avx512_bf16"), "AVX512")
AVX2 = CpuInfo("EPYC", 4, ("avx2",), "AVX2")
KW = dict(
    base_params=WHISPER_BASE_PARAMS,
    train_utterances=300,
    steps=150,
    batch_size=8,
    dev_scorings=3,
    dev_clips=16,
    test_clips=48,
    profile_utterances=96,
    cached_decoder_only=True,
)


def test_phases_follow_the_cpu_class_cores_and_budget(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(estimate, "cpu_info", lambda: AVX512)
    phases = {p.name: p.seconds for p in estimate_phases(cpu, **KW)}
    assert list(phases) == ["encoder cache", "training", "dev scoring", "test scoring", "language profile"]
    r = RATES["AVX512-BF16"]
    assert phases["training"] == approx(150 * 8 * r.step) and phases["encoder cache"] == approx(300 * r.encode)
    capped = {p.name: p.seconds for p in estimate_phases(cpu, **KW, max_minutes=0.5)}
    assert capped["training"] == approx(30)
    text = describe(estimate_phases(cpu, **KW), cpu)
    assert "AVX512-BF16" in text and "training: ~" in text and "(150 steps of 8)" in text
    monkeypatch.setattr(estimate, "cpu_info", lambda: AVX2)  # slower class, but twice the cores
    slow = {p.name: p.seconds for p in estimate_phases(cpu, **{**KW, "base_params": 2 * WHISPER_BASE_PARAMS})}
    assert slow["training"] == approx(150 * 8 * RATES["AVX2"].step)  # twice the parameters on twice the cores


def test_no_estimate_without_a_measured_rate(monkeypatch):
    monkeypatch.setattr(estimate, "cpu_info", lambda: AVX512)
    assert estimate_phases(torch.device("cuda"), **KW) is None
    assert estimate_phases(torch.device("cpu"), **{**KW, "cached_decoder_only": False}) is None
    monkeypatch.setattr(estimate, "cpu_info", lambda: CpuInfo("old", 2, (), "DEFAULT"))
    assert estimate_phases(torch.device("cpu"), **KW) is None
