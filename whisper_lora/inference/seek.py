"""Long-form decoding of many inputs at once, each row with its own adapter: Whisper's sequential algorithm, owned
here so that a row's result never depends on the other rows of its batch.

transformers' long-form ``generate`` runs the same algorithm over a batch, but it shrinks the batch inside its loop
as inputs end or fall back (row-indexed LoRA and peft's ``adapter_names`` cannot follow which rows remain), pads
the previous-text prompts to the longest of the batch, and samples every row's fallback from one random stream.
``decode_windows`` keeps transformers' rules (which it mirrors: one input alone gives transformers' segments, tested on
real English, but for the two differences below) and runs each step over the batch through three hooks:

- ``encode(rows, windows)``: each row's 30 s window, encoded with that row's adapter;
- ``silence(rows, states)``: each window's no-speech probability (the untouched base's decoder,
  ``decode.silence_reader``), or None when the no-speech rule is off;
- ``decode(rows, states, prompts, temperature)``: one ``generate`` call over the windows (``decode.generate_windows``),
  row ``i`` after its own prompt, sampled above temperature 0 from its own random stream (``fallback.Rows``).

Per window, as transformers: the window starts at the input's ``seek`` and holds what is left of it (at most 30 s,
padded with zeros); the prompt is the previous windows' tokens (the last ``half - 1``; after a decode hotter than
0.5 none), or the initial prompt; a row falls back to the next temperature when its tokens compress too well
(``compression_ratio_threshold``, over token bytes) or its average log-probability is under ``logprob_threshold``,
and keeps the last attempt when every temperature fails; timestamp pairs cut the window into segments and ``seek``
moves to the last complete one; a window the base finds silent (Whisper's rule, ``fallback.silent``: no-speech
probability over ``no_speech_threshold`` and an unlikely text) is skipped whole and its text left out of the next
prompt, as openai-whisper and transformers (with its own no-speech detection on) do. Two differences from
transformers' loop: each window may decode ``max_new_tokens`` (transformers' budget grows from window to window, up
to 444 tokens), and the no-speech probability is read by the base's decoder (``decode.silence_reader``: adapters
unlearn ``<|nospeech|>``). Word timestamps and beam search stay with transformers' loop (``longform.decode_segments``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from whisper_lora.inference.fallback import Attempt, silent
from whisper_lora.inference.longform import N_FRAMES, DecodeOptions, RawSegment

INPUT_STRIDE = 2  # log-mel frames per encoder position
TIME_PRECISION = 0.02  # seconds per timestamp token


@dataclass(frozen=True)
class WindowDecode:
    """What one row's window gave at one temperature."""

    tokens: tuple[int, ...]  # generated, before the end of text (timestamp tokens included)
    ended: bool  # the decode chose the end of text (else it reached its token limit)
    avg_logprob: float  # of its tokens, the end of text included


Encode = Callable[[list[int], torch.Tensor], Sequence[torch.Tensor]]
Silence = Callable[[list[int], Sequence[torch.Tensor]], Sequence[float]]
Decode = Callable[[list[int], Sequence[torch.Tensor], list[list[int]], float], Sequence[WindowDecode]]
Done = Callable[[int, list[RawSegment]], None]


@dataclass
class _Track:
    """One input's progress."""

    feats: torch.Tensor  # (n_mels, frames): its whole log-mel, unpadded
    seek: int = 0  # first frame of the next window
    history: list[list[int]] = field(default_factory=list)  # each segment's tokens so far, the initial prompt first
    condition: bool = True  # the next prompt is the previous text (False after a decode hotter than 0.5)
    raws: list[RawSegment] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return self.feats.shape[-1]

    def window(self) -> tuple[torch.Tensor, int]:
        """The next window's features, padded with zeros to 30 s, and how many of its frames are the input's."""
        n = min(N_FRAMES, self.frames - self.seek)
        part = self.feats[:, self.seek : self.seek + n]
        return torch.nn.functional.pad(part, (0, N_FRAMES - n)), n


def token_compression_ratio(tokens: Sequence[int], vocab_size: int) -> float:
    """transformers' fallback test: how well a window's token ids (as bytes) compress."""
    width = int(math.log2(vocab_size) / 8) + 1
    data = b"".join(int(t).to_bytes(width, "little") for t in tokens)
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _prompt(track: _Track, options: DecodeOptions, initial: list[int], sop: int, half: int, ts_begin: int) -> list[int]:
    """The decoder prompt of a track's next window (transformers' ``_prepare_decoder_input_ids`` for one row):
    ``<|startofprev|>`` and the previous text, or the initial prompt, or nothing."""
    if not options.condition_on_previous_text:
        return [sop, *initial] if initial else []
    if not track.history:
        return []
    if not track.condition:
        return [sop]
    tokens: list[int] = []
    for seg in track.history:  # a segment ending in two timestamps gives its last one to the next
        tokens += seg[:-1] if len(seg) > 2 and seg[-2] >= ts_begin else seg
    return [sop, *tokens[-(half - 1) :]]


