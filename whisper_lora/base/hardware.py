"""What the machine computes fast: CPU instruction sets as torch will use them, CUDA bf16.

Speed defaults (``auto`` precisions) and every benchmark table read this one place. The CPU's
class follows what torch actually dispatches to (``torch.backends.cpu.get_cpu_capability()``),
so ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 machine behaves, and is reported, like a CPU
without AVX-512 -- bitsandbytes' CPU int8 kernels make the same check.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

import torch

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as speed decisions go."""

    model: str  # model name from /proc/cpuinfo (or the platform's processor string)
    cores: int  # logical CPUs torch may use
    flags: tuple[str, ...]  # the flags of interest that the CPU reports
    torch_capability: str  # what torch dispatches to: DEFAULT, AVX2, AVX512, ...

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags and self.torch_capability.startswith("AVX512")

    @property
    def fast_bf16(self) -> bool:
        """Native bf16 dot products (AVX512-BF16 or AMX) that torch will use."""
        return self.avx512 and ("avx512_bf16" in self.flags or "amx_bf16" in self.flags)

    @property
    def cpu_class(self) -> str:
        """``AVX512-BF16``, ``AVX-512 without BF16``, ``AVX2 (no AVX-512)`` or ``baseline``."""
        if self.fast_bf16:
            return "AVX512-BF16" + (" + AMX" if "amx_bf16" in self.flags else "")
        if self.avx512:
            return "AVX-512 without BF16"
        if "avx2" in self.flags:
            return "AVX2 (no AVX-512)" + (" [capped by torch]" if "avx512f" in self.flags else "")
        return "baseline (no AVX2)"

    def summary(self) -> str:
        """One line for logs and benchmark tables."""
        return (
            f"{self.model}, {self.cores} cores, class {self.cpu_class} "
            f"(flags: {' '.join(self.flags) or 'none'}; torch dispatch {self.torch_capability})"
        )


@functools.cache
def cpu_info() -> CpuInfo:
    """Read once per process."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: no flags known, so nothing is assumed fast
        pass
    return CpuInfo(
        model=model,
        cores=torch.get_num_threads(),
        flags=tuple(f for f in _FLAGS_OF_INTEREST if f in flags),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
    )


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (CUDA from Ampere on, CPUs with AVX512-BF16 or AMX). torch's
    plain ``is_bf16_supported()`` also says yes where bf16 is only emulated (a T4, a V100), where it is slow."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_info().fast_bf16


def device_summary(device: torch.device | str = "cpu") -> str:
    """One line naming the compute device, for logs and benchmark tables."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)} (native bf16: {fast_bf16(device)})"
    return cpu_info().summary()
