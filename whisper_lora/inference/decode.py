"""Audio to text, the one way every caller does it: ``transcribe``, ``eval``, training's scoring, merge checks.

The steps, in order (``decode_steps`` runs them over two hooks: ``decode_texts`` hooks one model as it is,
``Transcriber`` its adapter pool):

1. silent inputs give no text (they are not decoded);
2. inputs of up to 30 s are batched: log-mel features from the raw audio, ``generate`` at the
   ladder's first temperature (greedy, or beam search) with the language forced, at most
   ``max_new_tokens`` new tokens;
3. inputs past 30 s are decoded window by window, all at once (``seek.py``; beam search and word timestamps:
   ``longform.decode_segments``, one input at a time);
4. the loop guard: short inputs whose transcript looks like a repetition loop (compression
   ratio above ``options.compression_ratio_threshold``) are decoded again together at the next
   temperature, and so on up the ladder (``fallback.py``), as Whisper's own ``transcribe`` does;
   a decode plainly stuck in a loop stops early, except at the last temperature.

References are never looked at: what is scored is what users get.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from whisper_lora.base.language_tokens import added_ids
from whisper_lora.base.trim import WINDOW_FRAMES, allow_short_inputs, trimmed_frames
from whisper_lora.data.audio import N_SAMPLES, SAMPLE_RATE, is_silent
from whisper_lora.errors import ConfigError
from whisper_lora.inference.fallback import Attempt, Rows, final_text, kept_text, needs_fallback
from whisper_lora.inference.generation import MAX_NEW_TOKENS, decoding_config
from whisper_lora.inference.graphs import compile_generation, may_compile
from whisper_lora.inference.longform import (
    DecodeOptions,
    Segment,
    StepHook,
    compression_ratio,
    decode_segments,
    finish_segments,
    long_features,
    no_speech_probability,
)
from whisper_lora.inference.seek import WindowDecode, decode_windows
from whisper_lora.languages import token_text

log = logging.getLogger("whisper_lora")

__all__ = ["MAX_NEW_TOKENS", "Attempt", "Decoding", "decode_steps", "decode_texts"]


@dataclass(frozen=True)
class Decoding:
    """How audio becomes text; ``Transcriber``, ``eval`` and training's scoring share one."""

    num_beams: int = 1  # 1: greedy
    max_new_tokens: int = MAX_NEW_TOKENS  # cap per 30 s window
    options: DecodeOptions = field(default_factory=DecodeOptions)  # fallback ladder, loop guard, long-form

    def __post_init__(self) -> None:
        problems = []
        if self.num_beams < 1:
            problems.append(f"num_beams={self.num_beams!r} must be >= 1")
        if not 1 <= self.max_new_tokens <= 440:
            problems.append(f"max_new_tokens={self.max_new_tokens!r} must be in 1..440 (the decoder holds 448)")
        if problems:
            raise ConfigError("invalid decoding:\n  - " + "\n  - ".join(problems))

    def key(self) -> str:
        """A stable text of every setting (part of the base-score cache key)."""
        return json.dumps(asdict(self), sort_keys=True)


