"""Serve the registry on vLLM: which adapters it can apply exactly, and the `vllm serve` arguments.

vLLM (>= 0.18, checked with 0.32) wraps Whisper's linear layers for multi-LoRA and indexes each row of a layer's
input by the decoder token it belongs to. Two kinds of layers see other rows: the encoder's (1500 frames per clip) and
the cross-attention ``k_proj``/``v_proj`` (run on those frames). With LoRA there vLLM's CPU kernels fail
("einsum(): subscript b has size 4 for operand 1 does not broadcast with previously seen size 1500", reproduced by
``bench/vllm_repro.py``). whisper-lora therefore tells vLLM to wrap only the decoder-token layers
(``--lora-target-modules`` with their full names) and refuses adapters that carry weights anywhere else: served
without them, those adapters would silently decode differently from what they were trained and measured as.

vLLM's CPU LoRA kernels (``vllm/lora/ops/torch_ops``) also index the adapter slots with -1 for requests without an
adapter, which in PyTorch is the last slot: in a batch that mixes adapters and the plain base, or after an adapter was
loaded into the last slot, a base request is decoded with some other language's adapter (reproduced by
``bench/vllm_repro.py``). ``write_zero_adapter`` makes an all-zero adapter that serves the untouched base through a
real slot, so no request ever takes index -1.

Nothing here imports vLLM; it runs in the training environment and prints the command for the serving one.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from whisper_lora.atomic import atomic_directory
from whisper_lora.errors import AdapterError, format_choices

# vLLM's runtime name for each peft module suffix of a decoder layer (q/k/v of self-attention are packed into qkv_proj)
_DECODER_TOKEN_MODULES = {
    "self_attn.q_proj": "self_attn.qkv_proj",
    "self_attn.k_proj": "self_attn.qkv_proj",
    "self_attn.v_proj": "self_attn.qkv_proj",
    "self_attn.out_proj": "self_attn.out_proj",
    "encoder_attn.q_proj": "encoder_attn.q_proj",
    "encoder_attn.out_proj": "encoder_attn.out_proj",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}
BASE_ADAPTER = "base"  # served name of the all-zero adapter that stands for the untouched base on CPU
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_[AB](\.[^.]+)?\.weight$")
_DECODER = re.compile(r"^model\.decoder\.layers\.(?P<layer>\d+)\.(?P<rest>.+)$")


def adapted_modules(adapter_dir: str | Path) -> list[str]:
    """Module names (transformers' naming, e.g. ``model.decoder.layers.0.self_attn.q_proj``) that carry LoRA weights."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise AdapterError(f"{adapter_dir}: no adapter_model.safetensors (vLLM reads only safetensors adapters)")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    modules, other = set(), []
    for k in keys:
        m = _KEY.match(k)
        if m:
            modules.add(m.group("module"))
        else:
            other.append(k)
    if other:
        raise AdapterError(
            f"{adapter_dir}: tensors other than LoRA A/B weights ({format_choices(other[:5])}); vLLM would load them as "
            "extra modules or refuse them"
        )
    return sorted(modules)


def vllm_modules(adapter_dir: str | Path) -> list[str]:
    """vLLM runtime module names this adapter needs wrapped; ``AdapterError`` if vLLM cannot apply it exactly."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    problems = []
    if cfg.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by vLLM")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save={cfg['modules_to_save']!r} (full modules) are not LoRA weights")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']!r}: vLLM applies LoRA A/B only")
    if cfg.get("trainable_token_indices"):  # its weights then hold a token row, which the check below would name
        raise AdapterError(
            f"adapter {Path(adapter_dir).name!r} cannot be served by vLLM: it adds a language token (an embedding row, "
            "trainable_token_indices), and vLLM applies LoRA A/B weights over the base's own vocabulary, whose "
            "tokenizer has no such token; serve it with `whisper-lora serve`, or train it with language_token: proxy"
        )
    out, off = set(), []
    for name in adapted_modules(adapter_dir):
        m = _DECODER.match(name)
        runtime = _DECODER_TOKEN_MODULES.get(m.group("rest")) if m else None
        if runtime is None:
            off.append(name)
        else:
            out.add(f"model.decoder.layers.{m.group('layer')}.{runtime}")
    if off:
        kinds = sorted({_kind(n) for n in off})
        problems.append(
            f"LoRA on {len(off)} module(s) that run on encoder frames rather than decoder tokens ({', '.join(kinds)}; "
            f"e.g. {off[0]}): vLLM cannot apply those per request. Train a servable adapter with "
            "stacks [decoder_self, decoder_cross] and cross_targets [q, out] in the lora section of its config"
        )
    if problems:
        raise AdapterError(f"adapter {Path(adapter_dir).name!r} cannot be served by vLLM: " + "; ".join(problems))
    return sorted(out)


def _kind(name: str) -> str:
    if name.startswith("model.encoder."):
        return "encoder layers"
    if ".encoder_attn.k_proj" in name or ".encoder_attn.v_proj" in name:
        return "cross-attention k/v"
    return "modules outside the decoder"


def write_zero_adapter(like: str | Path, out: str | Path) -> Path:
    """An adapter shaped like ``like`` with every weight zero: it decodes exactly as the base (written atomically)."""
    import shutil

    from safetensors.torch import load_file, save_file

    like, out = Path(like), Path(out)
    tensors = {k: v.new_zeros(v.shape) for k, v in load_file(str(like / "adapter_model.safetensors")).items()}
    with atomic_directory(out) as tmp:
        shutil.copy(like / "adapter_config.json", tmp / "adapter_config.json")
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


@dataclass
class VllmPlan:
    """What `vllm serve` needs to serve a set of registry adapters over one base."""

    base: str  # model argument: a hub id or a local transformers checkpoint
    adapters: dict[str, str]  # served name (the language code) -> absolute adapter directory
    max_lora_rank: int
    target_modules: list[str] = field(default_factory=list)
    base_adapter: str | None = None  # all-zero adapter serving the plain base (CPU workaround, see module docstring)

    @property
    def served(self) -> dict[str, str]:
        """Every LoRA module vLLM loads: the adapters, plus the zero adapter under ``BASE_ADAPTER``."""
        return {**self.adapters, **({BASE_ADAPTER: self.base_adapter} if self.base_adapter else {})}

    def serve_args(self) -> list[str]:
        """Arguments after ``vllm serve``."""
        return [
            self.base,
            "--enable-lora",
            "--max-loras",
            str(len(self.served)),
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--lora-modules",
            *(f"{name}={path}" for name, path in self.served.items()),
            "--lora-target-modules",
            *self.target_modules,
        ]

    def llm_kwargs(self) -> dict:
        """The same settings as keyword arguments of ``vllm.LLM`` (offline use)."""
        return {
            "model": self.base,
            "enable_lora": True,
            "max_loras": len(self.served),
            "max_lora_rank": self.max_lora_rank,
            "lora_target_modules": list(self.target_modules),
        }

    def command(self) -> str:
        return shlex.join(["vllm", "serve", *self.serve_args()])


def plan_vllm(
    registry, languages: list[str] | None = None, base: str | None = None, base_adapter: str | Path | None = None
) -> VllmPlan:
    """Check the adapters (all healthy ones, or ``languages``) and build the `vllm serve` plan.

    ``base`` defaults to the adapters' public base id (``openai/whisper-base``); pass a local checkpoint directory where
    the hub cannot be reached. All adapters must share one base. ``base_adapter``: a directory to write the all-zero
    adapter to, served as ``base`` (needed on CPU whenever base requests share the engine with adapters).
    """
    good, broken = registry.scan()
    by_name = {e.name: e for e in good}
    if languages:
        missing = [lang for lang in languages if lang not in by_name]
        if missing:
            bad = {b.name: b.reason for b in broken}
            why = "; ".join(f"{m}: {bad[m]}" for m in missing if m in bad)
            raise AdapterError(
                f"no usable adapter for {missing!r} in {registry.root}"
                + (f" ({why})" if why else "")
                + f"; available: {format_choices(by_name)}"
            )
        entries = [by_name[lang] for lang in languages]
    else:
        entries = good
    if not entries:
        raise AdapterError(f"no usable adapters in {registry.root}")
    refusals, modules, ranks, bases = [], set(), [], set()
    for e in entries:
        try:
            modules.update(vllm_modules(e.path))
        except AdapterError as err:
            refusals.append(str(err))
            continue
        cfg = json.loads((e.path / "adapter_config.json").read_text())
        ranks.append(int(cfg["r"]))
        bases.add((e.metadata.base.get("fingerprint"), cfg.get("base_model_name_or_path")))
    if refusals:
        raise AdapterError(
            "; ".join(refusals) + ". Leave them out with --languages (servable: "
            f"{format_choices(e.name for e in entries if not any(repr(e.name) in r for r in refusals)) or 'none'})"
        )
    if len({fp for fp, _ in bases}) > 1:
        raise AdapterError(f"the adapters were trained on different bases ({sorted(bases)}); vLLM serves one base")
    rank = next((r for r in _VLLM_RANKS if r >= max(ranks)), None)
    if rank is None:
        raise AdapterError(f"LoRA rank {max(ranks)} exceeds vLLM's largest --max-lora-rank {_VLLM_RANKS[-1]}")
    if BASE_ADAPTER in {e.name for e in entries} and base_adapter:
        raise AdapterError(f"an adapter is named {BASE_ADAPTER!r}, the name reserved for the zero adapter")
    return VllmPlan(
        base=base or next(iter(bases))[1],
        adapters={e.name: str(e.path) for e in entries},
        max_lora_rank=rank,
        target_modules=sorted(modules),
        base_adapter=str(write_zero_adapter(entries[0].path, base_adapter).resolve()) if base_adapter else None,
    )
