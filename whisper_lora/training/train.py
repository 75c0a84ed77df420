"""Train one LoRA adapter for one language: seeded, resumable, runs under ``accelerate launch``.

The set-up, the step, the checkpoints and the loop; what the run reports (scores, metadata) is report.py's."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from whisper_lora.atomic import recover, remove_directory
from whisper_lora.base.attention import attention_backends
from whisper_lora.base.hardware import device_summary, fast_bf16
from whisper_lora.base.language_tokens import token_id
from whisper_lora.base.model import load_base_model
from whisper_lora.base.profile import (
    activation_bytes,
    choose_profile,
    choose_trim_padding,
    count_base_parameters,
    default_batch_size,
)
from whisper_lora.base.resolve import resolve_base
from whisper_lora.base.trim import allow_short_inputs
from whisper_lora.data.features import collate
from whisper_lora.data.perturb import perturbed_copies
from whisper_lora.data.prepare import prepare_splits, train_audio_paths
from whisper_lora.data.sampler import batch_indices
from whisper_lora.errors import ConfigError
from whisper_lora.languages import resolve_language
from whisper_lora.registry.adapter_io import AdapterMetadata, save_adapter
from whisper_lora.training.checkpoint import (
    Checkpoint,
    checkpoint_dir,
    config_changes,
    finished_run,
    lock_output,
    read_checkpoint,
    restore_optimizer,
    saved_choices,
    write_checkpoint,
)
from whisper_lora.training.config import AUTO_SETTINGS, TrainConfig
from whisper_lora.training.encoder_cache import EncoderCache, encode_upper
from whisper_lora.training.estimate import describe, estimate_phases
from whisper_lora.training.language_token import choose_token
from whisper_lora.training.lean_backward import make_backward_lean
from whisper_lora.training.lora import apply_lora, count_parameters
from whisper_lora.training.prefetch import Prefetcher
from whisper_lora.training.report import Scorer, adapter_metadata, language_profile, score_dev, score_test
from whisper_lora.training.run import Run, TrainState, load_trainable, trainable_state
from whisper_lora.training.schedule import BudgetSchedule

LOSS_SYNC_EVERY = 10  # steps whose losses an accelerator's host reads at once (``loss_sync_every``)

log = logging.getLogger("whisper_lora")


@dataclass
class TrainResult:
    """What ``train_adapter`` returns."""

    adapter_dir: Path
    metadata: AdapterMetadata
    state: TrainState
    resumed_from: int | None = None  # the checkpoint's step when the run resumed from one
    already_finished: bool = False  # resumed a run that had finished: nothing was trained or written


def resolve_auto_settings(cfg: TrainConfig, device: torch.device, show: bool = False) -> TrainConfig:
    """``cfg`` with its ``auto`` settings (precision, checkpointing, batch size, trimming) chosen by the device's
    profile and the adapter's shape."""
    auto = [k for k in AUTO_SETTINGS if k != "trim_padding" and getattr(cfg, k) == "auto"]
    if not auto and cfg.trim_padding != "auto":
        return cfg
    from transformers import WhisperConfig

    path = resolve_base(cfg.base)
    wc = WhisperConfig.from_pretrained(path)
    if cfg.trim_padding == "auto":
        trim, why = choose_trim_padding(cfg.lora, wc.encoder_layers, cfg.cache_encoder)
        cfg = replace(cfg, trim_padding=trim)
        if show:
            log.info("profile: %s", why)
    if not auto:
        return cfg
    trimmed = cfg.trim_padding is not None
    batch = cfg.batch_size if cfg.batch_size != "auto" else default_batch_size(device, trimmed)
    acts = activation_bytes(wc.d_model, wc.encoder_layers, batch) if cfg.lora.touches_encoder else 0.0
    profile = choose_profile(device, count_base_parameters(path), batch_activation_bytes=acts, trimmed=trimmed)
    if show:
        log.info("profile: %s", profile.describe())
    return replace(cfg, **{k: getattr(profile, k) for k in auto})


def _check_base_depth(cfg: TrainConfig) -> None:
    """``TrainConfig``'s check that needs the base's encoder depth, which ``lora.encoder_top`` makes matter (every
    other spec is checked by the config alone); reads the base's config.json, not its weights."""
    if cfg.lora.encoder_top:
        from transformers import WhisperConfig

        cfg.check_base_depth(WhisperConfig.from_pretrained(resolve_base(cfg.base)).encoder_layers)


