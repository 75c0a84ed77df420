"""Timestamped and long-form decoding: the options, the segments, and transformers' own loop for one input.

Most long-form decoding runs through ``seek.py`` (many inputs at once, each with its adapter). This module holds
what both loops share (``DecodeOptions``, ``Segment``, ``finish_segments``: per-segment ``avg_logprob``,
``compression_ratio``, ``no_speech_prob``, a repetition flag, words, the no-speech skip of silent windows) and
``decode_segments``, which runs transformers' ``generate`` over one input with its adapter active: the path of beam
search and word timestamps (cross-attention alignment heads), which ``seek.py`` leaves to transformers.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from whisper_lora.base.language_tokens import added_ids
from whisper_lora.data.audio import SAMPLE_RATE
from whisper_lora.errors import ConfigError
from whisper_lora.inference.generation import MAX_NEW_TOKENS, decoding_config
from whisper_lora.languages import token_text

N_FRAMES = 3000  # log-mel frames in Whisper's 30 s window
FRAME_SECONDS = 0.01


@dataclass(frozen=True)
class DecodeOptions:
    """How timestamped / long-form decoding behaves (defaults: openai-whisper's ``transcribe``)."""

    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fallback ladder; (0.0,): greedy only
    compression_ratio_threshold: float | None = 2.4  # above: re-decode hotter (and flag as repetition)
    logprob_threshold: float | None = -1.0  # window average log-probability below this: re-decode hotter
    no_speech_threshold: float | None = 0.6  # skip a window this likely silent (if its log-prob is low too)
    condition_on_previous_text: bool = True  # previous window's text as the prompt of the next
    prompt: str | None = None  # initial prompt: spelling, names, style
    word_timestamps: bool = False  # word times from the alignment heads; they also bound each segment
    # a short clip's decode plainly stuck in a repetition loop stops there and goes to the next temperature (it
    # would be rejected anyway); never at the last temperature, whose text is kept. False: every decode runs to its end
    stop_loops_early: bool = True

    def __post_init__(self) -> None:
        temps = (self.temperature,) if isinstance(self.temperature, int | float) else tuple(self.temperature)
        object.__setattr__(self, "temperature", tuple(float(t) for t in temps))
        problems = []
        if not self.temperature or any(not 0 <= t <= 1 or math.isnan(t) for t in self.temperature):
            problems.append(f"temperature={self.temperature!r}: one or more values in [0, 1]")
        if list(self.temperature) != sorted(self.temperature):
            problems.append(f"temperature={self.temperature!r} must not decrease (a fallback gets hotter)")
        if self.compression_ratio_threshold is not None and self.compression_ratio_threshold <= 1:
            problems.append(f"compression_ratio_threshold={self.compression_ratio_threshold!r} must be > 1")
        if self.no_speech_threshold is not None and not 0 < self.no_speech_threshold < 1:
            problems.append(f"no_speech_threshold={self.no_speech_threshold!r} must be in (0, 1)")
        if self.logprob_threshold is not None and self.logprob_threshold > 0:
            problems.append(f"logprob_threshold={self.logprob_threshold!r} must be <= 0")
        if problems:
            raise ConfigError("invalid decoding options:\n  - " + "\n  - ".join(problems))

    def with_temperature(self, temperature: float | None) -> DecodeOptions:
        """These options starting at one temperature (OpenAI's ``temperature`` field), then falling back in
        steps of 0.2 up to 1.0 as openai-whisper does; None keeps the ladder as it is."""
        if temperature is None:
            return self
        ladder = [temperature]
        while ladder[-1] + 0.2 <= 1.0 + 1e-9:
            ladder.append(round(ladder[-1] + 0.2, 4))
        return replace(self, temperature=tuple(ladder))


@dataclass(frozen=True)
class RawSegment:
    """A segment as its window's decode gave it, before ``finish_segments``."""

    start: float
    end: float
    tokens: tuple[int, ...]  # text and timestamp tokens
    avg_logprob: float  # of the window's decode
    no_speech_prob: float | None  # of the window; None when no-speech detection is off
    token_times: tuple[float, ...] | None = None  # each token's time (word timestamps only)


@dataclass(frozen=True)
class Word:
    word: str  # as decoded, with its leading space
    start: float
    end: float

    def to_dict(self) -> dict:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass(frozen=True)
class Segment:
    """One timestamped piece of a transcript (times in seconds from the start of the input)."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: float  # of the window the segment was decoded in, as in openai-whisper
    compression_ratio: float  # gzip ratio of the segment's text; high means repetition
    no_speech_prob: float | None  # of its window; None when no-speech detection is off
    repetition: bool  # compression ratio above the threshold even after every fallback
    tokens: tuple[int, ...] = ()  # text token ids
    words: tuple[Word, ...] | None = field(default=None)

    def to_dict(self) -> dict:
        d = {
            "id": self.id,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "avg_logprob": round(self.avg_logprob, 4),
            "compression_ratio": round(self.compression_ratio, 4),
            "no_speech_prob": None if self.no_speech_prob is None else round(self.no_speech_prob, 4),
            "repetition": self.repetition,
            "tokens": list(self.tokens),
        }
        if self.words is not None:
            d["words"] = [w.to_dict() for w in self.words]
        return d


def compression_ratio(text: str) -> float:
    """gzip compression ratio of a text (openai-whisper's loop detector); 0 for an empty text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def long_features(feature_extractor, audios: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel of whole signals, ``(batch, n_mels, frames)`` for the longest, and the mask of real frames.

    Not padded to 30 s: ``generate`` then stops at each input's own end (as openai-whisper's
    ``content_frames``) instead of decoding the padding of a short input after its last segment.
    """
    n_fft = feature_extractor.n_fft  # the STFT pads each side by half a window: a shorter input cannot be framed
    audios = [a if len(a) >= n_fft else np.pad(a, (0, n_fft - len(a))) for a in audios]
    out = feature_extractor(
        audios,
        sampling_rate=SAMPLE_RATE,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    return out.input_features, out.attention_mask


def no_speech_probability(generation_config, logits: torch.Tensor) -> torch.Tensor:
    """Per row, the probability of ``<|nospeech|>`` in ``logits`` (the decoder's step after ``<|startoftranscript|>``),
    over the base's own vocabulary: language tokens adapters add (``language_tokens.py``) change nothing here."""
    logits = logits.float()
    logits[:, added_ids(generation_config)] = -math.inf
    return logits.softmax(-1)[:, generation_config.no_timestamps_token_id - 1]


class _NoSpeechRecorder:
    """``monitor_progress`` hook of ``generate``: at each window, the no-speech probability of the input
    (Whisper's ``<|nospeech|>`` after ``<|startoftranscript|>``, on that window): the window encoded by ``model``, the
    step decoded by ``untouched()``'s model (the base's decoder: adapters unlearn the token, ``decode.silence_reader``),
    or by ``model`` when None."""

    def __init__(self, model, feats: torch.Tensor, sot: int, untouched=None):
        self.model, self.feats, self.sot = model, feats, sot
        self.untouched = untouched or (lambda: contextlib.nullcontext(model))
        self.windows: list[tuple[int, float]] = []  # (seek frame, probability)

    def __call__(self, seek_and_max: torch.Tensor) -> None:
        seek, stop = (int(x) for x in seek_and_max[0])
        if seek >= stop:
            return
        window = self.feats[:, :, seek : min(seek + N_FRAMES, stop)]
        window = torch.nn.functional.pad(window, (0, N_FRAMES - window.shape[-1]))
        dec = torch.full((1, 1), self.sot, dtype=torch.long, device=self.feats.device)
        with torch.no_grad():  # transformers calls this hook outside generate's no_grad
            encoded = self.model.get_encoder()(window)
            with self.untouched() as decoder:
                logits = decoder(encoder_outputs=encoded, decoder_input_ids=dec).logits[:, 0]
        self.windows.append((seek, float(no_speech_probability(self.model.generation_config, logits)[0])))

    def at(self, start: float) -> float | None:
        """The probability of the window a segment starting at ``start`` seconds was decoded in."""
        frame = round(start / FRAME_SECONDS)
        found = [p for seek, p in self.windows if seek <= frame + 1]
        return found[-1] if found else None


class StepHook:
    """A logits processor that changes nothing: it calls ``pause`` at every decoding step, where the decode
    can give the model up (its state lives in ``generate``'s locals, so other calls may run meanwhile), within
    ``restore`` (a context that puts back what this decode needs of global state when ``pause`` returns)."""

    def __init__(self, pause, restore=contextlib.nullcontext):
        self.pause, self.restore = pause, restore

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        with self.restore():
            self.pause()
        return scores


def _window_logprob(result: dict, cache: dict) -> float:
    """Average log-probability of the tokens generated in one window (end-of-text included)."""
    key = id(result)
    if key not in cache:
        scores = result.get("scores")
        if not scores:
            cache[key] = float("nan")
        else:
            generated = result["sequences"][-len(scores) :]
            logps = [torch.log_softmax(s.float(), -1)[int(t)] for s, t in zip(scores, generated, strict=True)]
            finite = [float(x) for x in logps if torch.isfinite(x)]
            cache[key] = sum(finite) / max(len(finite), 1)
    return cache[key]


def _words(tokenizer, pieces: list[tuple[int, float]], end: float) -> tuple[Word, ...]:
    """Group (text token, start time) pairs into words (a leading space starts one); a word ends where the next
    begins, the last at ``end``."""
    words: list[list] = []
    for t, s in pieces:
        text = tokenizer.decode([t])
        if not words or text.startswith(" "):
            words.append([text, s])
        else:
            words[-1][0] += text
    out = []
    for k, (text, s) in enumerate(words):
        e = words[k + 1][1] if k + 1 < len(words) else end
        out.append(Word(text, float(s), float(max(e, s))))
    return tuple(w for w in out if w.word.strip())


def decode_segments(
    model,
    processor,
    audio: np.ndarray,
    whisper_language: str,
    options: DecodeOptions,
    num_beams: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = 0,
    pause=None,
    untouched=None,
) -> list[Segment]:
    """Timestamped segments of one input, decoded with ``model`` as it is (one adapter or none active).

    ``pause`` (optional) is called at every decoding step and may block while other calls use the model
    (it must leave the model as it found it; the attention implementation is restored around it).
    ``untouched`` (optional): a context giving the model with no adapter active, whose decoder reads each window's
    no-speech probability (``_NoSpeechRecorder``).

    One input per call: batched, transformers' long-form loop pads shorter inputs and shares the
    fallback's random stream between rows, so a neighbour could change a result. The temperature
    fallback samples from ``seed`` without touching the caller's random state.
    """
    tokenizer = processor.tokenizer
    feats, mask = long_features(processor.feature_extractor, [audio])
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    feats = feats.to(model.device, dtype)
    half = model.config.max_target_positions // 2  # the previous text may take half of the decoder's context
    gen = decoding_config(model, num_beams, min(max_new_tokens, half - 4))
    gen.no_speech_threshold = None  # decided below from every window's recorded probability
    eot = gen.eos_token_id  # Whisper's special and timestamp tokens all come after <|endoftext|>
    recorder = None
    if options.no_speech_threshold is not None:
        sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        recorder = _NoSpeechRecorder(model, feats, sot, untouched)
    kw = dict(
        input_features=feats,
        attention_mask=mask.to(model.device),  # the input's own length (word timing needs it)
        generation_config=gen,
        language=token_text(whisper_language),  # as a token: one added to the base (language_tokens.py) too
        task="transcribe",
        return_timestamps=True,
        return_segments=True,
        return_token_timestamps=options.word_timestamps,
        temperature=options.temperature if len(options.temperature) > 1 else options.temperature[0],
        compression_ratio_threshold=options.compression_ratio_threshold,
        # a threshold no window falls below still makes generate keep the scores avg_logprob needs
        logprob_threshold=options.logprob_threshold if options.logprob_threshold is not None else -math.inf,
        condition_on_prev_tokens=options.condition_on_previous_text,
        monitor_progress=recorder,
    )
    if options.prompt:
        prompt = processor.get_prompt_ids(options.prompt)
        if len(prompt) > half - 1:
            raise ConfigError(f"prompt is {len(prompt)} tokens long; at most {half - 1} fit before the transcript")
        kw["prompt_ids"] = torch.as_tensor(prompt, device=model.device)
    inner = getattr(model, "get_base_model", lambda: model)()
    attn = inner.config._attn_implementation
    devices = [model.device] if model.device.type == "cuda" else []
    if pause is not None:
        from transformers import LogitsProcessorList

        @contextlib.contextmanager
        def as_found():
            # word timing switches to eager attention: others decode with the model's own; and this decode's
            # random stream (the fallback samples) continues where it was, whatever others drew meanwhile
            current = inner.config._attn_implementation
            rng = torch.get_rng_state()
            cuda_rng = [torch.cuda.get_rng_state(d) for d in devices]
            inner.config._attn_implementation = attn
            try:
                yield
            finally:
                inner.config._attn_implementation = current
                torch.set_rng_state(rng)
                for d, state in zip(devices, cuda_rng, strict=True):
                    torch.cuda.set_rng_state(state, d)

        kw["logits_processor"] = LogitsProcessorList([StepHook(pause, as_found)])
    try:  # a fallback samples: from a fixed seed, so the same input always gives the same text
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(**kw)
    finally:
        inner.config._attn_implementation = attn  # word timing switches the model to eager attention
    raws = []
    logprob_cache: dict = {}
    for seg in out["segments"][0]:
        tokens = tuple(int(t) for t in seg["tokens"])
        start = float(seg["start"])
        times = (
            tuple(seg["token_timestamps"].tolist()) if options.word_timestamps and "token_timestamps" in seg else None
        )
        no_speech = recorder.at(start) if recorder else None
        logprob = _window_logprob(seg["result"], logprob_cache)
        raws.append(RawSegment(start, float(seg["end"]), tokens, logprob, no_speech, times))
    return finish_segments(tokenizer, raws, options, eot)


def finish_segments(tokenizer, raws: Sequence[RawSegment], options: DecodeOptions, eot: int) -> list[Segment]:
    """``Segment``s from the raw ones of one input: silent windows' and empty ones dropped (Whisper's rule: high
    no-speech probability and an unlikely text), text decoded, words grouped, times in order and never overlapping."""
    segments: list[Segment] = []
    for raw in raws:
        text_tokens = [t for t in raw.tokens if t < eot]
        text = tokenizer.decode(text_tokens).strip()
        start, end, logprob, no_speech = raw.start, raw.end, raw.avg_logprob, raw.no_speech_prob
        if (
            no_speech is not None
            and options.no_speech_threshold is not None
            and no_speech > options.no_speech_threshold
            and (options.logprob_threshold is None or logprob < options.logprob_threshold)
        ):
            continue  # a silent window: Whisper's rule drops what was decoded in it
        if not text:
            continue
        ratio = compression_ratio(text)
        words = None
        if options.word_timestamps and raw.token_times is not None:
            pairs = [(t, s) for t, s in zip(raw.tokens, raw.token_times, strict=False) if t < eot]
            words = _words(tokenizer, pairs, end)
            if words:  # as openai-whisper: the aligned words bound the segment (finer than its tokens)
                start, end = words[0].start, max(words[-1].end, words[0].start)
        threshold = options.compression_ratio_threshold or 2.4
        if segments:  # cues in time order, never overlapping
            start = max(start, segments[-1].end)
        end = max(end, start)
        segments.append(
            Segment(
                len(segments),
                start,
                end,
                text,
                logprob,
                ratio,
                no_speech,
                ratio > threshold,
                tuple(text_tokens),
                words,
            )
        )
    return segments
