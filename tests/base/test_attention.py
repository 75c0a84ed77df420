"""base/attention.py: the SDPA back-ends a training step may use, by device, and the step running under them."""

import pytest
import torch
from torch.nn.attention import SDPBackend

from tests.conftest import tiny_train_config as _cfg
from whisper_lora.base.attention import attention_backends, sdpa_backends
from whisper_lora.training.train import train_adapter

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_auto_leaves_cudnn_out_on_cuda_and_changes_nothing_elsewhere():
    auto = sdpa_backends("auto", CUDA)
    assert SDPBackend.CUDNN_ATTENTION not in auto
    assert auto == [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    assert sdpa_backends("auto", CPU) is None and sdpa_backends("torch", CUDA) is None


@pytest.mark.parametrize(
    ("choice", "first"),
    [("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")],
)
def test_a_named_back_end_keeps_math_for_the_calls_it_cannot_run(choice, first):
    for device in (CUDA, CPU):
        assert sdpa_backends(choice, device) == [getattr(SDPBackend, first), SDPBackend.MATH]
    assert sdpa_backends("math", CPU) == [SDPBackend.MATH]
    with pytest.raises(ValueError, match="attention='xformers'; valid: auto, torch, flash"):
        sdpa_backends("xformers", CPU)


def test_the_context_restricts_what_sdpa_may_run():
    q = torch.randn(1, 2, 8, 16)
    with attention_backends("math", CPU):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored on leaving
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=1e-5)


def test_training_steps_run_under_the_chosen_back_ends(tiny_dir, sw_corpus, tmp_path, monkeypatch):
    """Every attention call of a step, the forward that gradient checkpointing re-runs inside the backward included,
    runs with the configured back-ends (here math alone: flash off); and math trains to the same losses as torch's own
    choice, within float tolerance."""
    seen = []  # per SDPA call: (grad mode, flash allowed)
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((torch.is_grad_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    kw = dict(eval_every=0, final_eval=False, mixed_precision="no", max_steps=2, gradient_checkpointing=True)
    kw |= dict(cache_encoder=False, language_profile=False)
    math = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "m", attention="math", **kw), progress=False)
    step = [flash for grad, flash in seen if grad]  # the training steps' calls (scoring decodes without grad)
    layers = 2 + 2 * 2  # the tiny model's attention calls per forward: 2 encoder, 2 decoder self and 2 cross
    assert len(step) == 2 * 2 * layers, "2 steps, each forward run again by checkpointing inside the backward"
    assert not any(step), "an attention call of a step ran outside the step's back-ends"
    seen.clear()
    own = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "t", attention="torch", **kw), progress=False)
    assert all(flash for grad, flash in seen if grad)
    losses = [[h["loss"] for h in r.state.history if "loss" in h] for r in (math, own)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=1e-4) and len(losses[0]) == 2
