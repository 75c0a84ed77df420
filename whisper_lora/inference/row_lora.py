"""Batches that mix adapters in a fixed number of operations per layer (``RowLoRA``).

peft's ``adapter_names`` path computes, in every adapted linear layer and at every decoding step, one sub-batch
gather, two matmuls and one scatter per adapter present in the batch: a batch over eight adapters costs eight times
the launches of one. Here every adapted layer keeps the loaded adapters' LoRA weights stacked (``A``: entries x in x
rank, ``B``: entries x rank x out, and each one's scaling; ranks zero-padded to the largest, a layer an adapter does
not target a zero entry, entry 0 the base: zero) and computes each row's LoRA term with its own adapter by a gather
of the stacks and two batched matmuls (``torch.bmm``), whatever the number of adapters in the batch.

Batch invariance: a row's result must not depend on the other rows of its batch (the server answers a request in a
mixed batch as it answers it alone). Matrix kernels sum in an order that depends on the shapes, the batch's
included, so in float32 a row's LoRA term differs at rounding level with the batch, and a greedy decode that hangs
on a near tie (or an int8 base, whose activation quantisation turns a rounding difference into a step) can then
change a token. With ``exact`` (the default on a CPU) the terms are summed in float64 and rounded once to the
model's dtype, which makes them the same whatever the batch (float64's own differences, ~1e-16, vanish in that
rounding); the LoRA terms are a small part of a layer's work, so this costs little there. On a GPU, where float64
is slow, the weights' own dtype is used and a row's text can differ from its text alone where rounding decides.
Against peft's ``adapter_names``: the same computation (float64: equal to 1e-10), summed in another order.

The adapters stay peft's (a ``PeftModel`` with several adapters loaded, standard files): the stacks are read from
its modules and rebuilt when the set of loaded adapters changes. While a ``rows`` context is active, peft's own
LoRA layers are disabled (each computes its base layer alone) and a forward hook on each adds the row-indexed term,
so the base layer is whatever peft wraps (int8, nf4, bf16, fp32). Contexts nest: a decode paused in one (the
server's step gate) lets another batch run in its own, and finds its rows again when it continues; ``outside``
hands the model back to peft's own adapters for a while. The per-row index follows the batch by its size: the
encoder sees the batch's rows, the decoder of a beam search each row ``num_beams`` times in a row
(``repeat_interleave``, as ``generate`` expands its inputs). Adapters with a peft variant (DoRA and the like) or LoRA
biases are not stacked: ``supports`` says so and the caller keeps peft's path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

OFF = object()  # the state outside every context: peft computes its own adapters, no hook adds anything


class RowLoRA:
    """The row-indexed LoRA of one ``PeftModel``; see the module docstring."""

    def __init__(self, peft_model, exact: bool | None = None):
        self.peft = peft_model
        self.exact = exact  # sum the LoRA terms in float64 (None: on a CPU); see the module docstring
        self._names: tuple[str, ...] | None = None  # the adapters stacked, in stack order (entry i + 1); None: stale
        self._stacks: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # per LoRA layer
        self._checked: dict[str, bool] = {}  # adapter -> whether it can be stacked (``supports``)
        self._state: object = OFF  # per-row adapter names (None: the base) of the innermost context, or None, or OFF
        self._index: dict[int, torch.Tensor] = {}  # rows seen by a layer -> stack entry per row, for ``_state``
        self._hooks: list = []

    def _layers(self) -> list:
        from peft.tuners.lora import LoraLayer  # imported when used: it imports bitsandbytes, which is slow and chatty

        return [m for m in self.peft.modules() if isinstance(m, LoraLayer) and hasattr(m, "base_layer")]

    @property
    def active(self) -> bool:
        """Whether a ``rows`` context is the innermost one (peft's own layers are disabled)."""
        return self._state is not OFF

    def supports(self, names: Sequence[str]) -> bool:
        """Whether every layer of these adapters is plain LoRA on a linear layer (no variant, no LoRA bias)."""
        return all(self._plain(n) for n in names)

    def _plain(self, name: str) -> bool:
        if name not in self._checked:
            self._checked[name] = not any(
                name in m.lora_variant or m.lora_bias.get(name) or not isinstance(m.lora_A[name], torch.nn.Linear)
                for m in self._layers()
                if name in m.lora_A
            )
        return self._checked[name]

    def refresh(self) -> None:
        """An adapter was loaded or deleted: the stacks are built again when next used; within a context, the new
        layers get their hook and peft's layers stay disabled."""
        self._names, self._stacks, self._checked, self._index = None, {}, {}, {}
        if self._hooks:
            self._unhook()
            self._hook()

    def _build(self) -> None:
        """Stack every loaded adapter in every layer one of them adapts."""
        names = tuple(self.peft.peft_config)
        stacks = {}
        for m in self._layers():
            present = [n for n in names if n in m.lora_A]
            if not present:
                continue
            first = m.lora_A[present[0]].weight
            rank = max(m.lora_A[n].weight.shape[0] for n in present)
            n_in, n_out = first.shape[1], m.lora_B[present[0]].weight.shape[0]
            exact = self.exact if self.exact is not None else first.device.type == "cpu"
            kw = dict(dtype=torch.float64 if exact else first.dtype, device=first.device)
            a = torch.zeros(len(names) + 1, n_in, rank, **kw)
            b = torch.zeros(len(names) + 1, rank, n_out, **kw)
            scale = torch.zeros(len(names) + 1, 1, 1, **kw)
            with torch.no_grad():
                for j, n in enumerate(names, start=1):
                    if n in m.lora_A:
                        r = m.lora_A[n].weight.shape[0]
                        a[j, :, :r] = m.lora_A[n].weight.t().to(a.dtype)
                        b[j, :r, :] = m.lora_B[n].weight.t().to(b.dtype)
                        scale[j] = m.scaling[n]
            stacks[m] = (a, b, scale)
        self._names, self._stacks, self._index = names, stacks, {}

    def _rows_of(self, size: int) -> torch.Tensor:
        """The stack entry of each of ``size`` rows a layer sees now (a multiple of the context's rows)."""
        if size not in self._index:
            names = self._state
            if size % len(names):
                raise RuntimeError(f"a layer saw {size} rows, not a multiple of the batch's {len(names)}")
            entry = {n: j for j, n in enumerate(self._names, start=1)}
            rows = torch.tensor([entry[n] if n is not None else 0 for n in names])
            device = next(iter(self._stacks.values()))[0].device
            self._index[size] = rows.repeat_interleave(size // len(names)).to(device)
        return self._index[size]

    def _add_lora(self, module, args, output):
        if self._state is None:  # the base
            return output
        if self._names is None:
            self._build()
        stacks = self._stacks.get(module)
        if stacks is None:  # no loaded adapter adapts this layer
            return output
        a, b, scale = stacks
        x = args[0]
        idx = self._rows_of(x.shape[0])
        flat = x.reshape(x.shape[0], -1, x.shape[-1]).to(a.dtype)
        term = torch.bmm(torch.bmm(flat, a[idx]), b[idx]) * scale[idx]  # peft's order: scaled last
        return output + term.reshape(output.shape).to(output.dtype)

    def _hook(self) -> None:
        self._hooks = [m.register_forward_hook(self._add_lora) for m in self._layers()]
        self.peft.base_model.disable_adapter_layers()

    def _unhook(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.peft.base_model.enable_adapter_layers()

    @contextlib.contextmanager
    def _within(self, state: object) -> Iterator[None]:
        previous = self._state
        self._set(state)
        try:
            yield
        finally:
            self._set(previous)

    def _set(self, state: object) -> None:
        if state is not OFF and not self._hooks:
            self._hook()
        elif state is OFF and self._hooks:
            self._unhook()
        self._state, self._index = state, {}

    def rows(self, names_per_row: Sequence[str | None] | None) -> contextlib.AbstractContextManager:
        """Within it, the model computes row i with adapter ``names_per_row[i]`` (None: the base) in every call;
        ``names_per_row=None``: every row with the base."""
        return self._within(None if names_per_row is None else list(names_per_row))

    def outside(self) -> contextlib.AbstractContextManager:
        """Within it, peft's own adapter layers compute (no row-indexed term), whatever context is around it."""
        return self._within(OFF)
