"""What a training run keeps beside its adapter directory ``<out>``: a resumable checkpoint and a lock.

``<out>.checkpoint/`` holds nothing that runs code when read::

    checkpoint.safetensors   tensors: model.<param> (trainable weights now), best.<param> (at the best dev CER),
                             optimizer.<index>.<key> (AdamW's step, exp_avg, exp_avg_sq per parameter)
    checkpoint.json          format, version, config (TrainConfig.to_dict()), state (TrainState), the optimizer's
                             param groups and other non-tensor state, the scheduler's state_dict

There are no RNG states: training reseeds from (seed, step) before every step, so the step is enough.
A checkpoint is written with ``atomic_directory``: a run killed while writing one leaves the previous checkpoint or
the new one (``atomic.recover``). Checkpoints of whisper-lora 0.1 (``trainer_state.pt``, ``torch.save``) are read
with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

``<out>.lock`` (``locks.FileLock``) is held by a run's main process from start to end, so a second run on the
same ``out`` is refused with the pid of the first; the kernel drops the lock when a run dies, kill -9 included.

A run that finished leaves its adapter in ``<out>`` and no checkpoint (``finished_run``): resuming it has nothing
to do, and must not start again from step 0 over the finished adapter.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from whisper_lora.atomic import atomic_directory
from whisper_lora.errors import AdapterError, CheckpointError, ConfigError, LockedError
from whisper_lora.locks import FileLock
from whisper_lora.registry.adapter_io import AdapterMetadata, validate_adapter
from whisper_lora.training.config import AUTO_SETTINGS, TrainConfig

FORMAT = "whisper-lora/checkpoint"
VERSION = 1
TENSORS_FILE = "checkpoint.safetensors"
STATE_FILE = "checkpoint.json"
LEGACY_FILE = "trainer_state.pt"  # whisper-lora 0.1: one torch.save pickle
_PREFIXES = ("model", "best", "optimizer")
log = logging.getLogger("whisper_lora")


@dataclass
class Checkpoint:
    """Everything a resume needs."""

    config: dict  # TrainConfig.to_dict() of the run that wrote it (a resume refuses a changed config)
    state: dict  # TrainState fields: step, best_cer, best_step, history, minutes
    model: dict[str, torch.Tensor]  # trainable parameters at ``state["step"]``
    best: dict[str, torch.Tensor]  # trainable parameters at the best dev CER so far
    optimizer: dict  # the optimizer's state_dict()
    scheduler: dict  # the learning-rate scheduler's state_dict()


def checkpoint_dir(out_dir: str | Path) -> Path:
    """``<out>.checkpoint`` beside the adapter directory ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.checkpoint")


