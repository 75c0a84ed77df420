"""What a training run will take on this machine, said when it starts (``whisper-lora train``).

Rates were measured with whisper-base on 2-core AMD EPYC CPUs of each class (the main job, first run, empty cache:
``docs/benchmarks.md``), and are scaled by the base's parameter count and the CPU's cores. They cover adapters that
leave the encoder untouched, whose encoder output training caches (the main job's shape); for another shape, or a
GPU, only the progress bars' ETAs are given. A rough guide, not a promise: a base that loops on the corpus decodes
longer, and other work on the machine slows everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from whisper_lora.base.hardware import cpu_info

WHISPER_BASE_PARAMS = 72_593_920
MEASURED_CORES = 2


@dataclass(frozen=True)
class Rates:
    """Seconds on a 2-core CPU of one class, whisper-base."""

    encode: float  # per training utterance: its pass through the encoder, into the cache
    step: float  # per utterance of a training step (decoder-only adapter, cached encoder output)
    score_base: float  # per clip scored with the base (synthetic Swahili: it loops on most clips)
    score_adapter: float  # per clip scored with an adapter (dev and test)
    profile: float  # per utterance of the language profile (one decoder step on cached states)


RATES = {  # measured: docs/benchmarks.md "The main job, first run"
    "AVX512-BF16": Rates(encode=0.30, step=0.09, score_base=1.65, score_adapter=0.3, profile=0.1),
    "AVX2": Rates(encode=0.5, step=0.15, score_base=2.3, score_adapter=0.35, profile=0.13),
}


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    detail: str


def rates_for(device: torch.device) -> tuple[str, Rates] | None:
    """The measured rates of this machine's CPU class; None on a GPU or an unmeasured class."""
    if device.type != "cpu":
        return None
    cls = cpu_info().cpu_class
    for name, rates in RATES.items():
        if cls.startswith(name):
            return name, rates
    return None


def estimate_phases(
    device: torch.device,
    base_params: int,
    train_utterances: int,
    steps: int,
    batch_size: int,
    dev_scorings: int,
    dev_clips: int,
    test_clips: int,
    profile_utterances: int,
    cached_decoder_only: bool,
    max_minutes: float | None = None,
) -> list[Phase] | None:
    """The phases of a run and their rough seconds on this machine; None where no rate was measured."""
    found = rates_for(device)
    if found is None or not cached_decoder_only:
        return None
    _, r = found
    scale = base_params / WHISPER_BASE_PARAMS * MEASURED_CORES / max(1, min(cpu_info().cores, 16))
    training = steps * batch_size * r.step
    if max_minutes:
        training = min(training, max_minutes * 60 / scale)
    phases = [
        Phase("encoder cache", train_utterances * r.encode, f"{train_utterances} utterances, once"),
        Phase(
            "training",
            training,
            f"{steps} steps of {batch_size}" + (f", at most {max_minutes} min" if max_minutes else ""),
        ),
        Phase("dev scoring", dev_scorings * dev_clips * r.score_adapter, f"{dev_scorings} x {dev_clips} clips"),
        Phase(
            "test scoring", test_clips * (r.score_base + r.score_adapter), f"base and adapter, {test_clips} clips each"
        ),
        Phase("language profile", profile_utterances * r.profile, f"{profile_utterances} utterances"),
    ]
    return [Phase(p.name, p.seconds * scale, p.detail) for p in phases if p.seconds > 0]


def describe(phases: list[Phase], device: torch.device) -> str:
    """One line per phase, and the total, for the log."""
    cls = rates_for(device)[0]
    lines = [f"{p.name}: ~{_minutes(p.seconds)} ({p.detail})" for p in phases]
    total = sum(p.seconds for p in phases)
    head = f"estimate on this machine (rates of a 2-core {cls} CPU, scaled to {cpu_info().cores} cores)"
    return f"{head}: ~{_minutes(total)} in all\n  " + "\n  ".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