def _set_up(cfg: TrainConfig, acc, show: bool, token: dict | None = None) -> Run:
    """Load the base, featurise the corpus, inject LoRA, build the optimizer; ``token``: the language token a
    resumed run chose (``TrainState.token``), kept as it was."""
    if show:
        log.info("device: %s", device_summary(acc.device))
    torch.manual_seed(cfg.seed)
    base = load_base_model(cfg.base, cfg.precision, device=acc.device)
    clips = lambda: train_audio_paths(cfg.data, cfg.language, cfg.data_format, cfg.split_fractions, cfg.seed)  # noqa: E731
    token = choose_token(cfg, base.model, base.processor, clips, token)
    data = prepare_splits(
        cfg.data,
        cfg.language,
        base.processor,
        data_format=cfg.data_format,
        split_fractions=cfg.split_fractions,
        seed=cfg.seed,
        max_bad_fraction=cfg.max_bad_fraction,
        progress=show,
        timestamp_share=cfg.timestamp_share,
        token=token.token,
    )
    extra = perturbed_copies(data["train"], cfg.speed_perturb, cfg.noise_snr_db)
    if extra:
        if show:
            log.info("augmentation: %d perturbed copies added to %d training clips", len(extra), len(data["train"]))
        data["train"] = data["train"] + extra
    torch.manual_seed(cfg.seed)  # adapter init does not depend on what loading consumed
    new_ids = [token_id(base.processor.tokenizer, token.token)] if token.mode == "new" else []
    model = apply_lora(base.model, cfg.lora, token_ids=new_ids)
    if show:
        log.info("%s", count_parameters(model))
    if cfg.lean_backward:
        make_backward_lean(model)
    frozen = cfg.lora.frozen_encoder_layers(base.model.config.encoder_layers)
    # trimmed and masked inputs, which a cache of frozen layers cannot serve (TrainConfig refuses that)
    if cfg.trim_padding is not None:
        allow_short_inputs(model)
    if cfg.spec_augment:
        base.model.config.apply_spec_augment = True  # transformers masks input features in training mode only
    enc_cache = None
    if cfg.cache_encoder and frozen > 0:
        enc_cache = EncoderCache(
            model,
            data["train"],
            frozen,
            cfg.cache_precision,
            base.info.path,
            storage=cfg.cache_storage,
            root=cfg.cache_dir,
            fingerprint=base.info.fingerprint,
        )
        if show:
            where = enc_cache.store.dir if cfg.cache_storage == "disk" else "memory"
            log.info(
                "encoder cache: states after %d frozen encoder layers (%s) in %s", frozen, enc_cache.precision, where
            )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    rows = [p for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens_delta" in n]
    lora = [p for p in params if all(p is not r for r in rows)]
    groups = [{"params": lora}, *([{"params": rows, "weight_decay": 0.0}] if rows else [])]  # a token row: no decay
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = BudgetSchedule(cfg.warmup_steps, cfg.max_steps, cfg.max_minutes, cfg.lr_decay)
    return Run(
        model=model,
        raw=model,
        processor=base.processor,
        base_info=base.info,
        train=data["train"],
        dev=data["dev"][: cfg.eval_samples] if cfg.eval_samples else data["dev"],
        test=data["test"],
        opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        schedule=schedule,
        params=params,
        enc_cache=enc_cache,
        bf16=cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and fast_bf16(acc.device)),
        hidden_dtype=model.get_base_model().dtype,
        encoder=model.get_base_model().model.encoder,
        durations=tuple(e.duration for e in data["train"]),
        token=token,
    )


def _keep_saved_choices(cfg: TrainConfig, main: bool) -> TrainConfig:
    """``cfg`` with each ``auto`` setting the resumed run resolved (``checkpoint.saved_choices``) set as it did."""
    kept = {k: v for k, v in saved_choices(cfg.out_dir).items() if getattr(cfg, k) == "auto"}
    if not kept:
        return cfg
    try:
        kept_cfg = replace(cfg, **kept)
    except ConfigError:  # the saved choices do not fit the config as it is now: the comparison names what changed
        return cfg
    if main:
        log.info("resume: auto settings as the run chose them: %s", ", ".join(f"{k} {v}" for k, v in kept.items()))
    return kept_cfg