def lock_output(out_dir: str | Path) -> FileLock:
    """Take ``<out>.lock`` for a training run (release it when the run ends); ``LockedError`` while another holds it."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out_dir.with_name(f"{out_dir.name}.lock"))
    if not lock.acquire(blocking=False):
        pid = lock.holder()
        raise LockedError(
            f"another training run (pid {pid or 'unknown'}) is writing {out_dir} and holds {lock.path}; "
            "wait for it to finish, or train into another --out"
        )
    return lock


def _json_plain(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


SPEED_ONLY = ("attention",)  # config keys that change how fast a step runs, never what it computes


def config_changes(saved: dict, current: dict) -> list[str]:
    """The config keys whose values differ between a checkpoint's config and the current one. A key the saved config
    lacks (a run from before the key existed) counts as its default (``TrainConfig.defaults()``); keys in
    ``SPEED_ONLY`` may change between a run and its resume."""
    saved, current, defaults = _json_plain(saved), _json_plain(current), _json_plain(TrainConfig.defaults())
    keys = (saved.keys() | current.keys()) - set(SPEED_ONLY)
    return sorted(k for k in keys if saved.get(k, defaults.get(k)) != current.get(k))


def saved_choices(out_dir: str | Path) -> dict:
    """What the run ``out_dir`` resolved its ``auto`` settings to (``AUTO_SETTINGS``): from its checkpoint's config,
    else from its finished adapter's metadata. A resume keeps them, so a whisper-lora whose ``auto`` now chooses
    otherwise (or another machine) still resumes the run instead of calling it another config. {} when there is
    nothing readable: the checks that follow say what is wrong."""
    out_dir = Path(out_dir)
    ckpt_dir = checkpoint_dir(out_dir)
    if os.path.lexists(ckpt_dir):
        try:  # the JSON alone where there is one, not the tensors; read_checkpoint says later what is wrong
            config = (
                _read_state(ckpt_dir)["config"]
                if (ckpt_dir / STATE_FILE).is_file()
                else read_checkpoint(ckpt_dir).config
            )
        except (OSError, CheckpointError):
            return {}
    else:
        try:
            config = validate_adapter(out_dir).training if os.path.lexists(out_dir) else {}
        except AdapterError:
            return {}
    return {k: config[k] for k in AUTO_SETTINGS if isinstance(config, dict) and k in config and config[k] != "auto"}


def finished_run(out_dir: str | Path, config: dict) -> AdapterMetadata | None:
    """The metadata of the adapter a finished run of ``config`` (``TrainConfig.to_dict()``) left in ``out_dir``;
    None when there is a checkpoint to resume from or no usable adapter. An adapter of another config raises
    ``ConfigError`` naming what differs: resuming cannot tell which of the two is wanted."""
    out_dir = Path(out_dir)
    if os.path.lexists(checkpoint_dir(out_dir)) or not os.path.lexists(out_dir):
        return None
    try:
        meta = validate_adapter(out_dir)
    except AdapterError:
        return None  # nothing usable to keep: the run starts at step 0, as without a checkpoint
    # the metadata records the run's config: ``lora`` and the corpus apart, the rest among ``training``
    saved = {k: meta.training[k] for k in config if k not in ("lora", "data", "out") and k in meta.training}
    saved |= {"lora": meta.lora, "data": meta.data.get("source")}
    changed = config_changes(saved, {k: v for k, v in config.items() if k != "out"})
    if changed:
        raise ConfigError(
            f"cannot resume: {out_dir} holds a finished adapter of another config ({', '.join(changed)}) and no "
            "checkpoint; run without --resume to train from step 0 and replace it, or train into another --out"
        )
    return meta


def write_checkpoint(ckpt_dir: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``ckpt_dir`` atomically (safetensors + JSON)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in ckpt.model.items()}
    tensors |= {f"best.{k}": v for k, v in ckpt.best.items()}
    plain: dict[str, dict] = {}
    for index, entries in ckpt.optimizer["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "config": ckpt.config,
        "state": ckpt.state,
        "optimizer": {"param_groups": ckpt.optimizer["param_groups"], "state": plain},
        "scheduler": ckpt.scheduler,
    }
    text = json.dumps(doc, indent=1)  # before the directory is made: a value JSON cannot hold fails here
    with atomic_directory(ckpt_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / TENSORS_FILE)
        (tmp / STATE_FILE).write_text(text, encoding="utf-8")


def _unusable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"cannot resume from {path}: {why}; delete {path.parent} to start again at step 0 (or run without --resume)"
    )


def _read_state(ckpt_dir: Path) -> dict:
    """The JSON half of a checkpoint (config, state, optimizer values, scheduler), checked; ``CheckpointError``
    naming the file when it is not one this whisper-lora reads."""
    state_file = ckpt_dir / STATE_FILE
    try:
        doc = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _unusable(state_file, f"it is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _unusable(state_file, f"it is not a whisper-lora checkpoint (format {FORMAT!r} expected)")
    if doc.get("version") != VERSION:
        raise _unusable(state_file, f"version {doc.get('version')!r}; this whisper-lora reads version {VERSION}")
    missing = [k for k in ("config", "state", "optimizer", "scheduler") if k not in doc]
    if missing:
        raise _unusable(state_file, f"it has no {', '.join(missing)}")
    return doc


def _read_current(ckpt_dir: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors_file = ckpt_dir / TENSORS_FILE
    doc = _read_state(ckpt_dir)
    try:
        flat = load_file(str(tensors_file))
    except (SafetensorError, OSError) as e:
        raise _unusable(tensors_file, f"it is damaged ({e})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in _PREFIXES}
    for name, value in flat.items():
        prefix, _, rest = name.partition(".")
        if prefix not in parts:
            raise _unusable(tensors_file, f"unexpected tensor {name!r}")
        parts[prefix][rest] = value
    opt_state: dict[int, dict] = {int(i): dict(v) for i, v in doc["optimizer"].get("state", {}).items()}
    for name, value in parts["optimizer"].items():
        index, _, key = name.partition(".")
        opt_state.setdefault(int(index), {})[key] = value
    optimizer = {"state": opt_state, "param_groups": doc["optimizer"]["param_groups"]}
    return Checkpoint(doc["config"], doc["state"], parts["model"], parts["best"], optimizer, doc["scheduler"])


def _read_legacy(ckpt_dir: Path) -> Checkpoint:
    path = ckpt_dir / LEGACY_FILE
    log.info("reading %s, a checkpoint of an older whisper-lora, with torch.load(weights_only=True)", path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Checkpoint(
            saved["config"], saved["state"], saved["model"], saved["best"], saved["optimizer"], saved["scheduler"]
        )
    except Exception as e:  # any failure of the restricted unpickler (or a missing key) means: not resumable
        raise _unusable(path, f"it cannot be read as plain tensors and values ({type(e).__name__}: {e})") from None


def read_checkpoint(ckpt_dir: str | Path) -> Checkpoint | None:
    """The checkpoint in ``ckpt_dir``; None when there is none; ``CheckpointError`` (naming the file) when one is
    there but unusable. Call ``atomic.recover(ckpt_dir)`` first, so an interrupted write is finished or undone."""
    ckpt_dir = Path(ckpt_dir)
    if not os.path.lexists(ckpt_dir):
        return None
    if not ckpt_dir.is_dir():
        raise _unusable(ckpt_dir / STATE_FILE, f"{ckpt_dir} is not a directory")
    found = sorted(p.name for p in ckpt_dir.iterdir())
    if STATE_FILE in found and TENSORS_FILE in found:
        return _read_current(ckpt_dir)
    if LEGACY_FILE in found:
        return _read_legacy(ckpt_dir)
    raise _unusable(
        ckpt_dir / STATE_FILE,
        f"it holds no checkpoint (found: {', '.join(found) or 'nothing'}; a checkpoint is {STATE_FILE} + {TENSORS_FILE})",
    )


def restore_optimizer(optimizer, saved: dict) -> None:
    """Load a checkpoint's optimizer ``state_dict`` (JSON gave lists where the optimizer keeps tuples, e.g. betas)."""
    groups = saved["param_groups"]
    if len(groups) == len(optimizer.param_groups):  # otherwise load_state_dict says what does not match
        groups = [
            {k: tuple(v) if isinstance(cur.get(k), tuple) and isinstance(v, list) else v for k, v in group.items()}
            for group, cur in zip(groups, optimizer.param_groups, strict=True)
        ]
    optimizer.load_state_dict({**saved, "param_groups": groups})
