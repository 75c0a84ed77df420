"""One base model in memory, many language adapters: route, hot-swap and auto-detect per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from whisper_lora.base.model import load_base_model
from whisper_lora.base.trim import WINDOW_FRAMES, allow_short_inputs, trimmed_frames
from whisper_lora.data.audio import N_SAMPLES, SAMPLE_RATE, check_signal, load_audio
from whisper_lora.errors import ConfigError, format_choices
from whisper_lora.inference.decode import (
    Attempt,
    Decoding,
    Final,
    Inputs,
    decode_steps,
    encoder_outputs,
    features,
    generate_attempts,
    generate_windows,
    long_segments,
    model_windows,
    silence_reader,
    windowed,
    windows_with,
)
from whisper_lora.inference.generation import MAX_NEW_TOKENS
from whisper_lora.inference.graphs import DEFAULT_GRAPHS, bucket, check_graphs, graphs_on, may_compile
from whisper_lora.inference.language_id import LanguageEvidence, evidence_and_states, language_tokens
from whisper_lora.inference.longform import DecodeOptions, Segment
from whisper_lora.inference.plan import PlannedInput, needs_routing, plan
from whisper_lora.inference.pool import check_pool, make_pool
from whisper_lora.inference.request import AUTO, ROUTE, Request, Transcription
from whisper_lora.inference.routing import DEFAULT_THRESHOLD, RouteDecision, Router
from whisper_lora.languages import resolve_language
from whisper_lora.registry.catalog import AdapterEntry, AdapterRegistry, BrokenAdapter, serving_registry

__all__ = ["AUTO", "ROUTE", "Request", "StepGate", "Transcriber", "Transcription"]

log = logging.getLogger("whisper_lora")

Mode = Literal["routed", "hotswap"]


class StepGate(Protocol):
    """How long-form decoding shares the model (``serving/scheduler.py``): asked at every decoding step."""

    def should_yield(self) -> bool:
        """True: give the model up now (other work is waiting); may raise to cancel the decode."""

    def wait(self) -> None:
        """Called with the model given up; returns when the decode may continue (or raises to cancel it)."""


class Transcriber:
    """Transcribe with per-language adapters on one shared base model.

    ``mode="routed"`` keeps up to ``max_loaded`` adapters attached (LRU) and serves batches
    that mix languages in one ``generate`` call: row-indexed LoRA (``row_lora.py``: a fixed number of operations
    per layer whatever the number of adapters; ``row_indexed``, default on a GPU) or peft's ``adapter_names``
    (default on a CPU, where it measured as fast). ``mode="hotswap"``
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

    Short inputs of an adapter whose encoder trained on trimmed input are encoded at their own length plus the
    training's padding instead of a 30 s window, where the adapter's held-out measurement chose it
    (``AdapterMetadata.trimmed_input``; ``trimmed=False``: always windows): about 4x fewer seconds per short clip.

    ``graphs="on"`` (a bf16 or fp32 base, routed mode) decodes batches of 30 s windows with a static KV cache and a
    compiled step, CUDA graphs on a GPU (``graphs.py``); ``auto`` leaves it off until a device measures it faster.

    Inputs past 30 s, and every input when ``timestamps=True``, are decoded the way Whisper's own
    ``transcribe`` does it (sequential windows, previous text as prompt, temperature fallback,
    no-speech skip; ``decode_options``), every input of a call at once, each with its adapter (``seek.py``; with a
    ``gate``, and for beam search or word timestamps, one input at a time).
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
        max_new_tokens: int = MAX_NEW_TOKENS,
        int8_threshold: float = 0.0,
        decode_options: DecodeOptions | None = None,
        languages: Sequence[str] | None = None,
        row_indexed: bool | None = None,
        trimmed: bool = True,
        graphs: str = DEFAULT_GRAPHS,
    ):
        problems = check_pool(mode, max_loaded)  # every problem at once, before anything loads
        problems += check_graphs(graphs, precision, mode, row_indexed)
        if not 0 <= detect_threshold <= 1:
            problems.append(f"detect_threshold={detect_threshold!r} must be in [0, 1]")
        if languages is not None:
            codes = []
            for x in languages:
                try:
                    codes.append(resolve_language(x).code)
                except ConfigError as e:  # names the valid codes
                    problems.append(str(e))
            if not languages:
                problems.append("languages=[] leaves nothing to route to; pass None for every language")
            languages = codes
        try:
            self.decoding = Decoding(num_beams, max_new_tokens, decode_options or DecodeOptions())  # decode.py
        except ConfigError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("invalid Transcriber settings:\n  - " + "\n  - ".join(problems))
        registry = adapters if isinstance(adapters, AdapterRegistry) else serving_registry(adapters)
        if base is None:  # the base the shipped adapters were trained on
            names = {e.metadata.base.get("name") for e in registry.entries()} or {"whisper-base"}
            base = sorted(names)[0]
        # threshold 0: no batch-wide outlier columns, so a mixed batch equals isolated calls in int8 too
        loaded = load_base_model(base, precision, device, int8_threshold)
        self.model, self.processor, self.base_info = loaded.model, loaded.processor, loaded.info
        self.registry = registry.with_base(self.base_info)  # adapters of another base count as broken
        self.mode = mode
        self.detect_threshold = detect_threshold  # routing's confidence floor: below it, ``auto`` gives the base
        self.graphs = graphs_on(graphs)  # greedy 30 s windows decode with a static cache and a compiled step
        if self.graphs and row_indexed is None:
            row_indexed = True  # the only adapter path that is compiled (graphs.py)
        self._pool = make_pool(mode, self.model, max_loaded, self.processor.tokenizer, row_indexed)
        self.trimmed = trimmed  # short inputs of adapters that chose it are encoded trimmed (``_frames``)
        allow_short_inputs(self.model)
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
        self.router = self._make_router()

    def _make_router(self) -> Router | None:
        if not self._codes:
            return None
        return Router(self.registry.entries(), self.base_info.fingerprint, self._codes, self._languages)

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
        one holds the model, the adapter is dropped when that decode ends (or before the next one, unless it uses it)."""
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
            return self._evidence(audios)[0]

    def _evidence(
        self, audios: Sequence[np.ndarray], keep_states: bool = False
    ) -> tuple[LanguageEvidence, list[torch.Tensor]]:
        with self._pool.base_model() as model:
            return evidence_and_states(model, self.processor, audios, keep_states=keep_states)

    def detect_language(self, audios: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """Whisper's own language ID on the untouched base: (code, probability) per input."""
        return self.language_evidence(audios).detected()

    def route(self, audios: Sequence[str | Path | np.ndarray]) -> list[RouteDecision]:
        """Where ``auto`` sends each input (its first 30 s), without decoding it."""
        self._router()  # before any file is read
        arrays = [a if isinstance(a, np.ndarray) else load_audio(a) for a in audios]
        with self._lock:
            return self._route(arrays)[0]

    def _router(self) -> Router:
        router = self.router  # one read: refresh_adapters() may replace it meanwhile
        if router is None:
            raise ConfigError("this base model is English-only: it has no language tokens to route with")
        return router

    def _route(
        self, arrays: Sequence[np.ndarray], keep_states: bool = False
    ) -> tuple[list[RouteDecision], list[torch.Tensor]]:
        """Each input's route, and (``keep_states``) the base's encoder output of its first 30 s that routing computed."""
        router = self._router()
        evidence, states = self._evidence([a[:N_SAMPLES] for a in arrays], keep_states)
        return router.route(evidence, self.detect_threshold), states

    def routing(self) -> dict | None:
        """How each adapter is routed (router or Whisper's language ID, and why), for health checks."""
        return {**self.router.describe(), "threshold": self.detect_threshold} if self.router else None

    # ---------------------------------------------------------------- decoding
    def _between(self, gate: StepGate | None) -> Callable[[], None] | None:
        """The hook between two temperatures of a batch's fallback: when ``gate`` says so, hand the lock over
        (the pool sets each call's adapters itself, so nothing else needs restoring)."""
        return self._hand_over(gate)

    def _pause(self, gate: StepGate | None, entry: AdapterEntry | None) -> Callable[[], None] | None:
        """The step hook of one long-form decode: when ``gate`` says so, hand the model (and the lock) over
        and take it back with this decode's adapter active again."""
        return self._hand_over(gate, lambda: self._pool.suspend(entry), lambda: self._pool.resume(entry))

    def _hand_over(
        self, gate: StepGate | None, leave: Callable[[], None] | None = None, back: Callable[[], None] | None = None
    ) -> Callable[[], None] | None:
        """A hook that, when ``gate`` says other work waits, gives the lock up (after ``leave``), waits for the
        gate, and takes the lock back (then ``back``); None without a gate."""
        if gate is None:
            return None

        def pause() -> None:
            if not gate.should_yield():
                return
            if leave is not None:
                leave()
            self._lock.release()
            try:
                gate.wait()
            finally:
                self._lock.acquire()
                if back is not None:
                    back()

        return pause

    def transcribe_requests(
        self,
        requests: Sequence[Request],
        gate: StepGate | None = None,
        done: Callable[[int, Transcription], None] | None = None,
    ) -> list[Transcription]:
        """The one path of every transcription: plan (route ``auto`` inputs, choose each adapter), decode
        (``decode.decode_steps`` through the adapter pool), build the results.

        Requests with the same decoding settings share ``generate`` calls whatever their languages and adapters;
        each result equals the one its request gives alone. Inputs with no samples or non-finite samples raise
        ``AudioError``; silent inputs give no text. ``gate`` lets decoding give the model up between steps
        (``StepGate``; the server's scheduler): a long recording between its decoding steps, a batch of short ones
        between two temperatures of the fallback. ``done(i, result)`` is called for request ``i`` as soon as its
        result is final (a row that needs no fallback is answered before the rows that do fall back).
        """
        for i, r in enumerate(requests):
            if not isinstance(r, Request):
                raise ConfigError(f"request {i} is a {type(r).__name__}, not a Request")
            if r.adapter not in (None, ROUTE):
                self.registry.get(r.adapter)  # an unknown or broken adapter fails before any audio is read
        decodings = [r.decoding(self.decoding) for r in requests]  # Decoding validates the overrides
        arrays = [self._samples(r, i) for i, r in enumerate(requests)]
        results: list[Transcription | None] = [None] * len(requests)
        with self._lock:
            plans, encoded = self._plan(requests, arrays)
            self._apply_unloads({p.entry.name for p in plans if p.entry})

            def settle(i: int, text: str, segments: tuple[Segment, ...] | None) -> None:
                p = plans[i]
                results[i] = Transcription(
                    text=text,
                    language=p.language,
                    language_probability=p.probability,
                    adapter=p.entry.name if p.entry else None,
                    duration=round(len(arrays[i]) / SAMPLE_RATE, 3),
                    segments=segments,
                    route=p.route,
                )
                if done is not None:
                    done(i, results[i])

            groups: dict[tuple[Decoding, bool], list[int]] = {}
            for i, r in enumerate(requests):
                groups.setdefault((decodings[i], r.timed), []).append(i)
            try:
                for (decoding, timed), rows in groups.items():
                    final = lambda k, text, segs, rows=rows: settle(rows[k], text, segs)  # noqa: E731
                    states = {k: encoded[i] for k, i in enumerate(rows) if i in encoded}
                    self._decode(
                        [arrays[i] for i in rows], [plans[i] for i in rows], decoding, timed, gate, final, states
                    )
            finally:  # adapters unloaded while this call held the model go now, not at the next call
                self._apply_unloads(set())
        return results

    @staticmethod
    def _samples(request: Request, i: int) -> np.ndarray:
        if request.audio is None:
            raise ConfigError(f"request {i} has no audio")
        if isinstance(request.audio, np.ndarray):
            return check_signal(request.audio, f"input {i}")
        return load_audio(request.audio)

    def _plan(
        self, requests: Sequence[Request], arrays: Sequence[np.ndarray]
    ) -> tuple[list[PlannedInput], dict[int, torch.Tensor]]:
        """Step 1: route the ``auto`` inputs not routed yet (their first 30 s, in one pass), then plan each. Also
        returns, by request, the base's encoder outputs routing computed that the decode can start from
        (``_decodes_from_base_encoding``), so those inputs are encoded once."""
        todo = [i for i, r in enumerate(requests) if needs_routing(r)]
        decisions, states = self._route([arrays[i] for i in todo], keep_states=True) if todo else ([], [])
        decided = dict(zip(todo, decisions, strict=True))
        plans = [plan(self.registry, r, decided.get(i)) for i, r in enumerate(requests)]
        encoded = {
            i: s
            for i, s in zip(todo, states, strict=True)
            if self._decodes_from_base_encoding(requests[i], plans[i], len(arrays[i]))
        }
        return plans, encoded

    def _decodes_from_base_encoding(self, request: Request, plan: PlannedInput, n_samples: int) -> bool:
        """Whether an input's decode starts from the base's encoding of its 30 s window: a short input decoded in one
        piece (no timestamps) by the base or by an adapter that leaves the encoder untouched."""
        if request.timed or n_samples > N_SAMPLES:
            return False
        if plan.entry is None:
            return True
        return not plan.entry.touches_encoder and self._frames(plan, n_samples) == WINDOW_FRAMES

    def _decode(
        self,
        arrays,
        plans,
        decoding: Decoding,
        timed: bool,
        gate: StepGate | None,
        final: Final,
        states: dict[int, torch.Tensor] | None = None,
    ):
        """Step 2: ``decode.decode_steps`` with the pool as its hooks (a mixed batch, or one input's windows);
        ``states``: encoder outputs some rows start from (``_plan``)."""

        def encode_rows(entries, langs: list[str], feats: torch.Tensor) -> list[torch.Tensor]:
            return self._pool.decode(feats, langs, entries, lambda m, f, _, names: list(encoder_outputs(m, f, names)))

        def encode(rows: list[int], feats: torch.Tensor) -> list[torch.Tensor]:  # rows of one trimmed length
            return encode_rows([plans[i].entry for i in rows], [plans[i].whisper for i in rows], feats)

        compute = lambda rows: self.features([arrays[i] for i in rows])  # noqa: E731
        silence = silence_reader(self._pool.base_model, decoding)  # the base's decoder, after the pool's call
        inputs = Inputs(compute, states, lambda i: self._frames(plans[i], len(arrays[i])), encode, silence)

        calls = [0]  # ``ladder`` calls ``batch`` once per temperature: from the second call on, rows fall back

        def batch(rows: list[int], temperature: float, cut: bool) -> list[Attempt]:
            calls[0] += 1
            if gate is None or calls[0] == 1:
                # a call that may run compiled (graphs.py: one beam, 30 s windows) is padded to a bucket of rows
                beams = decoding.num_beams if temperature <= 0 else 1
                windows = all(self._frames(plans[i], len(arrays[i])) == WINDOW_FRAMES for i in rows)
                compiles = self.graphs and may_compile(beams, False, windows)
                attempts = self._pool.decode(
                    inputs(rows),
                    [plans[i].whisper for i in rows],
                    [plans[i].entry for i in rows],
                    lambda m, f, langs, names: generate_attempts(
                        m,
                        self.processor,
                        f,
                        langs,
                        decoding,
                        names,
                        temperature,
                        cut,
                        graphs=self.graphs and self._pool.graph_safe(),
                    ),
                    pad_to=bucket(len(rows)) if compiles else None,
                )
                return inputs.keep(rows, attempts)
            # a fallback step (a few looping or unlikely rows, up to the token limit): one adapter group at a time,
            # each giving the model up at any token when ``gate`` says so, as a long recording does
            entries = [plans[i].entry for i in rows]

            def run(model, group: list[int]) -> list[Attempt]:
                mine = [rows[k] for k in group]
                return generate_attempts(
                    model,
                    self.processor,
                    inputs(mine),
                    [plans[i].whisper for i in mine],
                    decoding,
                    None,
                    temperature,
                    cut,
                    pause=self._pause(gate, entries[group[0]]),
                )

            return inputs.keep(rows, self._pool.decode_groups(entries, run))

        def alone(i: int) -> list[Segment]:
            """One input's windows with its adapter active, giving the model up at any step when ``gate`` says so."""
            p = plans[i]
            pause = self._pause(gate, p.entry)
            # an adapter's windows read no-speech with the base's decoder (within the adapter's group: base_model()
            # nests there); the base's own decode is already untouched
            untouched = self._pool.base_model if p.entry is not None else None
            if windowed(decoding):
                run = lambda model, _: model_windows(  # noqa: E731
                    model, self.processor, [arrays[i]], [p.whisper], decoding, pause, untouched
                )
            else:  # beam search, word timestamps: transformers' own loop
                run = lambda model, _: [  # noqa: E731
                    long_segments(model, self.processor, arrays[i], p.whisper, decoding, pause, untouched)
                ]
            return self._pool.decode_groups([p.entry], run)[0]

        def windows(rows: list[int], done) -> None:
            if gate is not None or not windowed(decoding):  # the server's scheduler runs long inputs one at a time
                for i in rows:
                    done(i, alone(i))
                return
            # every input at once (up to max_loaded adapters a batch): each step's calls hold a window of every
            # unfinished input, with its own adapter
            for chunk in self._adapter_chunks([plans[i].entry for i in rows]):
                together([rows[k] for k in chunk], done)

        def together(rows: list[int], done) -> None:
            langs = [plans[i].whisper for i in rows]
            entries = [plans[i].entry for i in rows]

            def decode(ks: list[int], windows, temperature: float):
                return self._pool.decode(
                    windows,
                    [langs[k] for k in ks],
                    [entries[k] for k in ks],
                    lambda m, f, ls, names: generate_windows(m, self.processor, f, ls, decoding, names, temperature),
                )

            windows_with(
                self.model,
                self.processor,
                [arrays[i] for i in rows],
                decoding,
                encode=lambda ks, feats: encode_rows([entries[k] for k in ks], [langs[k] for k in ks], feats),
                silence=silence,  # the short path's: the base's decoder, after the pool's call
                decode=decode,
                done=lambda k, segs: done(rows[k], segs),
            )

        return decode_steps(arrays, decoding, timed, batch, windows, final, self._between(gate))

    def _adapter_chunks(self, entries: Sequence[AdapterEntry | None]) -> list[list[int]]:
        """Positions of ``entries`` in order, cut into runs that need at most ``max_loaded`` adapters each (a routed
        pool holds no more at once)."""
        chunks: list[list[int]] = [[]]
        names: set[str] = set()
        for k, e in enumerate(entries):
            if e is not None and e.name not in names and len(names) >= self._pool.max_loaded:
                chunks.append([])
                names = set()
            chunks[-1].append(k)
            if e is not None:
                names.add(e.name)
        return [c for c in chunks if c]

    def _frames(self, plan: PlannedInput, n_samples: int) -> int:
        """The log-mel frames a short input's encoder reads: its own length plus the adapter's training padding when
        the adapter's held-out measurement chose trimmed input (``AdapterMetadata.trimmed_input``), else the 30 s
        window (the base, and adapters trained or measured on windows)."""
        pad = plan.entry.metadata.trimmed_input if self.trimmed and plan.entry is not None else None
        return WINDOW_FRAMES if pad is None else trimmed_frames(n_samples, pad)

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
        past 30 s are always decoded window by window (``options``, default the Transcriber's
        ``decode_options``). ``decisions`` are routes already taken (``route()``, maybe in another
        process), one per input or None. Builds one ``Request`` per input: ``transcribe_requests``.
        """
        n = len(audios)
        langs = [language] * n if isinstance(language, str) else list(language)
        adapters = [adapter] * n if adapter is None or isinstance(adapter, str) else list(adapter)
        given = list(decisions) if decisions is not None else [None] * n
        if len(langs) != n or len(adapters) != n or len(given) != n:
            raise ConfigError(
                f"{n} inputs but {len(langs)} languages, {len(adapters)} adapter choices "
                f"and {len(given)} route decisions"
            )
        requests = [
            Request(
                audio=a,
                language=lang,
                adapter=ad,
                timestamps=timestamps,
                num_beams=num_beams,
                options=options,
                decision=d if (lang or AUTO).strip().lower() == AUTO else None,  # a given language needs no route
            )
            for a, lang, ad, d in zip(audios, langs, adapters, given, strict=True)
        ]
        return self.transcribe_requests(requests, gate)

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