def split_window(tokens: Sequence[int], ts_begin: int, offset: float, frames: int) -> tuple[list[tuple], int]:
    """A window's tokens as (start, end, tokens) segments, and how many frames ``seek`` advances (transformers'
    ``_retrieve_segment``): pairs of timestamp tokens end segments; after the last pair, an unfinished segment is
    left to the next window unless the decode ended on a single timestamp (nothing more was said)."""
    tokens = list(tokens)
    stamps = [t >= ts_begin for t in tokens]
    single_ending = stamps[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(tokens) - 1) if stamps[i] and stamps[i + 1]]
    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        else:
            cuts[-1] += 1  # the last segment keeps its closing timestamp
        out, last = [], 0
        for k, cut in enumerate(cuts):
            piece = tokens[last:cut]
            end = piece[-1 if k < len(cuts) - 1 or single_ending else -2]
            out.append(
                (offset + (piece[0] - ts_begin) * TIME_PRECISION, offset + (end - ts_begin) * TIME_PRECISION, piece)
            )
            last = cut
        advance = frames if single_ending else (tokens[last - 2] - ts_begin) * INPUT_STRIDE
    else:
        stamped = [t for t, s in zip(tokens, stamps, strict=True) if s]
        end_pos = int(frames * 0.01 / TIME_PRECISION)
        if stamped and stamped[-1] != ts_begin:
            end_pos = stamped[-1] - ts_begin
        out, advance = [(offset, offset + end_pos * TIME_PRECISION, tokens)], frames
    return out, advance if advance > 0 else frames  # a decode that moved nothing still moves on


def decode_windows(
    feats: Sequence[torch.Tensor],
    options: DecodeOptions,
    encode: Encode,
    silence: Silence | None,
    decode: Decode,
    *,
    special: dict[str, int],
    vocab_size: int,
    half: int,
    initial_prompt: Sequence[int] = (),
    done: Done | None = None,
) -> list[list[RawSegment]]:
    """Raw segments of every input (``feats[i]``: its whole log-mel, ``(n_mels, frames)``), all decoded together.

    ``special``: the ids of ``<|startofprev|>`` (``sop``), of the first timestamp (``timestamp_begin``) and of
    ``<|endoftext|>`` (``eot``; ``decode.window_options`` gives all three). ``half``:
    half the decoder's context (the prompt's room). ``initial_prompt``: the user's prompt's text tokens.
    ``done(i, raws)`` is called for each input as soon as its last window is decoded.
    """
    tracks = [_Track(f) for f in feats]
    initial = list(initial_prompt)
    if initial and options.condition_on_previous_text:
        for t in tracks:
            t.history.append(initial[-(half - 1) :])
    sop, ts_begin = special["sop"], special["timestamp_begin"]
    temperatures = options.temperature
    for i, t in enumerate(tracks):
        if t.frames == 0 and done is not None:
            done(i, [])
    active = [i for i, t in enumerate(tracks) if t.seek < t.frames]
    while active:
        cut = [tracks[i].window() for i in active]
        states = list(encode(active, torch.stack([w for w, _ in cut])))
        no_speech = list(silence(active, states)) if silence is not None else [None] * len(active)
        prompts = [_prompt(tracks[i], options, initial, sop, half, ts_begin) for i in active]
        kept: list[tuple[WindowDecode, float] | None] = [None] * len(active)
        pending = list(range(len(active)))
        for step, temperature in enumerate(temperatures):
            got = decode(
                [active[k] for k in pending], [states[k] for k in pending], [prompts[k] for k in pending], temperature
            )
            retry = []
            for k, g in zip(pending, got, strict=True):
                kept[k] = (g, temperature)
                if step < len(temperatures) - 1 and _falls_back(g, no_speech[k], options, vocab_size, special):
                    retry.append(k)
            pending = retry
            if not pending:
                break
        for k, i in enumerate(active):
            track, (g, temperature) = tracks[i], kept[k]
            track.condition = temperature < 0.5
            if silent(Attempt("", g.avg_logprob, no_speech_prob=no_speech[k]), options):
                track.seek += cut[k][1]  # Whisper's no-speech skip: the whole window, its made-up text forgotten
            else:
                offset = track.seek * TIME_PRECISION / INPUT_STRIDE
                pieces, advance = split_window(g.tokens, ts_begin, offset, cut[k][1])
                for start, end, tokens in pieces:
                    track.raws.append(RawSegment(start, end, tuple(tokens), g.avg_logprob, no_speech[k]))
                    track.history.append(list(tokens))
                track.seek += advance
            if track.seek >= track.frames and done is not None:
                done(i, track.raws)
        active = [i for i in active if tracks[i].seek < tracks[i].frames]
    return [t.raws for t in tracks]


def _falls_back(g: WindowDecode, no_speech: float | None, options: DecodeOptions, vocab_size: int, special) -> bool:
    """Whether a row's window decodes again at the next temperature: never when the window is silent (Whisper's
    rule: high no-speech probability and an unlikely text), else on a loop or an unlikely text (transformers')."""
    if silent(Attempt("", g.avg_logprob, no_speech_prob=no_speech), options):
        return False
    low = options.logprob_threshold
    unlikely = low is not None and g.avg_logprob < low
    limit = options.compression_ratio_threshold
    checked = [*g.tokens, special["eot"]] if g.ended else list(g.tokens)
    return unlikely or (limit is not None and token_compression_ratio(checked, vocab_size) > limit)