def _checkpoint_to_resume(cfg: TrainConfig, ckpt_dir: Path, resume: bool, main: bool) -> Checkpoint | None:
    """The checkpoint to continue from, read before the set-up so that a bad one fails fast; says what it found.

    None (step 0) without ``resume`` or when there is no checkpoint; a changed config raises ``ConfigError`` and
    an unusable checkpoint ``CheckpointError``: a run asked to resume never starts again silently."""
    if not resume:
        if main and os.path.lexists(ckpt_dir):
            log.warning("%s holds a checkpoint; starting at step 0 without --resume (resume=True)", ckpt_dir)
        return None
    saved = read_checkpoint(ckpt_dir)
    if saved is None:
        if main:
            log.warning("resume: no checkpoint at %s; starting at step 0", ckpt_dir)
        return None
    changed = config_changes(saved.config, cfg.to_dict())
    if changed:
        raise ConfigError(f"cannot resume from {ckpt_dir}: the config changed ({', '.join(changed)})")
    return saved


def _already_finished(cfg: TrainConfig, metadata: AdapterMetadata, main: bool) -> TrainResult:
    """``--resume`` of a run that finished: its adapter, left as it is."""
    t = metadata.training
    state = TrainState(step=int(t.get("steps", 0)), best_step=int(t.get("best_step", 0)), minutes=t.get("minutes", 0.0))
    if main:
        log.warning(
            "resume: the run finished (%d steps) and its adapter is in %s: nothing to resume, nothing written; "
            "run without --resume to train again from step 0",
            state.step,
            cfg.out_dir,
        )
    return TrainResult(cfg.out_dir, metadata, state, already_finished=True)


def _restore(run: Run, saved: Checkpoint) -> tuple[TrainState, dict]:
    """Put the checkpoint's weights, optimizer and scheduler state into the run: (state, best weights)."""
    load_trainable(run.raw, saved.model)
    restore_optimizer(run.opt, saved.optimizer)
    run.sched.load_state_dict(saved.scheduler)
    return TrainState(**saved.state), saved.best


def _save_checkpoint(run: Run, cfg: TrainConfig, ckpt_dir: Path, state: TrainState, best: dict) -> None:
    """Write everything a resume needs, atomically (checkpoint.py)."""
    model = trainable_state(run.raw)
    write_checkpoint(
        ckpt_dir,
        Checkpoint(cfg.to_dict(), dict(state.__dict__), model, best, run.opt.state_dict(), run.sched.state_dict()),
    )


def prefetches(device: torch.device) -> bool:
    """Whether batches are prepared ahead on a background thread (``prefetch.py``): on accelerators, where the host
    is otherwise idle while the device computes; a CPU step already uses every core."""
    return device.type != "cpu"


def loss_sync_every(device: torch.device) -> int:
    """Steps between two reads of the loss on the host: reading it waits for the device to finish the step, so on an
    accelerator the losses of several steps are read at once (a CPU has nothing to wait for)."""
    return 1 if device.type == "cpu" else LOSS_SYNC_EVERY


def _make_batch(run: Run, cfg: TrainConfig, acc, step: int) -> tuple[list[int], dict[str, torch.Tensor]]:
    """This process's share of the global batch of ``step``: its indices and collated tensors (pinned on CUDA)."""
    idx = batch_indices(run.durations, cfg.batch_size, cfg.seed, step, cfg.batch_by_duration)
    idx = idx[acc.process_index :: acc.num_processes]
    batch = collate([run.train[i] for i in idx], features=run.enc_cache is None, trim_padding=cfg.trim_padding)
    if acc.device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return idx, batch


