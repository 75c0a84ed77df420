"""States of the frozen lower encoder, computed once per utterance and kept on disk.

A LoRA spec leaves the lowest ``b`` encoder layers without adapters (``LoraSpec.frozen_encoder_layers``):
all of them when only the decoder is adapted, all but the top K with ``encoder_top=K``. Their output
never changes during training, so each training utterance is run through them once, the first time
a batch needs it, and a training step then runs only the adapted top layers and the decoder.

What is stored is the input of the first adapted encoder layer (``b < L``) or the encoder's output
(``b == L``, decoder-only adapters). Each utterance is encoded on its own, so its state does not
depend on what it was batched with (a resumed run reproduces an uninterrupted one).

Two stores:

- ``DiskStore`` (default in training): one ``.npy`` file per utterance under
  ``<base>/L<layer>-<computed>-<stored>/``: ``<base>`` is the base's weight fingerprint (for a hub base
  without local files, its id and commit), ``<computed>`` the precision of the encoder that computed the
  states (int8, nf4, bf16, fp32) and ``<stored>`` how they are kept (bf16, fp16); the file name is a
  hash of the utterance's log-mel features. Entries are read memory-mapped and copied per batch, so RAM
  does not grow with the corpus, and a second run, a resume or a sweep over the same corpus finds them
  and starts training without encoding. Values are stored in 16 bit: bf16 states as they are
  (lossless), fp32 states as float16 (relative error ~5e-4). An entry is written to a temporary file
  and renamed into place; a full disk raises ``DiskFullError`` and leaves no partial entry.
- ``MemoryStore``: tensors in RAM, exact (used by tests that compare with the uncached path).

The pass can run on a separate copy of the encoder at another precision (``cache_precision``): on
CPUs with AVX512-BF16/AMX and on CUDA a bf16 encoder is 2-3x faster than bitsandbytes' int8 one and
closer to the full-precision outputs. The copy keeps only the frozen layers and is freed once every
training utterance is stored.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from whisper_lora.atomic import atomic_write_bytes
from whisper_lora.base.hardware import fast_bf16
from whisper_lora.base.model import load_whisper
from whisper_lora.base.trim import embed, encode_upper  # noqa: F401 - encode_upper: the cache's upper half, kept importable here
from whisper_lora.data.features import Example
from whisper_lora.errors import ConfigError, DiskFullError, format_choices

CachePrecision = Literal["base", "auto", "bf16", "fp32"]
CACHE_PRECISIONS: tuple[str, ...] = get_args(CachePrecision)
CacheStorage = Literal["disk", "memory"]
CACHE_STORAGES: tuple[str, ...] = get_args(CacheStorage)
STALE_TEMPORARY_SECONDS = 3600  # a temporary entry this old was left by a killed run (a write takes milliseconds)
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_cache_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes ``bf16`` where it is fast and ``fp32`` elsewhere; ``base`` keeps the base's own encoder."""
    if precision not in CACHE_PRECISIONS:
        raise ConfigError(f"invalid cache_precision {precision!r}; valid: {format_choices(CACHE_PRECISIONS)}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def default_cache_root() -> Path:
    """``$WHISPER_LORA_CACHE/encoder`` (default ``~/.cache/whisper-lora/encoder``)."""
    from whisper_lora.base.resolve import cache_root

    return cache_root() / "encoder"


def encode_lower(encoder: nn.Module, features: torch.Tensor, n_layers: int | None) -> torch.Tensor:
    """The input of encoder layer ``n_layers``; with ``None``, the encoder's final output (after its layer norm).

    The partial pass repeats what ``WhisperEncoder.forward`` does before its layers (convolutions,
    positional embeddings), since transformers offers no way to stop after some layers. ``encoder``
    may hold only its first ``n_layers`` layers (the cache's copy drops the rest).
    """
    if n_layers is None:
        return encoder(features).last_hidden_state
    x = embed(encoder, features)
    for layer in encoder.layers[:n_layers]:
        x = layer(x, None)
    return x


def features_key(features: torch.Tensor) -> str:
    """Content hash of an utterance's log-mel features (the disk store's file name)."""
    return hashlib.sha256(features.detach().float().contiguous().numpy().tobytes()).hexdigest()[:32]


class MemoryStore:
    """Encoder states in RAM, as computed."""

    def __init__(self) -> None:
        self._d: dict[str, torch.Tensor] = {}

    def get(self, key: str) -> torch.Tensor | None:
        return self._d.get(key)

    def put(self, key: str, value: torch.Tensor) -> torch.Tensor:
        self._d[key] = value
        return value


def stored_format(dtype: torch.dtype) -> str:
    """How a disk store keeps states computed in ``dtype``: bf16 bit for bit, everything else as fp16."""
    return "bf16" if dtype == torch.bfloat16 else "fp16"


def encoder_precision(encoder: nn.Module) -> str:
    """The precision an encoder computes in: int8 or nf4 (bitsandbytes layers), else its dtype (bf16, fp32)."""
    for module in encoder.modules():
        name = type(module).__name__
        if name == "Linear8bitLt":
            return "int8"
        if name == "Linear4bit":
            return str(getattr(module.weight, "quant_type", "nf4"))
    dtype = next(encoder.parameters()).dtype
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def base_identity(fingerprint: str, name_or_path: str | None, revision: str | None) -> str:
    """Which weights computed the states: the fingerprint of a local checkpoint; for a hub base (fingerprint
    ``unknown``) its id and commit. A hub base of unknown commit cannot key a disk store: ``ConfigError``."""
    if fingerprint != "unknown":
        return fingerprint
    if name_or_path and revision:
        return "hub-" + re.sub(r"[^A-Za-z0-9._-]+", "--", name_or_path) + "-" + revision
    raise ConfigError(
        f"the disk encoder cache cannot tell which weights of base {name_or_path!r} computed its states: it has no "
        "local checkpoint to fingerprint and no hub commit; set cache_storage: memory or use a local checkpoint"
    )


class DiskStore:
    """Encoder states as 16-bit ``.npy`` files, one per utterance, read memory-mapped.

    Writes go to a temporary file renamed into place, so concurrent runs and interrupted ones never
    leave a partial entry behind; temporaries of killed runs are deleted when a store opens the
    directory an hour later. A full disk raises ``DiskFullError``.
    """

    def __init__(self, directory: str | Path, dtype: torch.dtype) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stored = stored_format(dtype)
        self.bf16 = self.stored == "bf16"  # stored bit for bit as uint16; everything else as float16
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for tmp in self.dir.glob(".*"):  # entries are written as hidden temporaries, then renamed
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except FileNotFoundError:  # renamed or removed by another run meanwhile
                pass

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError):  # damaged entry: recompute it
            return None
        t = torch.from_numpy(np.array(arr))  # one copy out of the mapping
        return t.view(torch.bfloat16) if self.bf16 else t

    def put(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Store ``value``; returns it as stored (16 bit), so first use and later reads see the same numbers."""
        stored = value.to(torch.bfloat16 if self.bf16 else torch.float16).contiguous()
        arr = stored.view(torch.uint16).numpy() if self.bf16 else stored.numpy()
        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(self._path(key), buf.getvalue(), durable=False)  # a lost entry is only recomputed
        return stored


def cache_directory(root: str | Path, base: str, layer: int, computed: str, stored: str) -> Path:
    """Where states of the weights ``base`` (``base_identity``) at one layer live:
    ``<root>/<base>/L<layer>-<computed>-<stored>`` (the encoder's precision, then the 16-bit format kept)."""
    return Path(root) / base / f"L{layer}-{computed}-{stored}"


class EncoderCache:
    """Frozen lower-encoder states of a fixed list of examples, filled lazily by ``get``."""

    def __init__(
        self,
        model,
        examples: Sequence[Example],
        frozen_layers: int | None = None,
        precision: str = "base",
        base_path: str | None = None,
        storage: str = "memory",
        root: str | Path | None = None,
        fingerprint: str | None = None,
    ):
        """``model`` is the (peft-wrapped) base being trained; ``frozen_layers`` the number of encoder
        layers below the first adapter (default: all, i.e. decoder-only adapters); ``precision`` one of
        ``CACHE_PRECISIONS``; ``base_path`` the checkpoint a separate bf16/fp32 encoder copy is loaded
        from; ``storage`` ``memory`` or ``disk`` (under ``root``, default ``default_cache_root()``, in a
        directory of the base's ``fingerprint``, or for a hub base of its id and commit: ``base_identity``)."""
        self.examples = examples
        self.device = next(model.parameters()).device
        self.precision = resolve_cache_precision(precision, self.device)
        base_encoder = model.get_base_model().model.encoder
        n_layers = len(base_encoder.layers)
        self.frozen_layers = n_layers if frozen_layers is None else frozen_layers
        self._upto = None if self.frozen_layers == n_layers else self.frozen_layers  # None: the encoder's output
        if not 0 < self.frozen_layers <= n_layers:
            raise ConfigError(f"frozen_layers={frozen_layers!r}: nothing to cache below layer 1 (valid 1..{n_layers})")
        if storage not in CACHE_STORAGES:
            raise ConfigError(f"invalid cache storage {storage!r}; valid: {format_choices(CACHE_STORAGES)}")
        if self.precision != "base" and base_path is None:
            raise ConfigError(f"cache_precision={precision!r} needs the base checkpoint's path")
        if self.precision == "base":
            self._encoder = base_encoder  # the layers below the first adapter carry none: no switch-off needed
        else:
            self._encoder = load_whisper(base_path, self.precision, self.device).model.encoder
            if self.frozen_layers < n_layers:  # keep only what the pass runs
                self._encoder.layers = self._encoder.layers[: self.frozen_layers]
        self._dtype = next(self._encoder.parameters()).dtype
        if storage == "disk":
            if fingerprint is None:
                raise ConfigError("a disk encoder cache needs the base's fingerprint")
            config = model.get_base_model().config
            base = base_identity(
                fingerprint, getattr(config, "_name_or_path", None), getattr(config, "_commit_hash", None)
            )
            computed, stored = encoder_precision(self._encoder), stored_format(self._dtype)
            directory = cache_directory(root or default_cache_root(), base, self.frozen_layers, computed, stored)
            self.store: MemoryStore | DiskStore = DiskStore(directory, self._dtype)
        else:
            self.store = MemoryStore()
        self._keys: dict[int, str] = {}  # example index -> store key, once known
        self.encoded = 0  # utterances run through the encoder by this cache (the rest came from the store)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def holds_encoder_copy(self) -> bool:
        """Whether a separate bf16/fp32 encoder copy is in memory (freed once every utterance is stored)."""
        return self._encoder is not None and self.precision != "base"

    @property
    def holds_output(self) -> bool:
        """Whether what is cached is the encoder's output (decoder-only adapters), not a lower layer's."""
        return self._upto is None

    @property
    def complete(self) -> bool:
        return len(self._keys) == len(self.examples)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """Stacked states ``(len(indices), frames, d_model)`` on the model's device, as stored."""
        out = []
        for i in indices:
            value = self.store.get(self._keys[i]) if i in self._keys else None
            if value is None:
                features = self.examples[i].input_features
                key = features_key(features)
                value = self.store.get(key)
                if value is None:
                    value = self._put(key, self._encode(features))
                    self.encoded += 1
                self._keys[i] = key
            out.append(value)
        if self.complete and self.holds_encoder_copy:
            self._encoder = None  # the separate copy is freed; the base's own stays with the model
        return torch.stack(out).to(self.device)

    def _put(self, key: str, value: torch.Tensor) -> torch.Tensor:
        try:
            return self.store.put(key, value)
        except DiskFullError as e:
            left = len(self.examples) - len(self._keys)
            need = left * value.numel() * 2  # 16-bit entries
            raise DiskFullError(
                f"encoder cache: {e}. The {left} training utterances not cached yet need about {need / 2**20:.0f} MB "
                "more: free space, move the cache (cache_dir, --cache-dir) or keep it in RAM (cache_storage: memory)"
            ) from e

    def _encode(self, features: torch.Tensor) -> torch.Tensor:
        if self._encoder is None:  # an entry vanished from disk after the copy was freed
            raise RuntimeError("encoder cache entry missing after the encoder copy was freed; rerun to recompute it")
        # the pass runs at the cache's own precision, not under the training step's autocast
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return encode_lower(self._encoder, features[None].to(self.device, self._dtype), self._upto)[0].cpu()
