"""Checkpoints: safetensors + JSON round trip, clear errors for unusable ones, old torch.save checkpoints read with
weights_only=True (and pickled code refused, on a torch where that holds), and the output lock."""

import json
import os

import pytest
import torch

from tests.conftest import run_python
from whisper_lora.errors import CheckpointError, LockedError
from whisper_lora.training.checkpoint import (
    LEGACY_FILE,
    STATE_FILE,
    TENSORS_FILE,
    Checkpoint,
    checkpoint_dir,
    config_changes,
    lock_output,
    read_checkpoint,
    restore_optimizer,
    write_checkpoint,
)
from whisper_lora.training.schedule import BudgetSchedule


def _optimizer(seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, BudgetSchedule(1, 10))
    return params, opt, sched


def _step(params, opt, sched):
    loss = (params[0].sum(0) * params[1]).pow(2).sum()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


@pytest.fixture
def saved(tmp_path):
    """A checkpoint after two steps, and the run that wrote it."""
    params, opt, sched = _optimizer()
    for _ in range(2):
        _step(params, opt, sched)
    ckpt = Checkpoint(
        config={"seed": 7, "split_fractions": (0.1, 0.1)},
        state={"step": 2, "best_cer": float("inf"), "best_step": 0, "history": [{"step": 1, "loss": 1.5}]},
        model={"w": params[0].detach().clone(), "b": params[1].detach().clone()},
        best={"w": torch.zeros(4, 3), "b": torch.ones(3)},
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
    )
    write_checkpoint(tmp_path / "sw.checkpoint", ckpt)
    return tmp_path / "sw.checkpoint", ckpt, (params, opt, sched)


def test_a_checkpoint_is_safetensors_and_json_and_reads_back(saved):
    directory, ckpt, _ = saved
    assert sorted(p.name for p in directory.iterdir()) == [STATE_FILE, TENSORS_FILE]
    doc = json.loads((directory / STATE_FILE).read_text())
    assert doc["format"] == "whisper-lora/checkpoint" and doc["state"]["step"] == 2
    back = read_checkpoint(directory)
    assert back.state == {**ckpt.state, "best_cer": float("inf")}
    assert all(torch.equal(back.model[k], ckpt.model[k]) and torch.equal(back.best[k], ckpt.best[k]) for k in "wb")
    assert back.scheduler == ckpt.scheduler
    assert config_changes(back.config, ckpt.config) == []  # tuples read back as lists count as the same


def test_a_restored_optimizer_continues_exactly(saved):
    directory, _, (params, opt, sched) = saved
    back = read_checkpoint(directory)
    params2, opt2, sched2 = _optimizer(seed=1)  # other weights: everything comes from the checkpoint
    with torch.no_grad():
        for p, k in zip(params2, "wb", strict=True):
            p.copy_(back.model[k])
    restore_optimizer(opt2, back.optimizer)
    sched2.load_state_dict(back.scheduler)
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"] == (0.9, 0.999)
    for _ in range(3):
        _step(params, opt, sched)
        _step(params2, opt2, sched2)
    assert all(torch.equal(a, b) for a, b in zip(params, params2, strict=True))


def test_no_checkpoint_is_none(tmp_path):
    assert read_checkpoint(tmp_path / "sw.checkpoint") is None
    assert checkpoint_dir(tmp_path / "sw") == tmp_path / "sw.checkpoint"


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (
            lambda d: (d / STATE_FILE).write_text('{"format": "whisper-lora/check'),
            f"{STATE_FILE}: it is not readable JSON",
        ),
        (lambda d: (d / TENSORS_FILE).write_bytes(b"\x08\x00"), f"{TENSORS_FILE}: it is damaged"),
        (lambda d: (d / TENSORS_FILE).unlink(), f"it holds no checkpoint \\(found: {STATE_FILE};"),
    ],
)
def test_an_unusable_checkpoint_is_an_error_naming_the_file(saved, damage, match):
    directory = saved[0]
    damage(directory)
    with pytest.raises(CheckpointError, match=match) as e:
        read_checkpoint(directory)
    assert f"delete {directory} to start again at step 0" in str(e.value)


def test_an_old_torch_save_checkpoint_is_read_with_weights_only(saved, tmp_path):
    _, ckpt, _ = saved
    old = tmp_path / "old.checkpoint"
    old.mkdir()
    torch.save(
        {
            "config": ckpt.config,
            "model": ckpt.model,
            "optimizer": ckpt.optimizer,
            "scheduler": ckpt.scheduler,
            "best": ckpt.best,
            "state": ckpt.state,
        },
        old / LEGACY_FILE,
    )
    back = read_checkpoint(old)
    assert back.state == ckpt.state and torch.equal(
        back.optimizer["state"][0]["exp_avg"], ckpt.optimizer["state"][0]["exp_avg"]
    )


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_an_old_checkpoint_that_would_run_code_is_refused(tmp_path):
    old = tmp_path / "old.checkpoint"
    old.mkdir()
    payload = _RunsCode()
    payload.path = str(tmp_path / "pwned")
    torch.save({"state": payload}, old / LEGACY_FILE)
    with pytest.raises(CheckpointError, match=f"{LEGACY_FILE}: it cannot be read as plain tensors"):
        read_checkpoint(old)
    assert not (tmp_path / "pwned").exists()


def test_torch_is_required_where_weights_only_loading_holds():
    """torch < 2.6 lets a crafted file run code through ``torch.load(weights_only=True)`` (CVE-2025-32434): the
    package requires 2.6, and the torch that the README and CI install meets it."""
    import re
    import tomllib

    from packaging.requirements import Requirement

    from tests.conftest import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(Requirement(d).specifier for d in deps if Requirement(d).name == "torch")
    assert "2.6.0" in pin and "2.5.1" not in pin and "2.4.1" not in pin, pin
    installed = [v for f in ("README.md", ".ci/run") for v in re.findall(r"torch==([\d.]+)", (ROOT / f).read_text())]
    assert installed and all(v in pin for v in installed), installed
    assert torch.__version__.split("+")[0] in pin


def test_a_second_run_on_one_out_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "runs" / "sw"
    lock = lock_output(out)
    try:
        with pytest.raises(LockedError, match=f"pid {os.getpid()}.* is writing {out} and holds {out}.lock"):
            lock_output(out)
        code = "import sys\nfrom whisper_lora.training.checkpoint import lock_output\nlock_output(sys.argv[1])"
        r = run_python(code, str(out), light=True)  # another process is refused the same way
        assert r.returncode == 1 and f"LockedError: another training run (pid {os.getpid()})" in r.stderr
    finally:
        lock.release()
    lock_output(out).release()  # free again once the first run ends