def _train_step(run: Run, cfg: TrainConfig, acc, step: int, made: tuple[list[int], dict]) -> torch.Tensor:
    """One optimizer step on ``made`` (``_make_batch`` of ``step``); returns the loss averaged over processes, on the
    device (read it on the host when needed: ``loss_sync_every``)."""
    idx, batch = made
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks depend on the step only
    if cfg.spec_augment:
        np.random.seed((cfg.seed * 1_000_003 + step) % 2**32)  # and so do SpecAugment's (drawn with numpy)
    labels = batch["labels"].to(acc.device, non_blocking=True)
    # frozen states come from the cache at its own precision, outside the step's autocast
    cached = run.enc_cache.get(idx).to(run.hidden_dtype) if run.enc_cache is not None else None
    with attention_backends(cfg.attention, acc.device):  # the backward too: checkpointing re-runs the forward there
        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=run.bf16):
            if cached is not None:
                hidden = encode_upper(run.encoder, cached, run.enc_cache.frozen_layers)  # the adapted top layers
                loss = run.model(encoder_outputs=(hidden,), labels=labels).loss
            else:
                loss = run.model(
                    input_features=batch["input_features"].to(acc.device, non_blocking=True), labels=labels
                ).loss
        acc.backward(loss)
    acc.clip_grad_norm_(run.params, cfg.max_grad_norm)
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    return acc.gather(loss.detach()[None]).mean()


def _minutes_since(started: float, acc) -> float:
    """Wall-clock minutes since ``started``, the main process's value on every process (so that all processes
    stop at the same step and use the same learning rate)."""
    minutes = (time.monotonic() - started) / 60
    if acc.num_processes == 1:
        return minutes
    from accelerate.utils import broadcast

    return float(broadcast(torch.tensor([minutes], dtype=torch.float64, device=acc.device), from_process=0)[0])


def train_adapter(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[TrainState, object], None]] = (),
) -> TrainResult:
    """Train only the adapter, keep the best on dev CER, evaluate on test, save atomically.

    A checkpoint under ``<out>.checkpoint`` is written every ``checkpoint_every`` steps;
    ``resume=True`` continues from it and gives the same adapter as an uninterrupted run.
    ``callbacks`` are called after every optimizer step with the state and the (unwrapped) model;
    one that returns True ends training there (the best adapter so far is then scored and saved). The state's
    history holds the losses read so far: every step's on a CPU; on an accelerator they are read every
    ``LOSS_SYNC_EVERY`` steps (and before each dev score and checkpoint), and the next batch is prepared while a step
    runs (``prefetch.py``): the host does not make the device wait.
    The run holds ``<out>.lock``: a second run on the same ``out`` raises ``LockedError``. What a
    killed run left (an interrupted adapter or checkpoint write) is recovered first (atomic.py).
    """
    from accelerate import Accelerator

    _check_base_depth(cfg)  # before anything is locked or loaded
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    acc = Accelerator(cpu=cfg.device == "cpu")
    lock = lock_output(cfg.out_dir) if acc.is_main_process else None
    try:
        if lock is not None:  # before any process reads them
            recover(cfg.out_dir)
            recover(checkpoint_dir(cfg.out_dir))
        acc.wait_for_everyone()
        return _train(cfg, acc, resume, progress, callbacks)
    finally:
        if lock is not None:
            lock.release()


