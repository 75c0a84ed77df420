"""Memory-lean backward pass through frozen bitsandbytes layers.

bitsandbytes' int8 and 4-bit matmuls keep every layer's input alive for the backward pass as a plain
attribute (``ctx.tensors``/``ctx.A``), even when the weight is frozen and only the input's gradient is
needed, which needs nothing but the weight. Those inputs also escape gradient checkpointing, which
only drops tensors saved through ``save_for_backward``. With LoRA every base weight is frozen, so
``make_backward_lean`` routes each quantised layer through a function that saves nothing and computes
``grad_input = grad_output @ dequantize(W)`` in the backward pass, with bitsandbytes' own dequantisation.
The forward pass is the layer's own, untouched.

That product runs where autocast would run a plain linear layer's: in the autocast dtype when the forward ran
under autocast (bf16 on a GPU or an AVX512-BF16 CPU), else in the input's dtype. Without this rule the input of
an int8 layer under autocast is float32 (layer norms autocast to float32), and the backward's largest GEMMs ran
in float32: the ``sm80_xmma_gemm_f32f32`` kernels of issue 32's int8 profile.
"""

from __future__ import annotations

import torch

_ORIGINAL = "_whisper_lora_forward"


class _FrozenQuantLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
        ctx.layer, ctx.dtype, ctx.shape = layer, x.dtype, x.shape
        ctx.compute = backward_dtype(x)
        with torch.no_grad():
            return getattr(layer, _ORIGINAL)(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = _dequantized_weight(ctx.layer).to(ctx.compute)
        grad_input = grad.reshape(-1, grad.shape[-1]).to(ctx.compute) @ weight
        return grad_input.to(ctx.dtype).view(ctx.shape), None


def backward_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the grad-input product for input ``x``: autocast's, if active on its device, else ``x``'s own
    (as autocast treats a plain linear layer: float32/16 inputs are cast to its dtype, the backward follows; it
    leaves float64 alone)."""
    device = x.device.type
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _dequantized_weight(layer) -> torch.Tensor:
    import bitsandbytes as bnb

    if isinstance(layer, bnb.nn.Linear8bitLt):
        state = layer.state
        cb, scb = (state.CB, state.SCB) if state.CB is not None else (layer.weight.data, layer.weight.SCB)
        return bnb.functional.int8_vectorwise_dequant(cb, scb)
    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)


def _lean_forward(layer):
    original = getattr(layer, _ORIGINAL)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenQuantLinear.apply(x, layer)
        return original(x)

    return forward


def make_backward_lean(model) -> int:
    """Patch every frozen bitsandbytes int8/4-bit linear layer of ``model``; returns how many were patched."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # no quantised layers without bitsandbytes
        return 0
    n = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear8bitLt | bnb.nn.Linear4bit) or hasattr(module, _ORIGINAL):
            continue
        if module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad):
            continue
        setattr(module, _ORIGINAL, module.forward)
        module.forward = _lean_forward(module)
        n += 1
    return n
