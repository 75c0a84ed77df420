"""Which scaled-dot-product attention kernels a training step runs (torch's SDPA back-ends), chosen per device.

torch picks a back-end per call among those allowed; on recent NVIDIA GPUs it may pick cuDNN's. Issue 32's profile of a
bf16 training step of the large-v3 shape on an H200 (torch 2.11) found cuDNN attention costing 2.4 ms of host time per
call forward and 2.6 ms backward against about 16 us on the GPU: 192 + 96 calls per step (gradient checkpointing
recomputes the forward), about 0.7 s of a 0.75 s step, so the GPU idled. Flash and memory-efficient attention cost tens
of microseconds of host time a call. ``auto`` therefore leaves cuDNN out on CUDA (not yet re-measured on a GPU:
``bench/gpu_train.py --attention auto torch`` compares it with torch's own choice), and changes nothing elsewhere.
"""

from __future__ import annotations

import contextlib

import torch

ATTENTIONS = ("auto", "torch", "flash", "efficient", "cudnn", "math")  # TrainConfig.attention


def sdpa_backends(choice: str, device: torch.device) -> list | None:
    """The back-ends ``choice`` allows on ``device``, or None for torch's own choice (every back-end).

    ``auto``: flash, then memory-efficient, then math on CUDA; torch's choice elsewhere. ``torch``: torch's choice.
    A back-end's name: that one, and math for the calls it cannot run (a dtype or mask it does not take)."""
    from torch.nn.attention import SDPBackend

    if choice not in ATTENTIONS:
        raise ValueError(f"attention={choice!r}; valid: {', '.join(ATTENTIONS)}")
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "auto":
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    named = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[choice]
    return list(dict.fromkeys([named, SDPBackend.MATH]))


def attention_backends(choice: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which SDPA calls (forward, and the backward that runs inside it) use ``sdpa_backends``."""
    backends = sdpa_backends(choice, device)
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)
