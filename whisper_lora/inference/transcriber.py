"""One base model in memory, many language adapters: route, hot-swap and auto-detect per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from whisper_lora.base.model import load_base_model
from whisper_lora.data.audio import N_SAMPLES, SAMPLE_RATE, check_signal, is_silent, load_audio
from whisper_lora.errors import ConfigError, format_choices
from whisper_lora.inference.decode import Decoding, features, generate_texts, long_segments, looped
from whisper_lora.inference.language_id import LanguageEvidence, language_evidence, language_tokens
from whisper_lora.inference.longform import DecodeOptions, Segment
from whisper_lora.inference.pool import make_pool
from whisper_lora.inference.routing import DEFAULT_THRESHOLD, FORCED, RouteDecision, Router
from whisper_lora.languages import resolve_language
from whisper_lora.registry.catalog import AdapterEntry, AdapterRegistry, BrokenAdapter

log = logging.getLogger("whisper_lora")

AUTO = "auto"
ROUTE = "route"  # adapter choice: let the language pick
Mode = Literal["routed", "hotswap"]


@dataclass(frozen=True)
class Transcription:
    """The result for one input."""

    text: str
    language: str  # language decoded with (registry code, or Whisper's code when auto-detected)
    language_probability: float | None  # detection confidence; None when the language was given
    adapter: str | None  # adapter used, None for the untouched base
    duration: float | None = None  # seconds of audio
    segments: tuple[Segment, ...] | None = None  # timestamped pieces, when asked for (``timestamps=True``)
    route: str = FORCED  # how the adapter was chosen: router, abstained, whisper-lid, forced (routing.py)

    def to_dict(self) -> dict:
        d = {
            "language": self.language,
            "language_probability": self.language_probability,
            "adapter": self.adapter,
            "route": self.route,
            "duration": self.duration,
            "text": self.text,
        }
        if self.segments is not None:
            d["segments"] = [s.to_dict() for s in self.segments]
        return d


class StepGate(Protocol):
    """How long-form decoding shares the model (``serving/scheduler.py``): asked at every decoding step."""

    def should_yield(self) -> bool:
        """True: give the model up now (other work is waiting); may raise to cancel the decode."""

    def wait(self) -> None:
        """Called with the model given up; returns when the decode may continue (or raises to cancel it)."""


@dataclass(frozen=True)
class PlannedInput:
    """How one input will be decoded, decided before the model is touched."""

    language: str  # language reported (registry code, or Whisper's code when auto-detected)
    probability: float | None  # detection confidence; None when the language was given
    entry: AdapterEntry | None  # adapter to decode with; None for the untouched base
    whisper: str  # Whisper language token code the decoder is prompted with
    route: str = FORCED  # how the adapter was chosen


class Transcriber:
    """Transcribe with per-language adapters on one shared base model.

    ``mode="routed"`` keeps up to ``max_loaded`` adapters attached (LRU) and serves batches
    that mix languages in one ``generate`` call (peft ``adapter_names``). ``mode="hotswap"``
    keeps one adapter slot and swaps weights in place (peft hot-swap); up to ``max_loaded``
    adapters' weights stay cached in memory. Languages without an adapter get the base model.
    ``language="auto"`` inputs are routed by ``inference/routing.py``: a classifier learnt from the
    adapters' language profiles (their own training speech), abstaining to the base below
    ``detect_threshold``; ``languages`` restricts routing to a deployment's candidate languages.
    Adapters that fail validation or were trained on another base are left out and listed by
    ``broken_adapters()``; asking for one raises an ``AdapterError`` with the reason.
    Calls are serialised by a lock, so threads can share one instance; a long-form decode given a
    ``gate`` (``StepGate``) releases it between decoding steps when the gate says so.
    ``refresh_adapters()`` picks up adapter directories added, removed or replaced on disk. int8 bases load with
    ``int8_threshold=0.0`` by default so that batch composition does not change a result (up to
    float rounding of batch-size-dependent kernels, which can flip a near-tie).

    Inputs past 30 s, and every input when ``timestamps=True``, are decoded the way Whisper's own
    ``transcribe`` does it (sequential windows, previous text as prompt, temperature fallback,
    no-speech skip; ``decode_options``), one input at a time with its adapter.
    """

    def __init__(
        self,
        base: str | None = None,
        adapters: str | Path | AdapterRegistry | None = None,
        precision: str = "int8",
        device: str = "auto",
        mode: Mode = "routed",
        max_loaded: int = 8,
        detect_threshold: float = DEFAULT_THRESHOLD,
        num_beams: int = 1,
        max_new_tokens: int = 224,
        int8_threshold: float = 0.0,
        decode_options: DecodeOptions | None = None,
        languages: Sequence[str] | None = None,
    ):
        registry = adapters if isinstance(adapters, AdapterRegistry) else AdapterRegistry(adapters)
        if mode not in ("routed", "hotswap"):
            raise ConfigError(f"invalid mode {mode!r}; valid: hotswap, routed")
        if max_loaded < 1:
            raise ConfigError(f"max_loaded={max_loaded!r} must be >= 1")
        if not 0 <= detect_threshold <= 1:
            raise ConfigError(f"detect_threshold={detect_threshold!r} must be in [0, 1]")
        if languages is not None:
            languages = [resolve_language(x).code for x in languages]  # ConfigError names the valid codes
            if not languages:
                raise ConfigError("languages=[] leaves nothing to route to; pass None for every language")
        if base is None:  # the base the shipped adapters were trained on
            names = {e.metadata.base.get("name") for e in registry.entries()} or {"whisper-base"}
            base = sorted(names)[0]
        # threshold 0: no batch-wide outlier columns, so a mixed batch equals isolated calls in int8 too
        loaded = load_base_model(base, precision, device, int8_threshold)
        self.model, self.processor, self.base_info = loaded.model, loaded.processor, loaded.info
        self.registry = registry.with_base(self.base_info)  # adapters of another base count as broken
        self.mode = mode
        self.decoding = Decoding(num_beams, max_new_tokens, decode_options or DecodeOptions())  # decode.py
        self._pool = make_pool(mode, self.model, max_loaded)
        self._lock = threading.Lock()  # one decode at a time (a paused long-form decode releases it)
        self._refresh_lock = threading.Lock()
        self._unload_lock = threading.Lock()
        self._unloading: set[str] = set()  # adapters to drop when the model is next free (``unload``)
        self._refreshed = time.monotonic()
        for b in self.registry.broken():
            log.warning("adapter %s left out: %s", b.name, b.reason)
        try:
            self._codes = list(language_tokens(self.model, self.processor))
        except ConfigError:
            self._codes = []  # English-only bases have no language ID to route with
        self._languages = languages
        self._threshold = detect_threshold
        self.router = self._make_router()
        self.detect_threshold = detect_threshold

    def _make_router(self) -> Router | None:
        if not self._codes:
            return None
        return Router(
            self.registry.entries(), self.base_info.fingerprint, self._codes, self._languages, self._threshold
        )

    @property
    def detect_threshold(self) -> float:
        """Routing's confidence floor (the router's ``threshold``): below it, ``auto`` gives the base."""
        return self._threshold

    @detect_threshold.setter
    def detect_threshold(self, value: float) -> None:
        self._threshold = value
        if self.router is not None:  # one value: the router's is the one that decides
            self.router.threshold = value

    # ---------------------------------------------------------------- adapters
    def _entry_for(self, language: str) -> AdapterEntry | None:
        """The adapter serving a (registry or Whisper) language code, if any; a broken one raises why."""
        return self.registry.for_language(language)

    def swap(self, language: str) -> str | None:
        """Make a language's adapter ready (hot-swap mode: put it in the slot); returns its name."""
        with self._lock:
            entry = self._entry_for(language)
            if entry is not None:
                self._pool.attach(entry)
            return entry.name if entry else None

    def unload(self, name: str) -> None:
        """Drop an adapter's weights from memory (it loads again when next used). Never waits for a decode: while
        one holds the model, the adapter is dropped before the next decode, unless that one uses it."""
        with self._unload_lock:
            self._unloading.add(name)
        if self._lock.acquire(blocking=False):
            try:
                self._apply_unloads(set())
            finally:
                self._lock.release()

    def _apply_unloads(self, keep: set[str]) -> None:
        with self._unload_lock:
            names, self._unloading = self._unloading - keep, set()  # the ones in ``keep`` are in use again
        for name in names:
            self._pool.detach(name)

    def loaded_adapters(self) -> list[str]:
        """Adapters held in memory, least recently used first (at most ``max_loaded``)."""
        return self._pool.loaded()

    def adapters(self) -> list[str]:
        """Languages with a usable adapter in the registry."""
        return self.registry.names()

    def broken_adapters(self) -> list[BrokenAdapter]:
        """Registry directories left out, each with its reason."""
        return self.registry.broken()

    def refresh_adapters(self, min_interval: float = 0.0) -> bool:
        """Pick up adapter directories added, removed, replaced or rewritten on disk since the last look.

        Looks (stat calls only) at most every ``min_interval`` seconds; when something changed, the
        registry is read again and the router refitted. A changed adapter's old weights are dropped
        the next time it is used (its version differs), so what decodes is what ``adapters()`` and
        ``routing()`` report. Returns True when something changed.
        """
        if min_interval and time.monotonic() - self._refreshed < min_interval:
            return False
        with self._refresh_lock:
            self._refreshed = time.monotonic()
            if not self.registry.changed():
                return False
            self.registry.refresh()
            for b in self.registry.broken():
                log.warning("adapter %s left out: %s", b.name, b.reason)
            self.router = self._make_router()
            log.info("adapter registry changed on disk: now serving %s", format_choices(self.adapters()) or "none")
            return True

    # ---------------------------------------------------------------- detection
    def features(self, audios: Sequence[np.ndarray]) -> torch.Tensor:
        """Log-mel features of up to 30 s signals, on the model's device and dtype."""
        return features(self.model, self.processor, audios)

    def language_evidence(self, audios: Sequence[np.ndarray]) -> LanguageEvidence:
        """What routing looks at (``inference/language_id.py``), from one pass of the untouched base."""
        with self._lock:
            return self._evidence(audios)

    def _evidence(self, audios: Sequence[np.ndarray]) -> LanguageEvidence:
        with self._pool.base_model() as model:
            return language_evidence(model, self.processor, audios)

    def detect_language(self, audios: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """Whisper's own language ID on the untouched base: (code, probability) per input."""
        return self.language_evidence(audios).detected()

    def route(self, audios: Sequence[str | Path | np.ndarray]) -> list[RouteDecision]:
        """Where ``auto`` sends each input (its first 30 s), without decoding it."""
        self._router()  # before any file is read
        arrays = [a if isinstance(a, np.ndarray) else load_audio(a) for a in audios]
        with self._lock:
            return self._route(arrays)

    def _router(self) -> Router:
        router = self.router  # one read: refresh_adapters() may replace it meanwhile
        if router is None:
            raise ConfigError("this base model is English-only: it has no language tokens to route with")
        return router

    def _route(self, arrays: Sequence[np.ndarray]) -> list[RouteDecision]:
        return self._router().route(self._evidence([a[:N_SAMPLES] for a in arrays]))

    def routing(self) -> dict | None:
        """How each adapter is routed (router or Whisper's language ID, and why), for health checks."""
        return self.router.describe() if self.router else None

    # ---------------------------------------------------------------- decoding
    def _pause(self, gate: StepGate | None, entry: AdapterEntry | None) -> Callable[[], None] | None:
        """The step hook of one long-form decode: when ``gate`` says so, hand the model (and the lock) over
        and take it back with this decode's adapter active again."""
        if gate is None:
            return None

        def pause() -> None:
            if not gate.should_yield():
                return
            self._pool.suspend(entry)
            self._lock.release()
            try:
                gate.wait()
            finally:
                self._lock.acquire()
                self._pool.resume(entry)

        return pause

    def _decode_timed(self, rows, arrays, plans, decoding: Decoding, gate=None) -> list[list[Segment]]:
        """Segments of ``arrays[i]`` for i in ``rows`` (long-form algorithm), one input at a time with its adapter."""
        return [
            self._pool.decode_groups(
                [plans[i].entry],
                lambda model, _, i=i: [
                    long_segments(
                        model,
                        self.processor,
                        arrays[i],
                        plans[i].whisper,
                        decoding,
                        self._pause(gate, plans[i].entry),
                    )
                ],
            )[0]
            for i in rows
        ]

    def _plan(self, langs, forced, entries, decided: dict[int, RouteDecision]) -> list[PlannedInput]:
        plans = []
        for i, lang in enumerate(langs):
            if lang == AUTO:
                d = decided[i]
                if forced[i] == ROUTE:
                    entry, route = (self.registry.get(d.adapter) if d.adapter else None), d.route
                else:
                    entry, route = entries.get(forced[i]), FORCED
                whisper = entry.whisper_language if entry else resolve_language(d.language).whisper
                plans.append(PlannedInput(d.language, d.probability, entry, whisper, route))
            else:
                info = resolve_language(lang)
                entry = self._entry_for(info.code) if forced[i] == ROUTE else entries.get(forced[i])
                plans.append(PlannedInput(info.code, None, entry, info.whisper))
        return plans

    def transcribe_batch(
        self,
        audios: Sequence[str | Path | np.ndarray],
        language: str | Sequence[str] = AUTO,
        num_beams: int | None = None,
        adapter: str | None | Sequence[str | None] = ROUTE,
        timestamps: bool = False,
        options: DecodeOptions | None = None,
        gate: StepGate | None = None,
        decisions: Sequence[RouteDecision | None] | None = None,
    ) -> list[Transcription]:
        """Transcribe several inputs, each with its own language (or ``auto``) and adapter.

        ``adapter`` is ``"route"`` (the language picks it), ``None`` (the untouched base) or an
        adapter name, for all inputs or one per input. A named adapter with ``language="auto"``
        decodes in the adapter's own language. ``timestamps=True`` returns ``segments``; inputs
        past 30 s are always decoded window by window with timestamps (``options``, default the
        Transcriber's ``decode_options``). Inputs with no samples or non-finite samples raise
        ``AudioError``; silent inputs are not decoded (they give no text). ``gate`` lets window-by-window
        decoding give the model up between decoding steps (``StepGate``; the server's scheduler).
        ``decisions`` are routes already taken (``route()``, maybe in another process: on Ray Serve the ingress
        routes before it picks a replica holding the adapter), one per input or None; other ``auto`` inputs are
        routed here.
        """
        langs = [language] * len(audios) if isinstance(language, str) else list(language)
        forced = [adapter] * len(audios) if adapter is None or isinstance(adapter, str) else list(adapter)
        given = list(decisions) if decisions is not None else [None] * len(audios)
        if len(langs) != len(audios) or len(forced) != len(audios) or len(given) != len(audios):
            raise ConfigError(
                f"{len(audios)} inputs but {len(langs)} languages, {len(forced)} adapter choices "
                f"and {len(given)} route decisions"
            )
        for lang in langs:
            if lang != AUTO:
                resolve_language(lang)  # validate before touching the model
        entries = {name: self.registry.get(name) for name in {f for f in forced if f not in (None, ROUTE)}}
        for i, f in enumerate(forced):
            if f in entries and langs[i] == AUTO:
                langs[i] = entries[f].language
        decoding = self.decoding
        if num_beams is not None or options is not None:  # Decoding validates them
            beams = decoding.num_beams if num_beams is None else num_beams
            decoding = replace(decoding, num_beams=beams, options=options or decoding.options)
        arrays = [
            load_audio(a) if not isinstance(a, np.ndarray) else check_signal(a, f"input {i}")
            for i, a in enumerate(audios)
        ]
        long_form = timestamps or any(len(a) > N_SAMPLES for a in arrays)
        with self._lock:
            decided = {i: d for i, d in enumerate(given) if d is not None and langs[i] == AUTO}
            # forced adapters already set their language
            auto = [i for i, lang in enumerate(langs) if lang == AUTO and i not in decided]
            if auto:  # routing looks at the first 30 s of a recording, once per recording
                decisions = self._route([arrays[i] for i in auto])
                decided.update(zip(auto, decisions, strict=True))
            plans = self._plan(langs, forced, entries, decided)
            self._apply_unloads({p.entry.name for p in plans if p.entry})
            speech = [i for i, a in enumerate(arrays) if not is_silent(a)]  # silent inputs give no text
            segments: list = [()] * len(arrays)
            texts = [""] * len(arrays)
            if speech and long_form:
                decoded = self._decode_timed(speech, arrays, plans, decoding, gate)
                for i, segs in zip(speech, decoded, strict=True):
                    segments[i], texts[i] = tuple(segs), " ".join(s.text for s in segs)
            elif speech:
                texts_speech = self._pool.decode(
                    self.features([arrays[i] for i in speech]),
                    [plans[i].whisper for i in speech],
                    [plans[i].entry for i in speech],
                    lambda m, f, lg, names: generate_texts(m, self.processor, f, lg, decoding, names),
                )
                for i, t in zip(speech, texts_speech, strict=True):
                    texts[i] = t
                # loop guard: a repetitive transcript is decoded again with the temperature fallback
                again = [speech[k] for k in looped(texts_speech, decoding)]
                if again:
                    log.info(
                        "%d transcript(s) look like a repetition loop; decoding them again with fallback", len(again)
                    )
                    for i, segs in zip(again, self._decode_timed(again, arrays, plans, decoding, gate), strict=True):
                        texts[i] = " ".join(s.text for s in segs)
        return [
            Transcription(
                texts[i],
                p.language,
                p.probability,
                p.entry.name if p.entry else None,
                round(len(arrays[i]) / SAMPLE_RATE, 3),
                segments[i] if timestamps else None,
                p.route,
            )
            for i, p in enumerate(plans)
        ]

    def transcribe(
        self,
        audio: str | Path | np.ndarray,
        language: str = AUTO,
        num_beams: int | None = None,
        adapter: str | None = ROUTE,
        timestamps: bool = False,
        options: DecodeOptions | None = None,
    ) -> Transcription:
        """Transcribe one input with its language's adapter (``auto``: detect it first)."""
        return self.transcribe_batch([audio], language, num_beams, adapter, timestamps, options)[0]

    def __repr__(self) -> str:
        return (
            f"Transcriber(base={self.base_info.name!r}, precision={self.base_info.precision!r}, mode={self.mode!r}, "
            f"adapters={format_choices(self.adapters()) or 'none'})"
        )
