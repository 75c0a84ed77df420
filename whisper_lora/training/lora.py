"""LoRA specification and injection into Whisper's attention layers (through peft)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

from whisper_lora.errors import ConfigError, format_choices

Target = Literal["q", "k", "v", "out", "fc1", "fc2"]
Stack = Literal["encoder_self", "decoder_self", "decoder_cross"]
TARGETS: tuple[str, ...] = get_args(Target)
STACKS: tuple[str, ...] = get_args(Stack)

_PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj", "fc1": "fc1", "fc2": "fc2"}
# module path pattern of each stack's attention, and the layer prefix its FFN lives under
_STACK_ATTN = {
    "encoder_self": ("model.encoder.layers", "self_attn"),
    "decoder_self": ("model.decoder.layers", "self_attn"),
    "decoder_cross": ("model.decoder.layers", "encoder_attn"),
}


@dataclass(frozen=True)
class LoraSpec:
    """Which Whisper projections get LoRA adapters, and their shape."""

    r: int = 32  # adapter rank
    alpha: int = 64  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input
    targets: tuple[str, ...] = ("q", "v")  # projections: q, k, v, out; fc1/fc2 (FFN) optional
    stacks: tuple[str, ...] = STACKS  # encoder_self, decoder_self, decoder_cross
    layers: tuple[int, ...] | None = None  # restrict to these layer indices (None = all)
    encoder_top: int | None = None  # adapt only the top K encoder layers (None = all); the frozen rest is cached
    cross_targets: tuple[str, ...] | None = None  # projections in decoder_cross (None = same as targets)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "stacks", tuple(self.stacks))
        if self.cross_targets is not None:
            object.__setattr__(self, "cross_targets", tuple(self.cross_targets))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        problems = []
        if not isinstance(self.r, int) or self.r < 1:
            problems.append(f"r={self.r!r} must be a positive integer")
        if not self.alpha or self.alpha <= 0:
            problems.append(f"alpha={self.alpha!r} must be positive")
        if not 0.0 <= float(self.dropout) < 1.0:
            problems.append(f"dropout={self.dropout!r} must be in [0, 1)")
        bad_t = [t for t in self.targets if t not in TARGETS]
        if bad_t or not self.targets:
            problems.append(f"targets={list(self.targets)!r}: valid targets are {format_choices(TARGETS)}")
        if self.cross_targets is not None:
            bad_c = [t for t in self.cross_targets if t not in TARGETS or t in ("fc1", "fc2")]
            if bad_c or not self.cross_targets:
                problems.append(
                    f"cross_targets={list(self.cross_targets)!r}: valid cross-attention targets are "
                    f"{format_choices(('q', 'k', 'v', 'out'))} (None = the same as targets)"
                )
        if self.encoder_top is not None and (not isinstance(self.encoder_top, int) or self.encoder_top < 0):
            problems.append(f"encoder_top={self.encoder_top!r} must be a non-negative integer (None = all layers)")
        bad_s = [s for s in self.stacks if s not in STACKS]
        if bad_s or not self.stacks:
            problems.append(f"stacks={list(self.stacks)!r}: valid stacks are {format_choices(STACKS)}")
        if problems:
            raise ConfigError("invalid LoRA spec: " + "; ".join(problems))

    @property
    def touches_encoder(self) -> bool:
        """True when some adapter sits in the encoder (encoder outputs then depend on it)."""
        return "encoder_self" in self.stacks and self.encoder_top != 0

    def _adapted_encoder_layers(self, encoder_layers: int) -> list[int]:
        if "encoder_self" not in self.stacks:
            return []
        low = 0 if self.encoder_top is None else max(0, encoder_layers - self.encoder_top)
        return [i for i in range(low, encoder_layers) if self.layers is None or i in self.layers]

    def frozen_encoder_layers(self, encoder_layers: int) -> int:
        """How many encoder layers from the bottom carry no adapter: their output never changes in training.

        Equal to ``encoder_layers`` when the encoder is not adapted at all.
        """
        adapted = self._adapted_encoder_layers(encoder_layers)
        return min(adapted) if adapted else encoder_layers

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoraSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown LoRA spec keys {sorted(unknown)}; valid: {format_choices(known)}")
        return cls(**d)

    def target_modules(self, encoder_layers: int, decoder_layers: int) -> list[str]:
        """Full module names (peft ``target_modules``) selected by this spec."""
        names = []
        for stack in self.stacks:
            prefix, attn = _STACK_ATTN[stack]
            if stack == "encoder_self":
                indices = self._adapted_encoder_layers(encoder_layers)
            else:
                indices = [i for i in range(decoder_layers) if self.layers is None or i in self.layers]
            targets = self.cross_targets if stack == "decoder_cross" and self.cross_targets else self.targets
            for i in indices:
                for t in targets:
                    if t in ("fc1", "fc2"):
                        if stack != "decoder_cross":  # FFN belongs to the layer, count it once
                            names.append(f"{prefix}.{i}.{_PROJ[t]}")
                    else:
                        names.append(f"{prefix}.{i}.{attn}.{_PROJ[t]}")
        return sorted(set(names))

    def peft_config(self, encoder_layers: int, decoder_layers: int, token_ids: Sequence[int] = ()):
        """The peft ``LoraConfig`` (``task_type`` deliberately unset for Whisper); ``token_ids``: embedding rows trained
        with the adapter (peft's trainable tokens; a language token the adapter adds, ``language_token.py``)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules(encoder_layers, decoder_layers),
            bias="none",
            trainable_token_indices={"embed_tokens": list(token_ids)} if token_ids else None,
        )


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts after LoRA injection."""

    trainable: int
    total: int
    adapter_modules: int = 0

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable:,} of {self.total:,} parameters ({self.fraction:.2%}) "
            f"in {self.adapter_modules} LoRA modules"
        )


def count_parameters(model) -> ParamCounts:
    """Trainable and total parameters (int8/nf4 weights counted by their logical size)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    modules = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A.default"))
    return ParamCounts(trainable, total, modules)


def apply_lora(model, spec: LoraSpec, adapter_name: str = "default", token_ids: Sequence[int] = ()):
    """Inject LoRA adapters with peft; only adapter parameters (and the rows of ``token_ids``) stay trainable."""
    from peft import get_peft_model

    cfg = model.config
    peft_model = get_peft_model(
        model, spec.peft_config(cfg.encoder_layers, cfg.decoder_layers, token_ids), adapter_name=adapter_name
    )
    for name, p in peft_model.named_parameters():
        p.requires_grad = "lora_" in name or "trainable_tokens_delta" in name
    return peft_model
