"""``whisper-lora train``: one language's adapter; every ``TrainConfig`` field is a flag (generated)."""

from __future__ import annotations

from whisper_lora.cli.options import RUN_PRECISIONS, add_dataclass_flags
from whisper_lora.cli.report import metrics_table
from whisper_lora.errors import WhisperLoraError

_LORA_PREFIX = "lora-"


def add_parser(sub) -> None:
    from whisper_lora.training.config import TrainConfig
    from whisper_lora.training.lora import LoraSpec

    t = sub.add_parser("train", help="train one language's adapter")
    t.add_argument("--config", help="YAML file mapping onto TrainConfig; flags override it")
    add_dataclass_flags(
        t,
        TrainConfig,
        skip=("lora",),
        help_overrides={
            "precision": f"base weights: {', '.join(RUN_PRECISIONS)} (default auto: chosen for the device)",
            "data": "corpus root (DVoice, Common Voice, audiofolder, save_to_disk) or a manifest file",
        },
    )
    add_dataclass_flags(t, LoraSpec, prefix=_LORA_PREFIX)
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out>.checkpoint (says what it found; an unusable checkpoint is an error; "
        "a finished run is left as it is)",
    )
    t.set_defaults(fn=run)


def train_config(a):
    """``TrainConfig`` from ``--config`` (if given) overridden by the flags that were given."""
    from dataclasses import fields

    from whisper_lora.training.config import TrainConfig
    from whisper_lora.training.lora import LoraSpec

    overrides = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name != "lora"}
    lora = {f.name: getattr(a, "lora_" + f.name) for f in fields(LoraSpec)}
    lora = {k: v for k, v in lora.items() if v is not None}
    if a.config:
        cfg = TrainConfig.from_yaml(a.config, **overrides)
        if lora:
            cfg.lora = LoraSpec.from_dict({**cfg.lora.to_dict(), **lora})
        return cfg
    missing = [k for k in ("language", "data") if not overrides[k]]
    if missing:
        raise WhisperLoraError(f"train needs --{' and --'.join(missing)} (or --config FILE)")
    kw = {k: v for k, v in overrides.items() if v is not None}
    if lora:
        kw["lora"] = LoraSpec(**lora)
    return TrainConfig(**kw)


def run(a) -> int:
    from whisper_lora.training.train import train_adapter

    cfg = train_config(a)
    result = train_adapter(cfg, resume=a.resume, progress=not a.quiet)
    t = result.metadata.training
    if result.already_finished:
        print(
            f"nothing to resume: the run finished ({t['steps']} steps) and its adapter is in {result.adapter_dir}, "
            "left as it is; run without --resume to train again from step 0"
        )
        return 0
    of = f" of {cfg.max_steps}" if cfg.max_steps else ""
    timed = cfg.max_minutes and (not cfg.max_steps or t["steps"] < cfg.max_steps)
    cut = f", stopped by the {cfg.max_minutes}-minute cap" if timed else ""
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from is not None else ""
    print(f"trained {t['steps']}{of} steps{resumed} in {t['minutes']} min{cut}; kept step {t['best_step']}")
    print(metrics_table(result.metadata.language, result.metadata.comparison))
    print(f"adapter written to {result.adapter_dir}")
    return 0
