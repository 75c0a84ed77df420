"""Load a Whisper base model in int8, nf4, bf16 or fp32, with its processor."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from whisper_lora.base.resolve import DEFAULT_BASE, fingerprint_checkpoint, resolve_base
from whisper_lora.errors import ConfigError, format_choices

Precision = Literal["int8", "nf4", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
QUANTIZED = ("int8", "nf4")


class _DropBnbNoise(logging.Filter):
    """Drop bitsandbytes' per-matmul messages, which are printed once per layer per step."""

    NOISE = ("inputs will be cast from", "gemm_4bit_forward from kernels-community")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(n in msg for n in self.NOISE)


class _DropGenerationConfigNotice(logging.Filter):
    """transformers warns on every Whisper ``generate`` that gets a full ``GenerationConfig``: Whisper's own
    ``generate`` adds ``suppress_tokens`` next to it. Passing the config is deliberate (generation.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Passing `generation_config` together with generation-related arguments" not in record.getMessage()


def silence_bitsandbytes() -> None:
    """Install the noise filters, once, at the source: bitsandbytes' per-matmul log lines, transformers' notice
    about Whisper's own generation arguments, and the deprecation peft triggers on every ``PeftModel``
    (``is_gradient_checkpointing``, read by peft's constructor). Idempotent."""
    for name in ("bitsandbytes", "bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBnbNoise) for f in logger.filters):
            logger.addFilter(_DropBnbNoise())
    gen = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _DropGenerationConfigNotice) for f in gen.filters):
        gen.addFilter(_DropGenerationConfigNotice())
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # torch 2.13 deprecates TorchScript; modules our dependencies import lazily still define ScriptModules
    warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated", category=DeprecationWarning)


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"invalid device {device!r}; valid: auto, cpu, cuda, cuda:N") from None


def release_checkpoint_mapping(model) -> None:
    """Copy a quantised model's remaining float tensors off the memory-mapped checkpoint.

    The unquantised parameters (embeddings, norms, biases) of a quantised CPU model are views of the
    memory-mapped checkpoint file, and they keep the whole mapping, including the pages of the
    original full-precision weights read while quantising, resident: whisper-small in int8 showed
    868 MB of file-backed memory after loading, 111 MB after this copy.
    """
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t.device.type == "cpu":
                t.data = t.data.clone()


@dataclass(frozen=True)
class BaseModelInfo:
    """Identity of a loaded base model, written into every adapter's metadata."""

    name: str  # what the user asked for (``whisper-base``, a path or a hub id)
    path: str  # the resolved checkpoint directory or hub id
    fingerprint: str  # sha256 prefix of the checkpoint's weight files
    precision: str  # int8, nf4, bf16 or fp32
    d_model: int
    encoder_layers: int
    decoder_layers: int
    vocab_size: int


def quantization_config(precision: str, device: torch.device, int8_threshold: float = 6.0):
    """The ``BitsAndBytesConfig`` for a quantised precision (None for bf16/fp32)."""
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=int8_threshold)
    if precision == "nf4":
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
    return None


def load_whisper(
    path: str, precision: Precision = "int8", device: str | torch.device | None = "auto", int8_threshold: float = 6.0
):
    """Load the Whisper model at a resolved ``path`` in ``precision`` on ``device``, in eval mode (no processor)."""
    from transformers import WhisperForConditionalGeneration

    if precision not in PRECISIONS:
        raise ConfigError(f"invalid precision {precision!r}; valid: {format_choices(PRECISIONS)}")
    dev = pick_device(device)
    silence_bitsandbytes()
    kwargs: dict = {}
    qc = quantization_config(precision, dev, int8_threshold)
    if qc is not None:
        kwargs.update(quantization_config=qc, device_map={"": str(dev)}, dtype=torch.float32)
    else:
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float32
    model = WhisperForConditionalGeneration.from_pretrained(path, **kwargs)
    if qc is None:
        model.to(dev)
    else:
        release_checkpoint_mapping(model)
    return model.eval()


@dataclass(frozen=True)
class LoadedBase:
    """What ``load_base_model`` returns: the model, its processor and its identity."""

    model: object  # WhisperForConditionalGeneration, eval mode, on its device
    processor: object  # WhisperProcessor
    info: BaseModelInfo


def describe_base(name: str, path: str, precision: str, config=None) -> BaseModelInfo:
    """The identity of the checkpoint at ``path`` (reads only its config unless ``config`` is given)."""
    if config is None:
        from transformers import WhisperConfig

        config = WhisperConfig.from_pretrained(path)
    return BaseModelInfo(
        name=str(name),
        path=str(path),
        fingerprint=fingerprint_checkpoint(path),
        precision=precision,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        vocab_size=config.vocab_size,
    )


def load_base_model(
    name_or_path: str = DEFAULT_BASE,
    precision: Precision = "int8",
    device: str | torch.device | None = "auto",
    int8_threshold: float = 6.0,
) -> LoadedBase:
    """Load a Whisper checkpoint, its processor and its identity (``LoadedBase``).

    ``int8_threshold`` is LLM.int8()'s outlier threshold: 6.0 (bitsandbytes' default) computes
    outlier columns in 16 bit, chosen over the whole batch, so a result can depend on what else
    is in the batch; 0.0 quantises every row on its own, which makes results batch-independent.
    """
    from transformers import WhisperProcessor

    if precision not in PRECISIONS:  # before resolving a name, which may convert a checkpoint
        raise ConfigError(f"invalid precision {precision!r}; valid: {format_choices(PRECISIONS)}")
    path = resolve_base(name_or_path)
    model = load_whisper(path, precision, device, int8_threshold)
    processor = WhisperProcessor.from_pretrained(path)
    return LoadedBase(model, processor, describe_base(name_or_path, path, precision, model.config))
