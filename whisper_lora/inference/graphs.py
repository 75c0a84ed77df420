"""Decoding with a static KV cache and a compiled decoder step: CUDA graphs on a GPU (``Transcriber(graphs=)``).

On a GPU a decoding step is launch-bound: a few dozen small kernels per layer, each a host round trip. transformers'
static cache (``cache_implementation="static"``) gives every step the same shapes, and its ``compile_config`` runs the
steps through ``torch.compile`` (mode ``reduce-overhead``: the step is captured once as a CUDA graph and replayed). What
this module adds is what makes that safe and reusable for a server that mixes adapters:

- **Which calls compile** (``Transcriber`` decides, ``AdapterPool.graph_safe`` says): the untouched base and batches
  whose adapters are computed row-indexed (``row_lora.py``: the per-row adapter index is a tensor the compiled step
  reads, so one captured step serves every mix of the loaded adapters; loading or dropping one rebuilds the stacks,
  and the next call compiles again). peft's ``adapter_names`` path is never compiled: its per-call hooks made a step
  captured for one mix answer another mix's rows wrongly (found on a CPU, tiny model). One beam on 30 s windows only:
  beam search, trimmed (shorter) encoder outputs, the fallback steps the server's scheduler interleaves with other
  requests, and long-form windows decode eagerly.
- **Shapes that repeat**: a call's rows are padded (``bucket``) to 1, 2, 4, 8, 16, 32 or a multiple of 32 by repeating
  its last row, whose results are dropped (on a CPU a row's result never depends on its batch; on a GPU, as for any
  batch there, rounding may move a near tie), and the cache is always ``max_target_positions`` long.

Each new batch size (and each new set of loaded adapters) compiles on its first call, holding the model meanwhile:
seconds to tens of seconds. ``auto`` leaves it off until a device measures it faster (docs/inference.md: about as fast
as eager on a CPU; not measured on a GPU yet). Quantised bases (int8, nf4) are not compiled by transformers; ``on``
refuses them.
"""

from __future__ import annotations

import functools

from whisper_lora.base.model import PRECISIONS, QUANTIZED

GRAPHS = ("auto", "on", "off")  # Transcriber(graphs=...): auto is off until a device measures it faster
DEFAULT_GRAPHS = "auto"
_BUCKETS = (1, 2, 4, 8, 16, 32)


def check_graphs(graphs: str, precision: str, mode: str, row_indexed: bool | None) -> list[str]:
    """The problems of a ``graphs`` setting for a ``Transcriber`` (the one home of these checks); empty when valid."""
    if graphs not in GRAPHS:
        return [f"graphs={graphs!r}; valid: {', '.join(GRAPHS)}"]
    if graphs != "on":
        return []
    problems = []
    if precision in QUANTIZED:
        floats = " or ".join(p for p in PRECISIONS if p not in QUANTIZED)
        problems.append(
            f"graphs='on' needs a float base ({floats}): transformers does not compile bitsandbytes' layers; "
            f"got precision={precision!r}"
        )
    if mode == "hotswap":  # an unknown mode is the pool's to report
        problems.append(f"graphs='on' needs mode='routed' (row-indexed adapters); got mode={mode!r}")
    if row_indexed is False:
        problems.append("graphs='on' needs row_indexed (peft's adapter_names batches are not compiled); got False")
    return problems


def may_compile(beams: int, paused: bool, full_windows: bool) -> bool:
    """Whether a ``generate`` call may run compiled (the one home of this rule): one beam, no step that gives the model
    up (``pause``), every row's encoder output a full 30 s window (shorter ones would each compile anew)."""
    return beams == 1 and not paused and full_windows


def graphs_on(graphs: str) -> bool:
    """Whether a checked ``graphs`` setting compiles decoding (``auto``: not yet anywhere, see the module docstring)."""
    return graphs == "on"


def bucket(n: int) -> int:
    """The rows a batch of ``n`` is padded to, so that compiled steps meet a few batch sizes only."""
    return next((b for b in _BUCKETS if b >= n), -(-n // _BUCKETS[-1]) * _BUCKETS[-1])


@functools.cache
def _sized_cache() -> bool:
    """Whether this transformers sizes a static cache by ``max_cache_len`` (asked once, not at every decode)."""
    from transformers import GenerationConfig

    return hasattr(GenerationConfig(), "max_cache_len")


def compiled_settings(model) -> dict:
    """The ``generate`` settings of a static cache of the decoder's full length and a compiled step: CUDA graphs on a
    GPU; on a CPU inductor without graphs (transformers compiles on accelerators only unless told)."""
    from transformers import CompileConfig

    if model.device.type == "cuda":
        compiled = CompileConfig()  # mode reduce-overhead: CUDA graphs
    else:
        compiled = CompileConfig(mode="default")
        compiled._compile_all_devices = True
    settings = {"cache_implementation": "static", "compile_config": compiled}
    if _sized_cache():  # one cache shape for every prompt and token budget
        settings["max_cache_len"] = model.config.max_target_positions
    return settings


def compile_generation(gen, model) -> None:
    """Make ``gen`` (a ``GenerationConfig``) decode with ``compiled_settings``."""
    for key, value in compiled_settings(model).items():
        setattr(gen, key, value)
