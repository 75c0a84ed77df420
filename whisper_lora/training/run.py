"""What a training run holds: its progress (``TrainState``, saved in every checkpoint), what its set-up built
(``Run``), and the trained weights read out of and put back into its model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from whisper_lora.data.features import Example
from whisper_lora.training.encoder_cache import EncoderCache
from whisper_lora.training.language_token import TokenChoice
from whisper_lora.training.schedule import BudgetSchedule


@dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint."""

    step: int = 0
    best_cer: float = math.inf
    best_step: int = 0
    history: list[dict] = field(default_factory=list)  # {"step", "loss"} and {"step", "dev": {...}}
    minutes: float = 0.0  # wall-clock training minutes spent (a resume continues the max_minutes budget)
    token: dict = field(default_factory=dict)  # the language token chosen at the start (TokenChoice), kept on resume


@dataclass(kw_only=True)
class Run:
    """Everything a training run sets up before its first step."""

    model: object  # the PeftModel being trained (accelerate-prepared)
    raw: object  # the same model unwrapped
    processor: object
    base_info: object  # BaseModelInfo
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    opt: torch.optim.Optimizer
    sched: object  # LambdaLR over ``schedule``
    schedule: BudgetSchedule
    params: list[torch.Tensor]
    enc_cache: EncoderCache | None
    bf16: bool  # autocast the forward
    hidden_dtype: torch.dtype  # cached encoder states enter the model in this dtype
    encoder: torch.nn.Module  # the (LoRA-injected) encoder of the model being trained
    durations: tuple[float, ...]  # of the training utterances, for the batch sampler
    token: TokenChoice  # the decoder's language token (its own, a proxy, or one the adapter adds)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A copy of the weights being trained (the adapter's), by parameter name."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    """Put weights from ``trainable_state`` back into ``model``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
