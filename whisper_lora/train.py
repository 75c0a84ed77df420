"""Train one LoRA adapter for one language: seeded, resumable, runs under ``accelerate launch``."""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapter_io import AdapterMetadata, data_fingerprint, save_adapter
from .atomic import atomic_directory
from .config import TrainConfig
from .data.features import Example, collate, featurize
from .data.readers import load_corpus
from .encoder_cache import EncoderCache
from .errors import ConfigError, DataError
from .evaluate import compare_base_and_adapter, evaluate_examples
from .languages import resolve_language
from .lean_backward import make_backward_lean
from .lora import apply_lora, count_parameters
from .model import fast_bf16, load_base_model

CHECKPOINT_STATE = "trainer_state.pt"


@dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint."""

    step: int = 0
    best_cer: float = math.inf
    best_step: int = 0
    history: list[dict] = field(default_factory=list)  # {"step", "loss"} and {"step", "dev": {...}}


@dataclass
class TrainResult:
    """What ``train_adapter`` returns."""

    adapter_dir: Path
    metadata: AdapterMetadata
    state: TrainState


def _batches(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The example indices of a global step: a seeded permutation per epoch, no data leaks."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[pos * batch_size : (pos + 1) * batch_size]


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def prepare_data(
    cfg: TrainConfig, processor, progress: bool = True, splits: tuple[str, ...] = ("train", "dev", "test")
) -> dict[str, list[Example]]:
    """Read, check and featurise the given splits; fails with the bad-row report when too many are bad."""
    records, bad = load_corpus(cfg.data, cfg.language, cfg.data_format, cfg.split_fractions, cfg.seed)
    out = {}
    for name in splits:
        out[name], bad = featurize(records.get(name, []), processor, bad, progress=progress)
    bad.check(cfg.max_bad_fraction, f"corpus {cfg.data}")
    if bad.bad:
        print(f"[whisper-lora] skipped rows: {bad.summary()}")
    if "train" in splits and not out.get("train"):
        raise DataError(f"corpus {cfg.data} has no usable training utterances ({bad.summary()})")
    return out


def train_adapter(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[TrainState, object], None]] = (),
) -> TrainResult:
    """Train only the adapter, keep the best on dev CER, evaluate on test, save atomically.

    A checkpoint under ``<out>.checkpoint`` is written every ``checkpoint_every`` steps;
    ``resume=True`` continues from it and gives the same adapter as an uninterrupted run.
    ``callbacks`` are called after every optimizer step with the state and the (unwrapped) model.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out_dir = cfg.out_dir
    ckpt_dir = out_dir.with_name(f"{out_dir.name}.checkpoint")
    acc = Accelerator(cpu=cfg.device == "cpu")
    main = acc.is_main_process
    show = progress and main
    torch.manual_seed(cfg.seed)
    lang = resolve_language(cfg.language)

    model, processor = load_base_model(cfg.base, cfg.precision, device=acc.device)
    base_info = model.whisper_lora_base
    data = prepare_data(cfg, processor, progress=show)
    train, dev, test = data["train"], data.get("dev", []), data.get("test", [])
    dev = dev[: cfg.eval_samples] if cfg.eval_samples else dev

    torch.manual_seed(cfg.seed)  # adapter init does not depend on what loading consumed
    model = apply_lora(model, cfg.lora)
    if main:
        print(f"[whisper-lora] {count_parameters(model)}")
    if cfg.lean_backward:
        make_backward_lean(model)
    use_cache = cfg.cache_encoder and not cfg.lora.touches_encoder
    enc_cache = EncoderCache(model, train, cfg.cache_precision, base_info.path) if use_cache else None
    bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and fast_bf16(acc.device))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, cfg.warmup_steps, cfg.max_steps)
    state = TrainState()
    best = _trainable_state(model)
    if resume and (ckpt_dir / CHECKPOINT_STATE).exists():
        saved = torch.load(ckpt_dir / CHECKPOINT_STATE, weights_only=False)
        current = cfg.to_dict()
        if saved["config"] != current:
            diff = sorted(k for k in saved["config"] if saved["config"][k] != current.get(k))
            raise ConfigError(f"cannot resume from {ckpt_dir}: the config changed ({', '.join(diff)})")
        _load_trainable(model, saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        best, state = saved["best"], TrainState(**saved["state"])
        if main:
            print(f"[whisper-lora] resumed from {ckpt_dir} at step {state.step}")
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)

    def evaluate_dev() -> None:
        if main and dev:
            scores, _ = evaluate_examples(raw, processor, dev, lang.code, max_new_tokens=cfg.max_new_tokens)
            state.history.append({"step": state.step, "dev": scores.to_dict()})
            if scores.cer < state.best_cer:
                state.best_cer, state.best_step = scores.cer, state.step
                best.update(_trainable_state(raw))
            print(f"[whisper-lora] step {state.step}: dev WER {scores.wer:.3f} CER {scores.cer:.3f}")
        acc.wait_for_everyone()

    def checkpoint() -> None:
        if main:
            with atomic_directory(ckpt_dir) as tmp:
                torch.save(
                    {
                        "config": cfg.to_dict(),
                        "model": _trainable_state(raw),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "best": best,
                        "state": state.__dict__,
                    },
                    tmp / CHECKPOINT_STATE,
                )
        acc.wait_for_everyone()

    hidden_dtype = raw.get_base_model().dtype  # cached encoder outputs enter the decoder in its dtype
    started = time.monotonic()
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=f"train {lang.code}", disable=not show)
    while state.step < cfg.max_steps:
        if cfg.max_minutes and (time.monotonic() - started) / 60 > cfg.max_minutes:
            if main:
                print(f"[whisper-lora] time budget of {cfg.max_minutes} min spent at step {state.step}")
            break
        idx = _batches(len(train), cfg.batch_size, cfg.seed, state.step)[acc.process_index :: acc.num_processes]
        torch.manual_seed(cfg.seed * 1_000_003 + state.step)  # dropout masks depend on the step only
        batch = collate([train[i] for i in idx], features=enc_cache is None)
        labels = batch["labels"].to(acc.device)
        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=bf16):
            if enc_cache is not None:
                hidden = enc_cache.get(idx).to(hidden_dtype)
                loss = model(encoder_outputs=(hidden,), labels=labels).loss
            else:
                loss = model(input_features=batch["input_features"].to(acc.device), labels=labels).loss
        acc.backward(loss)
        acc.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        loss_value = acc.gather(loss.detach()[None]).mean().item()
        state.history.append({"step": state.step, "loss": round(loss_value, 4)})
        bar.update()
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            evaluate_dev()
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            checkpoint()
        for cb in callbacks:
            cb(state, raw)
    bar.close()
    if not state.history or "dev" not in state.history[-1]:
        evaluate_dev()
    if not dev:  # nothing to select on: keep the last weights
        best = _trainable_state(raw)
    _load_trainable(raw, best)

    metadata = AdapterMetadata(
        language=lang.code,
        whisper_language=lang.whisper,
        base={k: v for k, v in base_info.__dict__.items() if k != "path"},
        lora=cfg.lora.to_dict(),
        data={
            "fingerprint": data_fingerprint(train),
            "train_utterances": len(train),
            "train_seconds": round(sum(e.duration for e in train), 1),
            "source": str(cfg.data),
        },
        training={
            **{k: v for k, v in cfg.to_dict().items() if k not in ("lora", "data", "out")},
            "steps": state.step,
            "best_step": state.best_step,
            "processes": acc.num_processes,
            "minutes": round((time.monotonic() - started) / 60, 2),
            "cached_encoder": enc_cache.precision if enc_cache else None,
            "autocast_bf16": bf16,
        },
    )
    if main:
        if test and cfg.final_eval:
            metadata.metrics = {
                "split": "test",
                "n": len(test),
                **compare_base_and_adapter(raw, processor, test, lang.code, max_new_tokens=cfg.max_new_tokens),
            }
        metadata.metrics["dev_history"] = [h for h in state.history if "dev" in h]
        metadata.training["loss_history"] = [h["loss"] for h in state.history if "loss" in h]
        save_adapter(raw, out_dir, metadata)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    acc.wait_for_everyone()
    return TrainResult(out_dir, metadata, state)