def model_dtype(model) -> torch.dtype:
    """The floating dtype the model computes in (fp32 for int8/nf4 bases)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def features(model, processor, audios: Sequence[np.ndarray]) -> torch.Tensor:
    """Log-mel features of up to 30 s signals, on the model's device and dtype."""
    feats = processor.feature_extractor(list(audios), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    return feats.to(model.device, model_dtype(model))


class EncoderStates:
    """Encoder outputs of rows, for ``generate`` to decode from without encoding: the rows the ladder decoded once
    (its next temperatures reuse them), or rows encoded apart because their inputs differ in length (trimmed input,
    ``trim.py``). Rows shorter than the longest are padded with zeros and ``lengths`` says how many positions of each
    are real: the decoder's cross-attention is masked past them (``cross_attention_mask``), so a row decodes as it
    would alone."""

    def __init__(self, states: torch.Tensor, lengths: Sequence[int] | None = None):
        self.states = states
        self.lengths = list(lengths) if lengths is not None else [states.shape[1]] * len(states)

    @classmethod
    def stack(cls, rows: Sequence[torch.Tensor]) -> EncoderStates:
        """One batch of rows of any lengths (each ``(positions, d_model)``), padded to the longest."""
        lengths = [len(r) for r in rows]
        longest = max(lengths)
        if all(n == longest for n in lengths):
            return cls(torch.stack(list(rows)))
        states = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
        for i, r in enumerate(rows):
            states[i, : len(r)] = r
        return cls(states, lengths)

    def row(self, i: int) -> torch.Tensor:
        """Row ``i`` without its padding."""
        return self.states[i, : self.lengths[i]]

    @property
    def padded(self) -> bool:
        return any(n < self.states.shape[1] for n in self.lengths)

    def __getitem__(self, rows) -> EncoderStates:  # the adapter pools take the rows of each group
        idx = range(len(self))[rows] if isinstance(rows, slice) else list(rows)
        return EncoderStates.stack([self.row(i) for i in idx])

    def __len__(self) -> int:
        return len(self.states)


@contextlib.contextmanager
def cross_attention_mask(model, states: EncoderStates):
    """While a ``generate`` call decodes from ``states``, its decoder's cross-attention sees only each row's real
    positions (transformers' Whisper decoder takes no encoder mask, its layers do). The mask is put on the layers'
    calls that carry these very states (beam search repeats their rows), so decodes that run in between (a paused
    decode lends the model out, ``StepHook``) are untouched."""
    if not states.padded:
        yield
        return
    from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer

    keep = (
        torch.arange(states.states.shape[1], device=states.states.device)[None, :]
        < torch.tensor(states.lengths, device=states.states.device)[:, None]
    )
    mine: list[int] = []  # data_ptr of the states this call's decoder gets (repeated per beam before the first step)
    masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}  # built once, read by every layer at every step

    def hook(module, args, kwargs):
        enc = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if enc is None or enc.shape[1] != keep.shape[1] or enc.shape[0] % len(keep):
            return None
        if not mine:
            mine.append(enc.data_ptr())
        if enc.data_ptr() != mine[0]:
            return None
        key = (enc.shape[0], enc.dtype)
        if key not in masks:
            rows = keep.repeat_interleave(enc.shape[0] // len(keep), dim=0)[:, None, None, :]
            # additive (0 or the dtype's minimum): read alike by the sdpa and eager attention back-ends
            masks[key] = torch.zeros(rows.shape, dtype=enc.dtype, device=enc.device).masked_fill(
                ~rows, torch.finfo(enc.dtype).min
            )
        return args, {**kwargs, "encoder_attention_mask": masks[key]}

    layers = [m for m in model.modules() if isinstance(m, WhisperDecoderLayer)]
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()  # inference only (and peft's mixed batch adds in place on bitsandbytes' int8 outputs: forbidden with grad)
def encoder_outputs(model, feats: torch.Tensor, adapter_names: list[str] | None = None) -> torch.Tensor:
    """The encoder's output for ``feats`` (any even frame count up to 3000 once ``trim.allow_short_inputs`` ran),
    with the model's active adapter, or row ``i`` with ``adapter_names[i]`` (peft's mixed batch; it applies to a
    whole forward call, so this runs one decoder step too)."""
    if adapter_names is None:
        return model.get_encoder()(feats).last_hidden_state
    start = torch.full((len(feats), 1), model.config.decoder_start_token_id, dtype=torch.long, device=feats.device)
    out = model(input_features=feats, decoder_input_ids=start, adapter_names=adapter_names)
    return out.encoder_last_hidden_state


def generate_attempts(
    model,
    processor,
    feats: torch.Tensor | EncoderStates,
    whisper_languages: list[str],
    decoding: Decoding,
    adapter_names: list[str] | None = None,
    temperature: float = 0.0,
    cut_loops: bool = False,
    pause: Callable[[], None] | None = None,
    graphs: bool = False,
) -> list[Attempt]:
    """One ``generate`` call over a batch of 30 s windows at one temperature, row i in ``whisper_languages[i]``.

    Temperature 0 is greedy (or beam search with ``decoding.num_beams``); above 0 each row samples from its own
    random stream (``fallback.Rows``). ``cut_loops`` stops rows stuck in a repetition loop (not under beam search).
    ``feats``: log-mel features, or the ``EncoderStates`` an earlier call returned in ``Attempt.states``.
    ``pause`` (optional) is called at every decoding step; it may block while the model does other work (the rows'
    random streams are their own, so what runs meanwhile does not change this call's draws).
    ``graphs``: decode with a static cache and a compiled step (``graphs.py``) where this call allows it: greedy, no
    ``pause``, every row's encoder output a full 30 s window; the caller says the model's adapters allow it.
    """
    beams = decoding.num_beams if temperature <= 0 else 1
    gen = decoding_config(model, beams, decoding.max_new_tokens)
    gen.do_sample = False  # ``Rows`` samples, row by row
    full = model.config.max_source_positions  # trimmed rows' shorter states would each compile anew
    windows = not isinstance(feats, EncoderStates) or (not feats.padded and feats.states.shape[1] == full)
    if graphs and may_compile(beams, pause is not None, windows):
        compile_generation(gen, model)
    kw = dict(generation_config=gen, task="transcribe", language=[token_text(c) for c in whisper_languages])
    rows = None
    if beams == 1:
        limit = decoding.options.compression_ratio_threshold
        added = added_ids(gen)
        vocab = min(added) if added else None
        rows = Rows(
            len(feats), temperature, processor.tokenizer, gen.eos_token_id, limit if cut_loops else None, vocab=vocab
        )
        kw["logits_processor"] = LogitsProcessorList([rows.processor()])
        kw["stopping_criteria"] = StoppingCriteriaList([rows.criterion()])
    if pause is not None:
        kw.setdefault("logits_processor", LogitsProcessorList()).insert(0, StepHook(pause))
    if adapter_names is not None:
        kw["adapter_names"] = adapter_names
        if beams > 1:
            kw["num_beams"] = beams  # peft repeats adapter_names per beam from this argument
    if isinstance(feats, EncoderStates):
        from transformers.modeling_outputs import BaseModelOutput

        states = feats.states
        mask = torch.ones(len(states), 2 * states.shape[1], dtype=torch.long, device=states.device)  # as for features
        with cross_attention_mask(model, feats):
            out = BaseModelOutput(last_hidden_state=states)
            ids = model.generate(encoder_outputs=out, attention_mask=mask, **kw)
    else:
        captured = []
        hook = model.get_encoder().register_forward_hook(
            lambda module, args, out: captured.append(out.last_hidden_state)
        )
        mask = torch.ones(feats.shape[0], feats.shape[-1], dtype=torch.long, device=feats.device)  # every frame
        try:
            ids = model.generate(input_features=feats, attention_mask=mask, **kw)
        finally:
            hook.remove()
        states = captured[0][: len(feats)] if len(captured) == 1 else None  # beam search may expand after encoding
    texts = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    attempts = rows.attempts(texts) if rows else [Attempt(t, None) for t in texts]
    if states is None:
        return attempts
    kept = feats if isinstance(feats, EncoderStates) else EncoderStates(states)
    return [replace(a, states=kept.row(r)) for r, a in enumerate(attempts)]  # ``Inputs.keep`` adds no_speech_prob


class Prompted(EncoderStates):
    """Encoder outputs of full 30 s windows and each row's decoder prompt (``<|startofprev|>`` and the previous text,
    or nothing), for ``generate_windows``; the adapter pools take rows of it as of ``EncoderStates``."""

    def __init__(self, states: torch.Tensor, prompts: Sequence[Sequence[int]]):
        super().__init__(states)
        self.prompts = [list(p) for p in prompts]

    def __getitem__(self, rows) -> Prompted:
        idx = range(len(self))[rows] if isinstance(rows, slice) else list(rows)
        return Prompted(self.states[idx], [self.prompts[i] for i in idx])


def _init_tokens(generation_config, whisper_language: str) -> list[int]:
    """``<|startoftranscript|>``, the language and the task (timestamps on), as Whisper's ``generate`` starts."""
    table = getattr(generation_config, "lang_to_id", None)
    if not table:  # an English-only model: no language or task token
        return [generation_config.decoder_start_token_id]
    return [
        generation_config.decoder_start_token_id,
        table[token_text(whisper_language)],
        generation_config.task_to_id["transcribe"],
    ]


def generate_windows(
    model,
    processor,
    windows: Prompted,
    whisper_languages: list[str],
    decoding: Decoding,
    adapter_names: list[str] | None = None,
    temperature: float = 0.0,
    pause: Callable[[], None] | None = None,
) -> list[WindowDecode]:
    """One ``generate`` call over 30 s windows with timestamps (``seek.py``'s ``decode`` hook), row i after its own
    prompt, in ``whisper_languages[i]``, greedy at temperature 0, else sampled from its own random stream.

    The prompts are left-padded to the longest and masked (position ids follow the mask), and each row may decode
    as many tokens as it would alone (``decoding.max_new_tokens``, at most half the context less 4, per window: unlike
    transformers' loop, whose budget grows from window to window up to 444 tokens), so a row decodes as it would in
    a batch of its own."""
    from transformers.modeling_outputs import BaseModelOutput

    half = model.config.max_target_positions // 2
    budget = min(decoding.max_new_tokens, half - 4)
    gen = decoding_config(model, 1, budget)
    gen.do_sample = False  # ``Rows`` samples, row by row
    # one window, decided by ``seek.py``: a checkpoint's own long-form thresholds must not act inside this call
    gen.no_speech_threshold = gen.logprob_threshold = gen.compression_ratio_threshold = None
    prefixes = [p + _init_tokens(gen, c) for p, c in zip(windows.prompts, whisper_languages, strict=True)]
    longest = max(len(p) for p in prefixes)
    limits = [min(budget, 2 * half - len(p)) for p in prefixes]
    gen.max_length = longest + max(limits) - min(half - 1, longest)  # generate adds min(half - 1, longest) back
    device = windows.states.device
    ids = torch.full((len(prefixes), longest), gen.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prefixes):
        ids[r, longest - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, longest - len(p) :] = 1
    added = added_ids(gen)
    rows = Rows(
        len(prefixes),
        temperature,
        processor.tokenizer,
        gen.eos_token_id,
        None,
        vocab=min(added) if added else None,
        limits=limits,
    )
    processors = LogitsProcessorList([rows.processor()])
    if pause is not None:
        processors.insert(0, StepHook(pause))
    kw = dict(
        encoder_outputs=BaseModelOutput(last_hidden_state=windows.states),
        attention_mask=torch.ones(len(prefixes), 2 * windows.states.shape[1], dtype=torch.long, device=device),
        decoder_input_ids=ids,
        decoder_attention_mask=mask,
        generation_config=gen,
        return_timestamps=True,
        force_unique_generate_call=True,  # one window: transformers' own seek loop stops after it
        logits_processor=processors,
        stopping_criteria=StoppingCriteriaList([rows.criterion()]),
    )
    if getattr(gen, "lang_to_id", None):
        kw.update(task="transcribe", language=[token_text(c) for c in whisper_languages])
    if adapter_names is not None:
        kw["adapter_names"] = adapter_names
    out = model.generate(**kw)
    out = out["sequences"] if isinstance(out, dict) else out
    decodes = []
    for r in range(len(prefixes)):
        tokens = out[r, longest : longest + rows.count[r]].tolist()
        ended = bool(tokens) and tokens[-1] == gen.eos_token_id and not rows.capped[r]
        decodes.append(
            WindowDecode(tuple(tokens[:-1] if ended else tokens), ended, rows.logprob[r] / max(rows.count[r], 1))
        )
    return decodes


def long_features_of(processor, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Each input's whole log-mel, ``(n_mels, frames)``, unpadded, on the host (each window goes to the model's device
    when it is decoded); computed one input at a time, as transformers' loop computes one input alone."""
    return [long_features(processor.feature_extractor, [a])[0][0] for a in audios]


def window_options(model, processor, decoding: Decoding) -> dict:
    """What ``seek.decode_windows`` needs to know of the model and the decoding, besides its hooks."""
    tokenizer = processor.tokenizer
    gen = model.generation_config
    half = model.config.max_target_positions // 2
    initial: list[int] = []
    if decoding.options.prompt:
        prompt = processor.get_prompt_ids(decoding.options.prompt)
        if len(prompt) > half - 1:
            raise ConfigError(f"prompt is {len(prompt)} tokens long; at most {half - 1} fit before the transcript")
        initial = [int(t) for t in prompt[1:]]  # without <|startofprev|>
    special = {
        "sop": tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        "timestamp_begin": gen.no_timestamps_token_id + 1,
        "eot": gen.eos_token_id,
    }
    return dict(special=special, vocab_size=model.config.vocab_size, half=half, initial_prompt=initial)


def windowed(decoding: Decoding) -> bool:
    """Whether inputs past 30 s (and timestamped ones) decode through ``seek.py``'s batched loop: greedy with the
    fallback ladder, no word timestamps (beam search and word timing stay with ``longform.decode_segments``)."""
    return decoding.num_beams == 1 and not decoding.options.word_timestamps


def model_windows(
    model,
    processor,
    audios: Sequence[np.ndarray],
    whisper_languages: Sequence[str],
    decoding: Decoding,
    pause: Callable[[], None] | None = None,
    untouched: Untouched | None = None,
    done: Callable[[int, list[Segment]], None] | None = None,
) -> list[list[Segment]]:
    """Segments of every input (``seek.decode_windows``), all decoded together by ``model`` as it is (one adapter
    active or none). ``untouched``: where each window's no-speech probability is read (``silence_reader``; None:
    ``model`` as it is). ``pause``: called at every decoding step (``StepHook``). ``done(i, segments)``: as each input
    ends."""
    langs = list(whisper_languages)
    return windows_with(
        model,
        processor,
        audios,
        decoding,
        encode=lambda rows, feats: list(encoder_outputs(model, feats)),
        silence=silence_reader(untouched or (lambda: contextlib.nullcontext(model)), decoding),
        decode=lambda rows, windows, t: generate_windows(
            model, processor, windows, [langs[i] for i in rows], decoding, None, t, pause
        ),
        done=done,
    )


def windows_with(
    model,
    processor,
    audios: Sequence[np.ndarray],
    decoding: Decoding,
    encode: Callable[[list[int], torch.Tensor], Sequence[torch.Tensor]],
    silence: Callable[[EncoderStates], list[float]] | None,
    decode: Callable[[list[int], Prompted, float], list[WindowDecode]],
    done: Callable[[int, list[Segment]], None] | None = None,
) -> list[list[Segment]]:
    """``seek.decode_windows`` over ``audios``, finished into ``Segment``s, each input's once (``model``: for its
    device, dtype, tokens and sizes only). Hooks: ``encode(rows, windows)`` (features on the model's device),
    ``silence`` (``silence_reader``'s), ``decode(rows, prompted windows, temperature)`` (``generate_windows``)."""
    eot = model.generation_config.eos_token_id
    device, dtype = model.device, model_dtype(model)
    finished: dict[int, list[Segment]] = {}

    def ended(i: int, raws) -> None:
        finished[i] = finish_segments(processor.tokenizer, raws, decoding.options, eot)
        if done is not None:
            done(i, finished[i])

    decode_windows(
        long_features_of(processor, audios),
        decoding.options,
        lambda rows, windows: encode(rows, windows.to(device, dtype)),
        None if silence is None else (lambda rows, states: silence(EncoderStates.stack(states))),
        lambda rows, states, prompts, t: decode(rows, Prompted(torch.stack(list(states)), prompts), t),
        done=ended,
        **window_options(model, processor, decoding),
    )
    return [finished[i] for i in range(len(audios))]


@torch.no_grad()
def no_speech_probs(model, states: EncoderStates) -> list[float]:
    """Each row's ``<|nospeech|>`` probability after ``<|startoftranscript|>`` (one decoder step of ``model`` on the
    row's encoder output), over the base's own vocabulary, as openai-whisper and the long-form windows compute it."""
    gen = model.generation_config
    start = torch.full((len(states), 1), gen.decoder_start_token_id, dtype=torch.long, device=states.states.device)
    with cross_attention_mask(model, states):
        logits = model(encoder_outputs=(states.states,), decoder_input_ids=start).logits[:, -1]
    return no_speech_probability(gen, logits).tolist()


Untouched = Callable[[], contextlib.AbstractContextManager]  # a context that gives the model with no adapter active


@contextlib.contextmanager
def adapters_off(model):
    """``model`` with its peft adapters disabled for a while (a plain model as it is)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def silence_reader(untouched: Untouched, decoding: Decoding) -> Callable[[EncoderStates], list[float]] | None:
    """How a short input's no-speech probability is read: by the untouched base's decoder on the row's own encoder
    output (the adapter's encoding when it adapts the encoder). Adapters trained on speech alone unlearn
    ``<|nospeech|>`` (the shipped ``sw`` gives it 0.000 on noise, where the base gives 0.80-0.94), so their own
    decoder would never call anything silent. None when the no-speech rule is off."""
    if decoding.options.no_speech_threshold is None:
        return None

    def read(states: EncoderStates) -> list[float]:
        with untouched() as model:
            return no_speech_probs(model, states)

    return read


def long_segments(
    model,
    processor,
    audio: np.ndarray,
    whisper_language: str,
    decoding: Decoding,
    pause=None,
    untouched: Untouched | None = None,
) -> list[Segment]:
    """Step 3: window-by-window decoding with the temperature fallback.

    ``pause`` (optional) is called at every decoding step; it may block while the model does other work.
    ``untouched``: where each window's no-speech probability is read (``silence_reader``); None: ``model`` as it is.
    """
    return decode_segments(
        model,
        processor,
        audio,
        whisper_language,
        decoding.options,
        decoding.num_beams,
        decoding.max_new_tokens,
        pause=pause,
        untouched=untouched,
    )


def looped(texts: Sequence[str], decoding: Decoding) -> list[int]:
    """Indices of transcripts that look like a repetition loop (the loop guard's test)."""
    limit = decoding.options.compression_ratio_threshold
    return [i for i, t in enumerate(texts) if limit and compression_ratio(t) > limit]


# (rows of a batch, temperature, cut loops) -> what each row gave (one ``generate`` call over up-to-30 s windows)
Batch = Callable[[list[int], float, bool], list[Attempt]]
# rows -> nothing; each row's segments (step 3: window by window with the temperature fallback) are given to the
# callback as soon as they are known, exactly once per row
Windows = Callable[[list[int], Callable[[int, list[Segment]], None]], None]


Final = Callable[[int, str, "tuple[Segment, ...] | None"], None]  # an input's result, as soon as it is known
Pause = Callable[[], None]  # called between two temperatures of the ladder: other work may use the model


def ladder(
    rows: list[int], decoding: Decoding, batch: Batch, final: Final | None = None, pause: Pause | None = None
) -> list[str]:
    """Steps 2 and 4 for inputs of up to 30 s: the rows decoded together at the ladder's first temperature, then
    the rows that fail (``fallback.needs_fallback``) together again at each next temperature. A row that fails at
    every temperature keeps ``fallback.final_text``. Texts in the order of ``rows``.

    ``final(row, text, None)`` is called for each row as soon as its text is final (after the step that settles
    it, before the rows left fall back); ``pause()`` before each fallback step (the server lets waiting requests use
    the model there)."""
    options = decoding.options
    temperatures = options.temperature if options.compression_ratio_threshold else options.temperature[:1]
    tried: dict[int, list[Attempt]] = {i: [] for i in rows}
    texts: dict[int, str] = {}
    pending = list(rows)
    for step, temperature in enumerate(temperatures):
        if step and pause is not None:
            pause()
        last = step == len(temperatures) - 1
        attempts = batch(pending, temperature, options.stop_loops_early and not last)
        retry = []
        for i, a in zip(pending, attempts, strict=True):
            tried[i].append(a)
            if len(temperatures) > 1 and needs_fallback(a, options, step):
                retry.append(i)
            else:
                texts[i] = kept_text(a, options)
                if final is not None:
                    final(i, texts[i], None)
        if retry and not last:
            log.debug("%d transcript(s) fall back to temperature %s", len(retry), temperatures[step + 1])
        pending = retry
        if not pending:
            break
    for i in pending:  # failed at every temperature
        texts[i] = final_text(tried[i], options)
        if final is not None:
            final(i, texts[i], None)
    return [texts[i] for i in rows]


def decode_steps(
    audios: Sequence[np.ndarray],
    decoding: Decoding,
    timestamps: bool,
    batch: Batch,
    windows: Windows,
    final: Final | None = None,
    pause: Pause | None = None,
) -> tuple[list[str], list[tuple[Segment, ...] | None]]:
    """The four steps over ``audios``: texts, and segments of every input when ``timestamps`` (else None).

    ``batch`` and ``windows`` do the decoding (with one model, or through an adapter pool); which input takes which
    path is decided here only, so a result never depends on the other inputs of the call. ``final`` and ``pause``:
    ``ladder``'s (``final`` is also called for silent inputs at once and for windowed ones when they are done).
    """
    texts = [""] * len(audios)
    segments: list[tuple[Segment, ...] | None] = [() if timestamps else None] * len(audios)
    speech = [i for i, a in enumerate(audios) if not is_silent(a)]  # step 1
    if final is not None:
        for i in sorted(set(range(len(audios))) - set(speech)):
            final(i, "", segments[i])
    timed = speech if timestamps else [i for i in speech if len(audios[i]) > N_SAMPLES]
    short = [i for i in speech if i not in set(timed)]
    for i, t in zip(short, ladder(short, decoding, batch, final, pause) if short else [], strict=True):  # 2 and 4
        texts[i] = t

    def done(i: int, found: list[Segment]) -> None:
        segs = tuple(found)
        texts[i] = " ".join(s.text for s in segs)
        if timestamps:
            segments[i] = segs
        if final is not None:
            final(i, texts[i], segments[i])

    if timed:
        windows(timed, done)  # step 3
    return texts, segments


class Inputs:
    """What the ladder feeds ``generate`` for each row: its log-mel features the first time, then the encoder output
    that first decode returned (``Attempt.states``), so no row is encoded twice.

    ``compute(rows)``: the rows' features (30 s windows). ``frames(row)``: how many frames of them the row's encoder
    reads (``WINDOW_FRAMES``, or fewer for trimmed input, ``trim.py``); rows that read fewer are encoded apart, one
    ``encode(rows, features)`` call per length (with the rows' adapters), and all are decoded together from their
    padded ``EncoderStates``. A row's frames depend on the row alone, so its result does not depend on the batch.
    ``states``: encoder outputs known before the first decode (routing's pass of the base, ``Transcriber``); with
    ``encode``, the other rows of a batch are then encoded apart, and only they."""

    def __init__(
        self,
        compute: Callable[[list[int]], torch.Tensor],
        states: dict[int, torch.Tensor] | None = None,
        frames: Callable[[int], int] | None = None,
        encode: Callable[[list[int], torch.Tensor], Sequence[torch.Tensor]] | None = None,
        silence: Callable[[EncoderStates], list[float]] | None = None,
    ):
        if (frames is None) != (encode is None):
            raise ValueError("Inputs takes frames and encode together")
        self.compute, self.frames, self.encode, self.silence = compute, frames, encode, silence
        self.states = {} if states is None else states  # filled in place: a caller may pass them on
        self.no_speech: dict[int, float] = {}  # read once per row: the same at every temperature

    def __call__(self, rows: list[int]) -> torch.Tensor | EncoderStates:
        known = [k for k, i in enumerate(rows) if i in self.states]
        if len(known) == len(rows):
            return EncoderStates.stack([self.states[i] for i in rows])
        if self.encode is None:  # nothing to encode some rows apart with: every row from its features
            known = []
        encoded = {k: self.states[rows[k]] for k in known}
        todo = [k for k in range(len(rows)) if k not in encoded]
        feats = self.compute([rows[k] for k in todo])
        lengths = [self.frames(rows[k]) for k in todo] if self.frames else []
        if not encoded and all(n == WINDOW_FRAMES for n in lengths):
            return feats  # ``generate`` encodes them
        for n in sorted(set(lengths)):
            group = [j for j, m in enumerate(lengths) if m == n]
            outs = self.encode([rows[todo[j]] for j in group], feats[group, :, :n])
            encoded.update(zip([todo[j] for j in group], outs, strict=True))
        return EncoderStates.stack([encoded[k] for k in range(len(rows))])

    def keep(self, rows: list[int], attempts: Sequence[Attempt]) -> list[Attempt]:
        """Remember the rows' encoder outputs; returns ``attempts`` with each row's no-speech probability (read by
        ``silence`` from its encoder output the first time, ``silence_reader``; None without a reader, or for a decode
        that returned no encoder output)."""
        for i, a in zip(rows, attempts, strict=True):
            if a.states is not None:
                self.states[i] = a.states
        todo = [i for i, a in zip(rows, attempts, strict=True) if a.states is not None and i not in self.no_speech]
        if todo and self.silence is not None:
            self.no_speech.update(
                zip(todo, self.silence(EncoderStates.stack([self.states[i] for i in todo])), strict=True)
            )
        return [replace(a, no_speech_prob=self.no_speech.get(i)) for i, a in zip(rows, attempts, strict=True)]


def decode_texts(
    model,
    processor,
    audios: Sequence[np.ndarray],
    whisper_language: str,
    decoding: Decoding,
    states: dict[int, torch.Tensor] | None = None,
    trim: float | None = None,
) -> list[str]:
    """Transcripts of ``audios`` with ``model`` as it is (one adapter active or none), in input order.

    ``states``: encoder outputs by position in ``audios``, read and filled in place. Pass the same dict to a second
    call on the same audio whose encoder computes the same thing (the base, then an adapter that leaves the encoder
    untouched) and the second skips the encoder. ``trim``: encode each input of up to 30 s trimmed to its own length
    plus this many seconds (``trim.py``), not a 30 s window."""

    compute = lambda rows: features(model, processor, [audios[i] for i in rows])  # noqa: E731
    untouched = lambda: adapters_off(model)  # noqa: E731
    silence = silence_reader(untouched, decoding)
    if trim is None:
        inputs = Inputs(compute, states, silence=silence)
    else:
        allow_short_inputs(model)
        frames = lambda i: trimmed_frames(len(audios[i]), trim)  # noqa: E731
        inputs = Inputs(compute, states, frames, lambda rows, feats: encoder_outputs(model, feats), silence)

    def batch(rows: list[int], temperature: float, cut: bool) -> list[Attempt]:
        langs = [whisper_language] * len(rows)
        return inputs.keep(
            rows, generate_attempts(model, processor, inputs(rows), langs, decoding, None, temperature, cut)
        )

    def windows(rows: list[int], done) -> None:
        if not windowed(decoding):
            for i in rows:
                done(i, long_segments(model, processor, audios[i], whisper_language, decoding, untouched=untouched))
            return
        langs = [whisper_language] * len(rows)
        found = lambda k, segs: done(rows[k], segs)  # noqa: E731
        model_windows(model, processor, [audios[i] for i in rows], langs, decoding, untouched=untouched, done=found)

    return decode_steps(audios, decoding, False, batch, windows)[0]
