"""A training step the device waits on, not the host (issue 32's CPU-side mechanisms): the next batch prepared on a
background thread (``prefetch.py``) and the loss read back every few steps instead of every step. Both leave the
run bit-identical: the same batches in the same order, the same adapter, the same loss history, and a resume still
gives the adapter of an uninterrupted run."""

import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_train_config, train_until
from whisper_lora.training import train as train_module
from whisper_lora.training.prefetch import Prefetcher
from whisper_lora.training.train import train_adapter


def test_prefetcher_gives_each_steps_batch_in_order_prepared_ahead():
    made, threads = [], set()

    def make(step):
        made.append(step)
        threads.add(threading.current_thread().name)
        return step * step

    with Prefetcher(make) as p:
        assert p.get(0) == 0
        deadline = time.monotonic() + 10
        while 1 not in made and time.monotonic() < deadline:
            time.sleep(0.01)
        assert made == [0, 1]  # step 1 prepared before it was asked for
        assert [p.get(s) for s in range(1, 5)] == [1, 4, 9, 16]
        assert p.get(7) == 49  # a jump (a resume) is made on demand
    assert made[:5] == [0, 1, 2, 3, 4] and 7 in made
    assert threads and all(t.startswith("whisper-lora-prefetch") for t in threads)


def test_prefetcher_raises_a_failed_batch_in_the_caller():
    def make(step):
        if step == 2:
            raise ValueError("unreadable clip in step 2")
        return step

    with Prefetcher(make) as p:
        assert p.get(0) == 0 and p.get(1) == 1
        with pytest.raises(ValueError, match="step 2"):
            p.get(2)


@pytest.fixture
def accelerator_loop(monkeypatch):
    """Train on the CPU as train.py does on a GPU: batches prefetched, the loss read back every 3 steps."""
    monkeypatch.setattr(train_module, "prefetches", lambda device: True)
    monkeypatch.setattr(train_module, "loss_sync_every", lambda device: 3)


def _weights(result):
    return load_file(result.adapter_dir / "adapter_model.safetensors")


def test_accelerator_loop_is_bit_identical_and_resumes(tiny_dir, sw_corpus, tmp_path, accelerator_loop, monkeypatch):
    kw = dict(max_steps=7, eval_every=0, final_eval=False, checkpoint_every=2, language_profile=False)
    fast = train_adapter(tiny_train_config(tiny_dir, sw_corpus, tmp_path / "fast", **kw), progress=False)
    cfg = tiny_train_config(tiny_dir, sw_corpus, tmp_path / "resumed", **kw)
    train_until(cfg, 4)  # killed after step 4: its checkpoint at step 4 holds all four losses
    resumed = train_adapter(cfg, resume=True, progress=False)
    monkeypatch.setattr(train_module, "prefetches", lambda device: False)
    monkeypatch.setattr(train_module, "loss_sync_every", lambda device: 1)
    plain = train_adapter(tiny_train_config(tiny_dir, sw_corpus, tmp_path / "plain", **kw), progress=False)
    for other in (fast, resumed):
        assert [h for h in other.state.history if "loss" in h] == [h for h in plain.state.history if "loss" in h]
        a, b = _weights(other), _weights(plain)
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert [h["step"] for h in fast.state.history if "loss" in h] == list(range(1, 8))  # the last 1 flushed at the end


def test_nothing_in_the_step_reads_a_value_on_the_host(tiny_dir, sw_corpus, tmp_path, accelerator_loop):
    """Host reads of a tensor's value (``aten::_local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``; on a GPU
    each waits for the device to finish) in steps 2-7 of the accelerator loop: none but AdamW's own step counters,
    which torch keeps on the host (no device wait). The losses are read together with one ``tolist`` every 3 steps
    (the loss history above shows they all arrive). The old loop read the loss with ``.item()`` after every step."""
    from torch.profiler import ProfilerActivity, profile

    from whisper_lora.training.profiling import step_profile

    prof = profile(activities=[ProfilerActivity.CPU], with_stack=True)

    def window(state, model):  # steps 2..7: after the first step's set-up
        if state.step == 1:
            prof.__enter__()
        elif state.step == 7:
            prof.__exit__(None, None, None)

    kw = dict(max_steps=7, eval_every=0, final_eval=False, checkpoint_every=0, language_profile=False)
    train_adapter(tiny_train_config(tiny_dir, sw_corpus, tmp_path / "a", **kw), progress=False, callbacks=[window])
    steps = step_profile(prof.events(), 6, torch.device("cpu"))
    assert steps.launches > 50 and steps.optimizer_reads > 0  # the profiler saw the steps
    assert steps.host_reads == 0
