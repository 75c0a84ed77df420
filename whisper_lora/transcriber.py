"""One base model in memory, many language adapters: route, hot-swap and auto-detect per request."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .adapter_io import load_adapter
from .data.audio import N_SAMPLES, SAMPLE_RATE, load_audio
from .errors import ConfigError, format_choices
from .languages import resolve_language
from .model import load_base_model
from .registry import AdapterEntry, AdapterRegistry

BASE = "__base__"  # peft's name for "no adapter" in mixed batches
AUTO = "auto"
ROUTE = "route"  # adapter choice: let the language pick
HOTSWAP_SLOT = "active"
Mode = Literal["routed", "hotswap"]


@dataclass(frozen=True)
class Transcription:
    """The result for one input."""

    text: str
    language: str  # language decoded with (registry code, or Whisper's code when auto-detected)
    language_probability: float | None  # detection confidence; None when the language was given
    adapter: str | None  # adapter used, None for the untouched base

    def to_dict(self) -> dict:
        return {
            "language": self.language,
            "language_probability": self.language_probability,
            "adapter": self.adapter,
            "text": self.text,
        }


class Transcriber:
    """Transcribe with per-language adapters on one shared base model.

    ``mode="routed"`` keeps up to ``max_loaded`` adapters attached (LRU) and serves batches
    that mix languages in one ``generate`` call (peft ``adapter_names``). ``mode="hotswap"``
    keeps one adapter slot and swaps weights in place (peft hot-swap); up to ``max_loaded``
    adapters' weights stay cached in memory. Languages without an adapter get the base model.
    Calls are serialised by a lock, so threads can share one instance. int8 bases load with
    ``int8_threshold=0.0`` by default so that batch composition never changes a result.
    """

    def __init__(
        self,
        base: str | None = None,
        adapters: str | Path | AdapterRegistry | None = None,
        precision: str = "int8",
        device: str = "auto",
        mode: Mode = "routed",
        max_loaded: int = 8,
        detect_threshold: float = 0.5,
        num_beams: int = 1,
        max_new_tokens: int = 224,
        int8_threshold: float = 0.0,
    ):
        if mode not in ("routed", "hotswap"):
            raise ConfigError(f"invalid mode {mode!r}; valid: hotswap, routed")
        if max_loaded < 1:
            raise ConfigError(f"max_loaded={max_loaded!r} must be >= 1")
        self.registry = adapters if isinstance(adapters, AdapterRegistry) else AdapterRegistry(adapters)
        if base is None:  # the base the shipped adapters were trained on
            names = {e.metadata.base.get("name") for e in self.registry.entries()} or {"whisper-base"}
            base = sorted(names)[0]
        # threshold 0: no batch-wide outlier columns, so a mixed batch equals isolated calls in int8 too
        self.model, self.processor = load_base_model(base, precision, device, int8_threshold)
        self.base_info = self.model.whisper_lora_base
        self.mode, self.max_loaded = mode, max_loaded
        self.detect_threshold, self.num_beams, self.max_new_tokens = detect_threshold, num_beams, max_new_tokens
        self._peft = None  # PeftModel, created with the first adapter
        self._loaded: OrderedDict[str, object] = OrderedDict()  # routed: names; hotswap: (config, state)
        self._active: str | None = None  # hotswap: adapter currently in the slot
        self._slot_config = None  # hotswap: LoraConfig of the adapter in the slot
        self._slot_params: dict | None = None  # hotswap: the slot's parameters by name
        self._lock = threading.RLock()
        gen = self.model.generation_config
        self._lang_ids = dict(gen.lang_to_id) if getattr(gen, "lang_to_id", None) else {}

    # ---------------------------------------------------------------- adapters
    def _entry_for(self, language: str) -> AdapterEntry | None:
        """The adapter serving a (registry or Whisper) language code, if any."""
        entry = self.registry.find(language)
        if entry is None:  # a detected Whisper code (`ar`) may be served by a proxy adapter (`ary`)
            whisper = resolve_language(language).whisper
            entry = next((e for e in self.registry.entries() if e.whisper_language == whisper), None)
        if entry is not None:
            self.registry.check_compatible(entry, self.base_info)
        return entry

    def _attach(self, entry: AdapterEntry) -> str:
        """Make ``entry`` usable; returns the peft adapter name to select."""
        if self.mode == "routed":
            if entry.name in self._loaded:
                self._loaded.move_to_end(entry.name)
                return entry.name
            if len(self._loaded) >= self.max_loaded:
                old, _ = self._loaded.popitem(last=False)
                self._peft.delete_adapter(old)
            self._peft = load_adapter(self._peft or self.model, entry.path, adapter_name=entry.name)
            self._loaded[entry.name] = None
            return entry.name
        return self._swap_in(entry)

    def _swap_in(self, entry: AdapterEntry) -> str:
        from peft import LoraConfig
        from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict
        from peft.utils.save_and_load import load_peft_weights

        if self._active == entry.name:
            return HOTSWAP_SLOT
        if entry.name not in self._loaded:
            config = LoraConfig.from_pretrained(str(entry.path))
            raw = load_peft_weights(str(entry.path), device=str(self.model.device))
            state = {
                k.replace(".lora_A.weight", f".lora_A.{HOTSWAP_SLOT}.weight").replace(
                    ".lora_B.weight", f".lora_B.{HOTSWAP_SLOT}.weight"
                ): v
                for k, v in raw.items()
            }
            if len(self._loaded) >= self.max_loaded:
                self._loaded.popitem(last=False)
            self._loaded[entry.name] = (config, state)
        self._loaded.move_to_end(entry.name)
        config, state = self._loaded[entry.name]
        if self._peft is None:
            self._peft = load_adapter(self.model, entry.path, adapter_name=HOTSWAP_SLOT)
        else:
            check_hotswap_configs_compatible(self._peft.peft_config[HOTSWAP_SLOT], config)
            if not self._copy_into_slot(config, state):
                hotswap_adapter_from_state_dict(self._peft, state, HOTSWAP_SLOT, config)
        self._slot_config, self._active = config, entry.name
        return HOTSWAP_SLOT

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
            self._slot_params = dict(self._peft.named_parameters())
        params = self._slot_params
        if any(k not in params or params[k].shape != v.shape for k, v in state.items()):
            return False
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
        return True

    def swap(self, language: str) -> str | None:
        """Make a language's adapter ready (hot-swap mode: put it in the slot); returns its name."""
        with self._lock:
            entry = self._entry_for(language)
            if entry is not None:
                self._attach(entry)
            return entry.name if entry else None

    # ---------------------------------------------------------------- detection
    @torch.no_grad()
    def detect_language(self, features: torch.Tensor) -> list[tuple[str, float]]:
        """Whisper's own language ID on the untouched base: (code, probability) per input."""
        if not self._lang_ids:
            raise ConfigError("this base model is English-only: it has no language tokens to detect with")
        model = self._peft or self.model
        sot = self.processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        dec = torch.full((features.shape[0], 1), sot, dtype=torch.long, device=features.device)
        ctx = self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
        with ctx:
            logits = model(input_features=features, decoder_input_ids=dec).logits[:, -1]
        tokens, ids = zip(*self._lang_ids.items(), strict=True)
        probs = logits[:, list(ids)].float().softmax(-1)
        best = probs.argmax(-1)
        return [(tokens[int(i)][2:-2], float(probs[n, i])) for n, i in enumerate(best)]

    # ---------------------------------------------------------------- decoding
    def _features(self, chunks: Sequence[np.ndarray]) -> torch.Tensor:
        feats = self.processor.feature_extractor(
            list(chunks), sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        return feats.to(self.model.device, dtype)

    def _generate(self, feats: torch.Tensor, whisper_langs: list[str], names: list[str], num_beams: int) -> list[str]:
        if len(whisper_langs) != feats.shape[0] or len(names) != feats.shape[0]:
            raise ConfigError("internal: one language and one adapter name per input are required")
        kw = dict(
            input_features=feats,
            task="transcribe",
            language=whisper_langs,
            num_beams=num_beams,
            max_new_tokens=self.max_new_tokens,
        )
        if self._peft is None or all(n == BASE for n in names):
            ctx = self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
            with ctx:
                ids = (self._peft or self.model).generate(**kw)
        elif len(set(names)) == 1:
            self._peft.set_adapter(names[0])
            ids = self._peft.generate(**kw)
        else:
            self._peft.eval()  # peft mixed batches are inference-only
            ids = self._peft.generate(**kw, adapter_names=names)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def transcribe_batch(
        self,
        audios: Sequence[str | Path | np.ndarray],
        language: str | Sequence[str] = AUTO,
        num_beams: int | None = None,
        adapter: str | None | Sequence[str | None] = ROUTE,
    ) -> list[Transcription]:
        """Transcribe several inputs, each with its own language (or ``auto``) and adapter.

        ``adapter`` is ``"route"`` (the language picks it), ``None`` (the untouched base) or an
        adapter name, for all inputs or one per input. A named adapter with ``language="auto"``
        decodes in the adapter's own language.
        """
        langs = [language] * len(audios) if isinstance(language, str) else list(language)
        forced = [adapter] * len(audios) if adapter is None or isinstance(adapter, str) else list(adapter)
        if len(langs) != len(audios) or len(forced) != len(audios):
            raise ConfigError(f"{len(audios)} inputs but {len(langs)} languages and {len(forced)} adapter choices")
        for lang in langs:
            if lang != AUTO:
                resolve_language(lang)  # validate before touching the model
        entries = {}
        for name in {f for f in forced if f not in (None, ROUTE)}:
            entries[name] = self.registry.get(name)
            self.registry.check_compatible(entries[name], self.base_info)
        for i, f in enumerate(forced):
            if f in entries and langs[i] == AUTO:
                langs[i] = entries[f].language
        beams = self.num_beams if num_beams is None else num_beams
        if beams < 1:
            raise ConfigError(f"num_beams={beams!r} must be >= 1")
        arrays = [load_audio(a) if not isinstance(a, np.ndarray) else a.astype(np.float32) for a in audios]
        chunks, owner = [], []
        for i, a in enumerate(arrays):  # audio past 30 s is decoded window by window, same adapter
            for start in range(0, max(len(a), 1), N_SAMPLES):
                chunks.append(a[start : start + N_SAMPLES])
                owner.append(i)
        with self._lock:
            feats = self._features(chunks)
            first = [owner.index(i) for i in range(len(arrays))]
            detected: dict[int, tuple[str, float]] = {}
            auto = [i for i, lang in enumerate(langs) if lang == AUTO]  # forced adapters already set theirs
            if auto:
                for i, d in zip(auto, self.detect_language(feats[[first[i] for i in auto]]), strict=True):
                    detected[i] = d
            plans = []  # (language reported, probability, adapter entry or None, whisper code)
            for i, lang in enumerate(langs):
                if lang == AUTO:
                    code, prob = detected[i]
                    routed = forced[i] == ROUTE and prob >= self.detect_threshold
                    entry = self._entry_for(code) if routed else entries.get(forced[i])
                    plans.append((code, prob, entry, code))
                else:
                    info = resolve_language(lang)
                    entry = self._entry_for(info.code) if forced[i] == ROUTE else entries.get(forced[i])
                    plans.append((info.code, None, entry, info.whisper))
            texts = self._decode(feats, owner, plans, beams)
        return [
            Transcription(" ".join(t for t in texts[i] if t), p[0], p[1], p[2].name if p[2] else None)
            for i, p in enumerate(plans)
        ]

    def _decode(self, feats, owner, plans, beams) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in plans]
        if self.mode == "routed":
            needed = {p[2].name: p[2] for p in plans if p[2]}
            if len(needed) > self.max_loaded:
                raise ConfigError(
                    f"this batch needs {len(needed)} adapters but max_loaded={self.max_loaded}; "
                    "split the batch or raise max_loaded"
                )
            for name in needed:  # needed adapters become most recent, so eviction spares them
                if name in self._loaded:
                    self._loaded.move_to_end(name)
            for entry in needed.values():
                self._attach(entry)
            names = [plans[i][2].name if plans[i][2] else BASE for i in owner]
            texts = self._generate(feats, [plans[i][3] for i in owner], names, beams)
            for i, t in zip(owner, texts, strict=True):
                out[i].append(t)
            return out
        groups: OrderedDict[str | None, list[int]] = OrderedDict()  # hot-swap: one adapter at a time
        for k, i in enumerate(owner):
            groups.setdefault(plans[i][2].name if plans[i][2] else None, []).append(k)
        for name, rows in groups.items():
            slot = self._swap_in(plans[owner[rows[0]]][2]) if name else BASE
            texts = self._generate(feats[rows], [plans[owner[k]][3] for k in rows], [slot] * len(rows), beams)
            for k, t in zip(rows, texts, strict=True):
                out[owner[k]].append(t)
        return out

    def transcribe(
        self,
        audio: str | Path | np.ndarray,
        language: str = AUTO,
        num_beams: int | None = None,
        adapter: str | None = ROUTE,
    ) -> Transcription:
        """Transcribe one input with its language's adapter (``auto``: detect it first)."""
        return self.transcribe_batch([audio], language, num_beams, adapter)[0]

    def adapters(self) -> list[str]:
        """Languages with an adapter in the registry."""
        return self.registry.names()

    def __repr__(self) -> str:
        return (
            f"Transcriber(base={self.base_info.name!r}, precision={self.base_info.precision!r}, mode={self.mode!r}, "
            f"adapters={format_choices(self.adapters()) or 'none'})"
        )