def say_estimate(run: Run, cfg: TrainConfig, device: torch.device, done_steps: int) -> None:
    """Log roughly how long each phase of this run will take here (``estimate.py``), when rates are known."""
    from whisper_lora.registry.language_profile import MAX_UTTERANCES

    steps = (cfg.max_steps or 0) - done_steps
    phases = estimate_phases(
        device,
        sum(p.numel() for p in run.raw.get_base_model().parameters()),
        len(run.enc_cache.examples) - len(run.enc_cache) if run.enc_cache is not None else 0,
        steps,
        cfg.batch_size,
        (steps // cfg.eval_every if cfg.eval_every else 0) + (1 if not cfg.eval_every or steps % cfg.eval_every else 0),
        len(run.dev),
        len(run.test) if cfg.final_eval else 0,
        min(MAX_UTTERANCES, sum(e.perturbation is None for e in run.train)) if cfg.language_profile else 0,
        cached_decoder_only=run.enc_cache is not None and run.enc_cache.holds_output,
        max_minutes=cfg.max_minutes,
    )
    if phases:
        log.info("%s", describe(phases, device))


def _train(cfg: TrainConfig, acc, resume: bool, progress: bool, callbacks) -> TrainResult:
    """``train_adapter`` once the output is locked and recovered."""
    from tqdm.auto import tqdm

    ckpt_dir = checkpoint_dir(cfg.out_dir)
    main = acc.is_main_process
    lang = resolve_language(cfg.language).code
    if resume:
        cfg = _keep_saved_choices(cfg, main)
    cfg = resolve_auto_settings(cfg, acc.device, show=progress and main)

    # set up (and resume)
    finished = finished_run(cfg.out_dir, cfg.to_dict()) if resume else None
    if finished is not None:
        return _already_finished(cfg, finished, main)
    saved = _checkpoint_to_resume(cfg, ckpt_dir, resume, main)
    run = _set_up(cfg, acc, show=progress and main, token=saved.state.get("token") if saved else None)
    state, best = _restore(run, saved) if saved else (TrainState(), trainable_state(run.raw))
    state.token = asdict(run.token)
    resumed_from = state.step if saved else None
    if saved and main:
        log.info("resumed from %s at step %d", ckpt_dir, state.step)
    run.model, run.opt = acc.prepare(run.model, run.opt)
    run.raw = acc.unwrap_model(run.model)
    scorer = Scorer(run, cfg, acc.device) if main and (run.dev or (run.test and cfg.final_eval)) else None
    if progress and main:
        say_estimate(run, cfg, acc.device, state.step)

    def evaluate_dev() -> None:
        if main and run.dev:
            score_dev(run, cfg, lang, state, best, scorer)
        acc.wait_for_everyone()

    # training loop
    started = time.monotonic() - state.minutes * 60  # a resumed run continues its budget
    run.model.train()
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=f"train {lang}", disable=not (progress and main))
    pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, loss still on the device)

    def read_losses() -> None:
        """The pending losses into the history, read on the host with one synchronisation."""
        if pending:
            values = torch.stack([loss for _, _, loss in pending]).tolist()
            for (step, lr, _), value in zip(pending, values, strict=True):
                state.history.append({"step": step, "loss": round(value, 4), "lr": lr})
            bar.set_postfix(loss=f"{values[-1]:.3f}")
            pending.clear()

    sync_every = loss_sync_every(acc.device)
    make = lambda step: _make_batch(run, cfg, acc, step)  # noqa: E731
    with Prefetcher(make) if prefetches(acc.device) else contextlib.nullcontext() as prefetcher:
        while cfg.max_steps is None or state.step < cfg.max_steps:
            state.minutes = run.schedule.minutes = _minutes_since(started, acc)
            if cfg.max_minutes and state.minutes > cfg.max_minutes:
                if main:
                    if cfg.max_steps:  # the steps were meant to end it: say that the clock did
                        log.warning(
                            "time budget of %s min spent at step %d of %d", cfg.max_minutes, state.step, cfg.max_steps
                        )
                    else:
                        log.info("time budget of %s min spent at step %d", cfg.max_minutes, state.step)
                break
            lr = run.opt.param_groups[0]["lr"]  # the rate this step uses
            made = prefetcher.get(state.step) if prefetcher is not None else make(state.step)
            pending.append((state.step + 1, lr, _train_step(run, cfg, acc, state.step, made)))
            state.step += 1
            bar.update()
            due_eval = cfg.eval_every and state.step % cfg.eval_every == 0
            due_checkpoint = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
            if state.step % sync_every == 0 or due_eval or due_checkpoint:
                read_losses()  # the history is complete before a dev score or a checkpoint is added to it
            if due_eval:
                evaluate_dev()
            if due_checkpoint:
                if main:
                    _save_checkpoint(run, cfg, ckpt_dir, state, best)
                acc.wait_for_everyone()
            if any([bool(cb(state, run.raw)) for cb in callbacks]):  # every callback runs; one returning True stops
                break
    read_losses()
    bar.close()

    # pick the adapter to keep, score it on test, save
    if not state.history or "dev" not in state.history[-1]:
        evaluate_dev()
    if not run.dev:  # nothing to select on: keep the last weights
        best = trainable_state(run.raw)
    load_trainable(run.raw, best)
    metadata = adapter_metadata(run, cfg, acc.num_processes, state, (time.monotonic() - started) / 60)
    if main:
        if run.test and cfg.final_eval:
            metadata.metrics = score_test(run, cfg, lang, progress, scorer)
        metadata.metrics["dev_history"] = [h for h in state.history if "dev" in h]
        profile = language_profile(run, progress) if cfg.language_profile else None
        save_adapter(run.raw, cfg.out_dir, metadata, profile=profile)
        remove_directory(ckpt_dir)
    acc.wait_for_everyone()
    return TrainResult(cfg.out_dir, metadata, state, resumed_from)
