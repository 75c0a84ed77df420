"""Training settings that fit the machine: what ``precision: auto`` and ``gradient_checkpointing: auto`` become.

The choice reads the device (CUDA memory; CPU cores, instruction set and RAM, see ``hardware``) and
the base's size, and says why, so ``whisper-lora train`` prints what it picked. Measured reasons
(whisper-base, batch 8, one training step with LoRA in every attention stack, 2-core AMD EPYC):

- On a CPU, bitsandbytes' int8 matmul is slower than plain fp32 (18.0 s vs 11.7 s per step with
  AVX-512; its fallback without AVX-512 is slower still) and saves memory the CPU does not need
  for small bases, so small and medium bases train in fp32 there; the adapter loads on the int8
  base at inference all the same (same weights, same fingerprint).
- Gradient checkpointing recomputes the forward: 11.5 s vs 8.1 s per step (fp32, bf16 autocast).
  It is kept only where memory is tight: large bases, or GPUs with little memory per parameter.
- On a GPU the base is bf16 wherever it fits, else 8-bit. Issue 32's H200 measurements (large-v3's shape, 3-8 s
  clips, checkpointing, LoRA defaults): bf16 trains 2.4x faster than the int8 base (0.75 vs 1.80 s per step at batch
  8, 0.73 vs 1.94 at 32) and peaks lower (5,352 vs 5,959 MB at batch 8, 5,510 vs 5,965 at 32), since an int8 base
  keeps its other parts and its activations in float32 (at batch 1 the int8 base peaks lower: 2.3 vs 3.3 GB on an
  H100, docs/benchmarks.md). With checkpointing a bf16 run took about 3.5 bytes per parameter there (tensors only,
  short clips); 4.5 are asked for, plus 1 GiB for the CUDA context, so large-v3 (7.5 GiB) takes bf16 on cards of
  8 GB and more, at the edge on 8 GB ones. The int8 run on 30 s windows peaked at 5,968 MB, within that budget with
  bf16's weights instead. Without checkpointing (small bases) activations dominate: 16 bytes per parameter. GPUs
  that only emulate bf16 (T4, V100) get fp32 for small bases where twice that fits, else int8 (the usual T4
  recipe). Measured before ``lean_backward`` followed autocast, which speeds up the int8 step; not re-measured on a
  GPU since.
- Encoder input: an adapter whose encoder layers are all trained learns on each clip plus 1 s instead
  of a 30 s window (``trim.py``): a step is ~4.5x faster (batch 4: 1.9 s vs 8.4 s) and the adapter is
  still decoded on 30 s windows. Where the encoder is not adapted, or its lower layers are cached, the
  window stays.
- Batch size: over 30 s windows a CPU gets through a few hundred utterances in a quarter of an hour,
  so smaller batches mean more updates: real Czech (Fish Fillets, 1451 lines), 15 minutes on a 2-core
  CPU without AVX-512, LoRA in every stack: batch 4 (123 steps) CER -24.8% / WER -18.7% against the
  fp32 base, batch 8 (58 steps) -20.9% / -14.9%. With trimmed input the steps are cheap and batch 8
  wins: 227 steps, CER -32.2% / WER -29.3%, against batch 4 (545 steps) -28.6% / -19.7%. GPUs keep batch 8.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from whisper_lora.base.hardware import cpu_info, fast_bf16

# fp32 weights at most this share of RAM train unquantised on a CPU
CPU_FP32_RAM_SHARE = 0.15
# more parameters than this: gradient checkpointing on (whisper-small has 242M, medium 764M)
CHECKPOINTING_PARAMS = 300_000_000
# GPU: bf16 base when this many bytes per parameter (weights + activations at batch 8) fit in its memory: without
# checkpointing (measured order), and with it (3.5 measured on an H200 for large-v3's shape, 3-8 s clips; see above)
GPU_BYTES_PER_PARAM_BF16 = 16
GPU_BYTES_PER_PARAM_BF16_CHECKPOINTED = 4.5
# of a GPU's memory, kept for the CUDA context and the allocator's slack (the measurements count tensors only)
GPU_RESERVED_BYTES = 2**30
# training activations per utterance without checkpointing, whisper-base with LoRA in every encoder layer
# (peak RSS 7.9 GB at batch 8 in fp32 on a CPU); scaled by width and encoder depth for other bases
ACTIVATION_BYTES_BASE = 0.95e9
# checkpointing also turns on when the activations of one batch would take more than this share of RAM
ACTIVATION_RAM_SHARE = 0.4
CPU_BATCH_SIZE = 4
GPU_BATCH_SIZE = 8
# seconds of padding kept after the audio when an adapted encoder trains on trimmed input (trim.py)
TRIM_PADDING = 1.0


@dataclass(frozen=True)
class Profile:
    """What ``auto`` settings resolve to on this machine, and why."""

    precision: str
    gradient_checkpointing: bool
    batch_size: int
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return "; ".join(self.reasons)


def count_base_parameters(path: str) -> int:
    """Parameters of the Whisper checkpoint at ``path``, from its config alone (no weights read)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 * 2**30


