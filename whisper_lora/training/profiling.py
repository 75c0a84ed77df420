"""What a ``torch.profiler`` trace of training steps says about who waits for whom: host reads of device values,
operator launches, and the device's busy time (``bench/gpu_train.py``, ``tests/training/test_prefetch.py``).

Profile with ``with_stack=True`` so that reads can be told apart: AdamW's step counters live on the host (torch's
default unless ``capturable``), so their ``.item()`` never waits for a GPU; every other ``aten::_local_scalar_dense``
(``.item()``, ``float(t)``, ``bool(t)`` of a device tensor) makes the host wait for the device to finish its queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepProfile:
    """Per-step figures of a profiled window of ``steps`` training steps."""

    host_reads: float  # reads of a tensor's value outside the optimizer's host-side counters (device waits on a GPU)
    optimizer_reads: float  # AdamW's reads of its own step counters (host tensors: no device wait)
    launches: float  # CUDA kernels on a GPU; aten operators on a CPU
    device_seconds: float | None  # summed CUDA kernel time; None on a CPU


def _under_optimizer(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if "torch/optim/" in parent.name:
            return True
        parent = parent.cpu_parent
    return False


def step_profile(events, steps: int, device: torch.device) -> StepProfile:
    """Summarise the ``events`` of a profiler that recorded ``steps`` training steps on ``device``."""
    reads = [e for e in events if e.name == "aten::_local_scalar_dense"]
    optimizer = sum(1 for e in reads if _under_optimizer(e))
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        launches, busy = len(kernels), sum(e.device_time for e in kernels) / 1e6
    else:
        launches, busy = sum(1 for e in events if e.name.startswith("aten::")), None
    return StepProfile(
        host_reads=(len(reads) - optimizer) / steps,
        optimizer_reads=optimizer / steps,
        launches=launches / steps,
        device_seconds=None if busy is None else busy / steps,
    )
