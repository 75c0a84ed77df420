import pytest
import torch

from whisper_lora.base.model import load_base_model
from whisper_lora.training.lean_backward import make_backward_lean
from whisper_lora.training.lora import LoraSpec, apply_lora


def _grads(tiny_dir, precision, lean, checkpointing=False):
    model = load_base_model(str(tiny_dir), precision, "cpu").model
    torch.manual_seed(0)
    model = apply_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0, targets=("q", "v")))
    patched = make_backward_lean(model) if lean else 0
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    torch.manual_seed(1)
    feats, labels = torch.randn(2, 80, 3000), torch.randint(0, 50000, (2, 10))
    loss = model(input_features=feats, labels=labels).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, patched


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_lean_backward_gives_the_same_gradients(tiny_dir, precision):
    loss_a, ga, _ = _grads(tiny_dir, precision, lean=False)
    loss_b, gb, patched = _grads(tiny_dir, precision, lean=True)
    assert patched == 32  # every quantised linear of the 2+2-layer model: q, k, v, out, fc1, fc2 (+ cross attention)
    assert loss_a == loss_b  # the forward pass is bitsandbytes' own
    assert ga.keys() == gb.keys() and len(ga) == 2 * 2 * 6  # lora_A/B of q and v in 6 attention blocks
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)
    assert any(float(g.abs().sum()) > 0 for k, g in gb.items() if "encoder.layers.0" in k)  # reached the bottom


def test_lean_backward_under_gradient_checkpointing(tiny_dir):
    _, ga, _ = _grads(tiny_dir, "int8", lean=False, checkpointing=True)
    _, gb, _ = _grads(tiny_dir, "int8", lean=True, checkpointing=True)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)


def test_full_precision_models_and_repeated_calls_are_left_alone(tiny_dir):
    model = load_base_model(str(tiny_dir), "fp32", "cpu").model
    assert make_backward_lean(apply_lora(model, LoraSpec(r=4, alpha=8))) == 0
    model = load_base_model(str(tiny_dir), "int8", "cpu").model
    model = apply_lora(model, LoraSpec(r=4, alpha=8))
    assert make_backward_lean(model) == 32 and make_backward_lean(model) == 0


class _MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """The input dtypes of every matrix product dispatched while active."""

    PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.dtype, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.PRODUCTS:
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision, checkpointing", [("int8", False), ("nf4", False), ("int8", True)])
def test_backward_products_follow_autocast(tiny_dir, precision, checkpointing):
    """Under bf16 autocast no product of the backward runs in float32 (issue 32: the int8 step's f32 GEMMs came
    from here), and the gradients stay those of bitsandbytes' own backward to bf16 rounding."""
    grads = {}
    for lean in (False, True):
        model = load_base_model(str(tiny_dir), precision, "cpu").model
        torch.manual_seed(0)
        model = apply_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0, targets=("q", "v")))
        if lean:
            make_backward_lean(model)
        if checkpointing:  # the forward runs again inside the backward, autocast restored by torch
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(1)
        feats, labels = torch.randn(2, 80, 3000), torch.randint(0, 50000, (2, 10))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_features=feats, labels=labels).loss
        products = _MatmulDtypes()
        with products:
            loss.backward()
        grads[lean] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(products.seen) > 32  # every quantised layer's grad-input product and LoRA's own
    assert all(torch.float32 not in dtypes for dtypes in products.seen), set(products.seen)
    for k, g in grads[False].items():
        torch.testing.assert_close(grads[True][k], g, rtol=0.05, atol=0.05 * float(g.abs().max()))