def choose_trim_padding(lora, encoder_layers: int, cache_encoder: bool) -> tuple[float | None, str]:
    """What ``trim_padding: auto`` becomes, and why (see ``trim.py``).

    An adapter whose encoder layers are all trained learns to encode the audio's own frames, and a
    step then skips the ~87% of a 30 s window that is padding; where the encoder is not adapted, or
    its frozen lower layers are cached, the 30 s window stays.
    """
    if not lora.touches_encoder:
        return None, "30 s windows: the encoder is not adapted, and the base only knows full windows"
    if cache_encoder and lora.frozen_encoder_layers(encoder_layers) > 0:
        return None, "30 s windows: the frozen lower encoder layers are cached per utterance"
    return TRIM_PADDING, f"encoder input trimmed to the audio + {TRIM_PADDING:g} s: the adapted encoder learns it"


def default_batch_size(device: torch.device, trimmed: bool = False) -> int:
    """Batch size for ``batch_size: auto`` (see the module notes): 4 on a CPU over 30 s windows, 8 otherwise."""
    return GPU_BATCH_SIZE if device.type == "cuda" or trimmed else CPU_BATCH_SIZE


def activation_bytes(d_model: int, encoder_layers: int, batch_size: int) -> float:
    """Rough training activations of one batch without checkpointing (see ``ACTIVATION_BYTES_BASE``)."""
    return batch_size * ACTIVATION_BYTES_BASE * (d_model / 512) * (encoder_layers / 6)


def choose_profile(
    device: torch.device,
    n_params: int,
    ram_bytes: int | None = None,
    batch_activation_bytes: float = 0.0,
    trimmed: bool = False,
) -> Profile:
    """Precision, gradient checkpointing and batch size for a base of ``n_params`` parameters on ``device``.

    ``batch_activation_bytes`` (``activation_bytes``) lets a CPU with little RAM keep checkpointing on;
    ``trimmed``: the encoder trains on trimmed input (``choose_trim_padding``), so steps are cheap.
    """
    reasons = []
    size = f"{n_params / 1e6:.0f}M-parameter base"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        large = n_params > CHECKPOINTING_PARAMS
        need = n_params * (GPU_BYTES_PER_PARAM_BF16_CHECKPOINTED if large else GPU_BYTES_PER_PARAM_BF16)
        free, native = total - GPU_RESERVED_BYTES, fast_bf16(device)
        gib = f"~{need / 2**30:.1f} GiB of the GPU's {total / 2**30:.0f}"
        if native and need <= free:
            precision = "bf16"
            reasons.append(
                f"precision bf16: the {size} needs {gib}; at batch 8-32 bf16 trained faster than the int8 base "
                "and peaked lower (large-v3's shape, H200)"
            )
        elif not native and not large and 2 * need <= free:
            precision = "fp32"
            reasons.append(
                f"precision fp32: this GPU only emulates bf16; the {size} needs ~{2 * need / 2**30:.1f} GiB in fp32"
            )
        else:
            precision = "int8"
            why = "this GPU only emulates bf16" if not native else f"in bf16 the {size} would need {gib}"
            reasons.append(f"precision int8: {why}")
        checkpointing = large or precision == "int8"
    else:
        cpu = cpu_info()
        ram = ram_bytes or _ram_bytes()
        if n_params * 4 <= CPU_FP32_RAM_SHARE * ram:
            precision = "fp32"
            reasons.append(
                f"precision fp32: on a CPU ({cpu.cpu_class}, {cpu.cores} cores) bitsandbytes' int8 matmul is slower "
                f"than fp32, and the {size} takes {n_params * 4 / 2**30:.1f} of {ram / 2**30:.0f} GiB RAM"
            )
        else:
            precision = "int8"
            reasons.append(f"precision int8: the {size} in fp32 would take over {CPU_FP32_RAM_SHARE:.0%} of RAM")
        checkpointing = n_params > CHECKPOINTING_PARAMS or batch_activation_bytes > ACTIVATION_RAM_SHARE * ram
    reasons.append(
        f"gradient checkpointing {'on' if checkpointing else 'off'}: "
        + ("memory is tight for this base" if checkpointing else "activations fit; recomputing them costs ~30% time")
    )
    batch = default_batch_size(device, trimmed)
    why = "" if device.type == "cuda" else ": trimmed steps are cheap" if trimmed else ": more updates per CPU minute"
    reasons.append(f"batch size {batch}{why}")
    return Profile(precision, checkpointing, batch, tuple(reasons))
