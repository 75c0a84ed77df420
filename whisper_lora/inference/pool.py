"""How a ``Transcriber`` keeps adapters on its one base: one strategy per mode, chosen once.

- ``RoutedPool``: up to ``max_loaded`` adapters attached side by side (LRU); a batch that mixes
  adapters runs in one ``generate`` call, each row with its own adapter (``row_lora.RowLoRA``: a fixed number
  of operations per layer whatever the number of adapters; peft's per-sample ``adapter_names`` where it cannot).
- ``HotSwapPool``: one adapter slot whose weights are replaced in place (peft's hot-swap, or a
  plain copy when shapes match); up to ``max_loaded`` adapters' weights stay cached (LRU); a
  mixed batch is decoded one adapter group at a time.

Both decode through a ``Generate`` callable supplied by the caller, and both give the untouched
base to rows without an adapter.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from whisper_lora.base.language_tokens import add_language_token
from whisper_lora.errors import ConfigError
from whisper_lora.inference.row_lora import RowLoRA
from whisper_lora.registry.adapter_io import load_adapter, read_lora
from whisper_lora.registry.catalog import AdapterEntry

BASE = "__base__"  # peft's name for "no adapter" in mixed batches


def drop_leaked_adapter_names(model: torch.nn.Module) -> int:
    """Remove the ``adapter_names`` hooks a failed peft call left behind; returns how many.

    peft (0.21) puts a forward pre-hook carrying a call's ``adapter_names`` on every LoRA layer and removes them when
    the call returns, but not when it raises: every later call, of any batch, would then get that call's adapter per
    row (or fail on the row count). Call this after a mixed-batch call raised."""
    dropped = 0
    for m in model.modules():
        for key, hook in list(m._forward_pre_hooks.items()):
            if getattr(getattr(hook, "func", None), "__name__", "") == "_adapter_names_pre_forward_hook":
                del m._forward_pre_hooks[key]
                m._forward_pre_hooks_with_kwargs.pop(key, None)
                dropped += 1
    return dropped


HOTSWAP_SLOT = "active"

# (model to call, features, Whisper language per row, peft adapter name per row or None) -> one result per row
Generate = Callable[[object, torch.Tensor, list[str], list[str] | None], list]
# (model with one adapter or none active, rows of the batch) -> one result per row
RunGroup = Callable[[object, list[int]], list]


def _pad(feats, langs: list[str], names: list | None, pad_to: int | None):
    """The rows of a call padded to ``pad_to`` by repeating the last one (``AdapterPool.decode``)."""
    n = len(langs)
    if not pad_to or pad_to <= n:
        return feats, langs, names
    idx = list(range(n)) + [n - 1] * (pad_to - n)
    return feats[idx], [langs[i] for i in idx], None if names is None else [names[i] for i in idx]


class AdapterPool(Protocol):
    def decode(
        self,
        feats: torch.Tensor,
        langs: list[str],
        entries: Sequence[AdapterEntry | None],
        generate: Generate,
        pad_to: int | None = None,
    ) -> list:
        """Results of the rows of ``feats`` (``generate``'s), row i decoded in ``langs[i]`` with ``entries[i]`` (None: the base).
        ``pad_to``: where the call may run compiled (``graph_safe``), its rows are padded to this many by repeating the
        last one, whose results are dropped, so compiled steps meet a few batch sizes (``graphs.py``)."""

    def attach(self, entry: AdapterEntry) -> None:
        """Make ``entry`` ready to decode with (routed: attached; hot-swap: in the slot)."""

    def decode_groups(self, entries: Sequence[AdapterEntry | None], run: RunGroup) -> list:
        """Results of ``run`` called once per adapter group with that adapter alone active (None: the base)."""

    def base_model(self) -> contextlib.AbstractContextManager:
        """A context yielding a model that computes the untouched base."""

    def suspend(self, entry: AdapterEntry | None) -> None:
        """A decode with ``entry`` active pauses (between decoding steps): leave the model for other work."""

    def resume(self, entry: AdapterEntry | None) -> None:
        """The paused decode continues: ``entry`` active again, whatever ran in between."""

    def loaded(self) -> list[str]:
        """Adapters held in memory, least recently used first."""

    def graph_safe(self) -> bool:
        """Whether a ``generate`` call made now (by ``decode``'s or ``base_model``'s model) may run compiled
        (``graphs.py``): the model computes the base alone, or row-indexed LoRA."""

    def detach(self, name: str) -> bool:
        """Drop ``name``'s weights from memory (loaded again when next used); False when it was not loaded."""


def check_pool(mode: str, max_loaded: int) -> list[str]:
    """The problems of a pool's settings (the one home of these checks); empty when they are valid."""
    problems = []
    if mode not in POOLS:
        problems.append(f"invalid mode {mode!r}; valid: {', '.join(sorted(POOLS))}")
    if not isinstance(max_loaded, int) or max_loaded < 1:
        problems.append(f"max_loaded={max_loaded!r} must be >= 1")
    return problems


class _PeftHolder:
    """The base, and the PeftModel built on it with the first adapter; ``tokenizer``: the base's, which adapters that
    add a language token extend (``base/language_tokens.py``)."""

    def __init__(self, model, max_loaded: int, tokenizer=None):
        self.model, self.max_loaded, self.tokenizer = model, max_loaded, tokenizer
        self.peft = None

    def _plain(self) -> bool:
        """Whether no adapter is attached: none yet, or every one unloaded. A PeftModel whose last adapter was deleted
        cannot run (its active adapter still names the deleted one), so the base then runs as the model itself: its
        LoRA layers hold no adapter and compute the base layer alone."""
        return self.peft is None or not self.peft.peft_config

    @contextlib.contextmanager
    def base_model(self):
        if self._plain():
            try:
                yield self.model
            finally:  # an adapter attached while this decode was paused: leave the layers enabled
                if self.peft is not None:
                    self.peft.base_model.enable_adapter_layers()
        else:  # the layers themselves, not peft's disable_adapter(): that also marks the PeftModel disabled,
            # and a mixed batch run while a long base decode is paused would then ignore its adapter_names
            self.peft.base_model.disable_adapter_layers()
            try:
                yield self.peft
            finally:
                self.peft.base_model.enable_adapter_layers()

    def suspend(self, entry: AdapterEntry | None) -> None:
        if entry is None and self.peft is not None:  # inside base_model(): adapters are disabled
            self.peft.base_model.enable_adapter_layers()

    def resume(self, entry: AdapterEntry | None) -> None:
        if entry is None:
            if self.peft is not None:  # the paused decode holds the model itself, or the PeftModel
                self.peft.base_model.disable_adapter_layers()
        else:
            self._activate(entry)

    def graph_safe(self) -> bool:
        return self._plain()  # the plain base: peft's hooks and swapped slots are not compiled

    def _generate_base(self, feats, langs, generate: Generate, pad_to: int | None = None) -> list:
        n = len(langs)
        with self.base_model() as m:
            if self.graph_safe():
                feats, langs, _ = _pad(feats, langs, None, pad_to)
            return generate(m, feats, langs, None)[:n]

    def _activate(self, entry: AdapterEntry):
        """The model with ``entry`` as its only active adapter."""
        raise NotImplementedError

    def decode_groups(self, entries, run: RunGroup) -> list:
        out: list = [None] * len(entries)
        groups: OrderedDict[str | None, list[int]] = OrderedDict()
        for i, e in enumerate(entries):
            groups.setdefault(e.name if e else None, []).append(i)
        for name, rows in groups.items():
            if name is None:
                with self.base_model() as m:
                    results = run(m, rows)
            else:
                results = self._run_group(entries[rows[0]], rows, run)
            for i, r in zip(rows, results, strict=True):
                out[i] = r
        return out

    def _run_group(self, entry: AdapterEntry, rows: list[int], run: RunGroup) -> list:
        """``run`` over ``rows`` with ``entry`` the only adapter."""
        return run(self._activate(entry), rows)


class RoutedPool(_PeftHolder):
    """Adapters attached side by side; mixed batches in one call: row-indexed LoRA (``row_lora.RowLoRA``), or
    peft's ``adapter_names`` for adapters it cannot stack (DoRA and other variants, LoRA biases) or when
    ``row_indexed`` is False (the default on a CPU: docs/inference.md#mixed-batches-row-indexed-lora)."""

    def __init__(self, model, max_loaded: int, tokenizer=None, row_indexed: bool | None = None):
        super().__init__(model, max_loaded, tokenizer)
        self._names: OrderedDict[str, str] = OrderedDict()  # registry name -> peft name (name and version)
        # None: on a GPU (where peft's per-adapter loop is launch-bound); on a CPU peft's layers measured as fast
        self.row_indexed = model.device.type == "cuda" if row_indexed is None else row_indexed
        self._rows: RowLoRA | None = None

    def loaded(self) -> list[str]:
        return list(self._names)

    @staticmethod
    def _peft_name(entry: AdapterEntry) -> str:
        return f"{entry.name}@{entry.version}" if entry.version else entry.name

    def attach(self, entry: AdapterEntry) -> None:
        key = self._peft_name(entry)
        if self._names.get(entry.name) == key:
            self._names.move_to_end(entry.name)
            return
        if entry.name in self._names:  # replaced on disk since it was loaded: drop the old weights
            self._delete(self._names.pop(entry.name))
        if len(self._names) >= self.max_loaded:
            _, old = self._names.popitem(last=False)
            self._delete(old)
        self.peft = load_adapter(self.peft or self.model, entry.path, adapter_name=key, tokenizer=self.tokenizer)
        self._names[entry.name] = key
        if self.peft.active_adapter not in self.peft.peft_config:  # it was deleted: peft's generate looks it up
            self.peft.set_adapter(key)
        self._row_lora().refresh()

    def detach(self, name: str) -> bool:
        key = self._names.pop(name, None)
        if key is None:
            return False
        self._delete(key)
        return True

    def _delete(self, key: str) -> None:
        left = [k for k in self.peft.peft_config if k != key]
        if left and self.peft.active_adapter == key:
            self.peft.set_adapter(left[0])  # peft refuses to delete the active adapter's last copy otherwise
        self.peft.delete_adapter(key)
        self._row_lora().refresh()

    def graph_safe(self) -> bool:
        # within a row-indexed context (a batch's rows, or base_model()): the adapter index is a tensor the compiled
        # step reads, so one captured step serves every mix; peft's adapter_names hooks would not (graphs.py)
        return self._plain() or (self._rows is not None and self._rows.peft is self.peft and self._rows.active)

    def _row_lora(self) -> RowLoRA:
        if self._rows is None or self._rows.peft is not self.peft:
            self._rows = RowLoRA(self.peft)
        return self._rows

    def _activate(self, entry: AdapterEntry):
        self.attach(entry)
        self.peft.set_adapter(self._names[entry.name])
        return self.peft

    def decode(self, feats, langs, entries, generate: Generate, pad_to: int | None = None) -> list:
        needed = {e.name: e for e in entries if e is not None}
        if len(needed) > self.max_loaded:
            raise ConfigError(
                f"this batch needs {len(needed)} adapters but max_loaded={self.max_loaded}; "
                "split the batch or raise max_loaded"
            )
        for name in needed:  # needed adapters become most recent, so eviction spares them
            if name in self._names:
                self._names.move_to_end(name)
        for entry in needed.values():
            self.attach(entry)
        if not needed:
            return self._generate_base(feats, langs, generate, pad_to)
        self.peft.eval()  # mixed batches are inference-only
        names = [self._names[e.name] if e else None for e in entries]
        if self._row_mode(needed):  # one adapter or many: the same arithmetic, so a row's result is the same alone
            feats, langs, names = _pad(feats, langs, names, pad_to)  # the only path that may compile (graph_safe)
            with self._row_lora().rows(names):
                return generate(self.peft, feats, langs, None)[: len(entries)]
        with self._row_lora().outside():
            if len(needed) == 1 and all(e is not None for e in entries):
                self.peft.set_adapter(self._names[next(iter(needed))])
                return generate(self.peft, feats, langs, None)
            try:
                return generate(self.peft, feats, langs, [n or BASE for n in names])
            except BaseException:
                drop_leaked_adapter_names(self.peft)
                raise

    def _row_mode(self, names) -> bool:
        """Whether these adapters (registry names) decode row-indexed (``row_lora``), else through peft's layers."""
        return self.row_indexed and self._row_lora().supports([self._names[n] for n in names])

    @contextlib.contextmanager
    def base_model(self):
        if self._plain() or not self.row_indexed:
            with super().base_model() as m:
                yield m
        else:  # row-indexed with every row the base: peft's layers disabled, nothing added
            with self._row_lora().rows(None):
                yield self.peft

    def _run_group(self, entry: AdapterEntry, rows: list[int], run: RunGroup) -> list:
        self.attach(entry)
        if self._row_mode([entry.name]):
            with self._row_lora().rows([self._names[entry.name]] * len(rows)):
                return run(self.peft.eval(), rows)
        with self._row_lora().outside():
            return run(self._activate(entry), rows)

    def suspend(self, entry: AdapterEntry | None) -> None:
        # a decode in a row-indexed context needs nothing: contexts nest, what runs meanwhile restores its own
        if not self.row_indexed or (entry is None and not self._row_lora().active):
            super().suspend(entry)

    def resume(self, entry: AdapterEntry | None) -> None:
        if entry is None:
            if not self.row_indexed or not self._row_lora().active:  # a base decode begun before any adapter
                super().resume(entry)
        elif not self.row_indexed:
            super().resume(entry)
        else:
            self.attach(entry)  # evicted meanwhile (more adapters than max_loaded): loaded again
            if not self._row_mode([entry.name]):
                self._activate(entry)


@dataclass(frozen=True)
class _Cached:
    """One adapter's weights kept in memory by the hot-swap pool."""

    config: object  # its ``LoraConfig`` (without peft's trainable tokens: a new token's row goes into the base)
    state: dict  # its LoRA weights, named for the slot
    version: str  # ``AdapterEntry.version`` when read: a replaced adapter is read again
    token_row: torch.Tensor | None = None  # the row of the language token it adds (``metadata.new_token``)


class HotSwapPool(_PeftHolder):
    """One adapter slot, weights swapped in place; cached weights of up to ``max_loaded`` adapters."""

    def __init__(self, model, max_loaded: int, tokenizer=None):
        super().__init__(model, max_loaded, tokenizer)
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._active: tuple[str, str] | None = None  # (name, version) in the slot
        self._slot_config = None
        self._slot_params: dict | None = None

    def loaded(self) -> list[str]:
        return list(self._cache)

    def detach(self, name: str) -> bool:
        if self._cache.pop(name, None) is None:
            return False
        if self._active is not None and self._active[0] == name:  # the slot keeps its weights until the next swap
            self._active = None
        return True

    def _weights(self, entry: AdapterEntry) -> _Cached:
        cached = self._cache.get(entry.name)
        if cached is None or cached.version != entry.version:  # not cached, or replaced on disk since
            config, raw, row = read_lora(entry.path, self.model.device)
            state = {
                k.replace(".lora_A.weight", f".lora_A.{HOTSWAP_SLOT}.weight").replace(
                    ".lora_B.weight", f".lora_B.{HOTSWAP_SLOT}.weight"
                ): v
                for k, v in raw.items()
            }
            self._cache.pop(entry.name, None)
            if len(self._cache) >= self.max_loaded:
                self._cache.popitem(last=False)
            self._cache[entry.name] = _Cached(config, state, entry.version, row)
        self._cache.move_to_end(entry.name)
        return self._cache[entry.name]

    def attach(self, entry: AdapterEntry) -> None:
        """Put ``entry``'s weights into the slot."""
        from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict

        if self._active == (entry.name, entry.version):
            self._cache.move_to_end(entry.name)
            return
        cached = self._weights(entry)
        config, state = cached.config, cached.state
        if entry.metadata.new_token:  # its token's row goes into the base (never shared by another adapter)
            add_language_token(self.model, self.tokenizer, entry.metadata.new_token, cached.token_row)
        if self.peft is None:
            self.peft = load_adapter(self.model, entry.path, adapter_name=HOTSWAP_SLOT, tokenizer=self.tokenizer)
        else:
            check_hotswap_configs_compatible(self.peft.peft_config[HOTSWAP_SLOT], config)
            # from here the slot holds no adapter until the swap is whole: a swap that fails part-way leaves it
            # claiming nothing, so the next use of any adapter writes every weight again (never mixed weights)
            self._active = None
            if not self._copy_into_slot(config, state):
                self._slot_config = None  # peft's swap may also rescale: the slot's shape is unknown until it is done
                hotswap_adapter_from_state_dict(self.peft, state, HOTSWAP_SLOT, config)
        self._slot_config, self._active = config, (entry.name, entry.version)

    @staticmethod
    def _shape_key(config) -> tuple:
        return (
            config.r,
            config.lora_alpha,
            config.use_rslora,
            sorted(config.target_modules),
            sorted(config.rank_pattern.items()),
            sorted(config.alpha_pattern.items()),
        )

    def _copy_into_slot(self, config, state: dict) -> bool:
        """Fast path of a hot-swap: same ranks and scaling as the adapter in the slot, so copying the
        weights is the whole swap (peft's hot-swap also looks modules up and rescales). False: not
        applicable, use peft's."""
        if self._slot_config is None or self._shape_key(config) != self._shape_key(self._slot_config):
            return False
        if self._slot_params is None:
            self._slot_params = dict(self.peft.named_parameters())
        params = self._slot_params
        if any(k not in params or params[k].shape != v.shape for k, v in state.items()):
            return False
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
        return True

    def _activate(self, entry: AdapterEntry):
        self.attach(entry)
        self.peft.set_adapter(HOTSWAP_SLOT)
        return self.peft

    def decode(self, feats, langs, entries, generate: Generate, pad_to: int | None = None) -> list:
        return self.decode_groups(entries, lambda m, rows: generate(m, feats[rows], [langs[i] for i in rows], None))


POOLS = {"routed": RoutedPool, "hotswap": HotSwapPool}


def make_pool(mode: str, model, max_loaded: int, tokenizer=None, row_indexed: bool | None = None) -> AdapterPool:
    """The pool for a ``Transcriber`` mode (``routed`` or ``hotswap``); ``tokenizer``: the base's (needed by adapters
    that add a language token); ``row_indexed``: how a routed pool computes mixed batches (``RoutedPool``)."""
    problems = check_pool(mode, max_loaded)
    if problems:
        raise ConfigError("invalid adapter pool:\n  - " + "\n  - ".join(problems))
    if mode == "routed":
        return RoutedPool(model, max_loaded, tokenizer, row_indexed)
    return POOLS[mode](model, max_loaded, tokenizer)
