"""The temperature fallback of clips up to 30 s, batched: what each row of one ``generate`` call gives at one step
of the ladder, and when a row is plainly stuck in a repetition loop.

``Rows`` rides along one ``generate`` call (num_beams 1) as a logits processor and a stopping criterion:

- it picks each row's token itself: the argmax at temperature 0, else a sample from that row's own random stream
  (seeded per row, so a row's text never depends on the other rows of the batch, as one sampler for the whole
  batch would make it), and records the token's log-probability (``avg_logprob``, as openai-whisper's
  ``sum_logprobs / len``);
- with ``cut=True`` it stops a row whose tail repeats one n-gram at least ``LOOP_REPEATS`` times over at least
  ``LOOP_SPAN`` tokens while its text so far is already ``LOOP_MARGIN`` times over the compression-ratio threshold:
  decoded to its end it would almost surely be rejected by the loop guard and decoded again hotter. It is a
  prediction: ``bench/loop_stop.py`` measures how often it changes a final text, and
  ``DecodeOptions.stop_loops_early=False`` turns it off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria

from whisper_lora.inference.longform import DecodeOptions, compression_ratio

LOOP_REPEATS = 4  # the repeated n-gram occurs at least this many times in a row at the tail
LOOP_SPAN = 24  # over at least this many tokens (so "a a a" needs 24 of them)
LOOP_PERIOD = 32  # longest repeated n-gram looked for, in tokens
LOOP_MARGIN = 1.25  # the text so far compresses at least this many times over the threshold


@dataclass(frozen=True)
class Attempt:
    """What one row gave at one step of the ladder."""

    text: str
    avg_logprob: float | None  # mean log-probability of its tokens (end of text included); None under beam search
    cut: bool = False  # stopped as a repetition loop: it fails the loop guard whatever would have followed
    no_speech_prob: float | None = None  # Whisper's <|nospeech|> probability after <|startoftranscript|>, this row
    # the row's encoder output, so that the next temperature decodes without encoding again (not part of the result)
    states: torch.Tensor | None = field(default=None, repr=False, compare=False)


def silent(attempt: Attempt, options: DecodeOptions) -> bool:
    """Whisper's silence test (openai-whisper's ``transcribe``, and the long-form windows here): the row's no-speech
    probability is over ``no_speech_threshold`` and its text is unlikely (average log-probability under
    ``logprob_threshold``; unknown under beam search: not silent). What is decoded from silence is made up."""
    threshold, p, low = options.no_speech_threshold, attempt.no_speech_prob, options.logprob_threshold
    if threshold is None or p is None or p <= threshold:
        return False
    return low is None or (attempt.avg_logprob is not None and attempt.avg_logprob < low)


def kept_text(attempt: Attempt, options: DecodeOptions) -> str:
    """The text a row settles with: none when it is ``silent``, else its text."""
    return "" if silent(attempt, options) else attempt.text


def needs_fallback(attempt: Attempt, options: DecodeOptions, step: int) -> bool:
    """Whether a row decodes again at the next temperature: a loop (cut, or compression ratio over the threshold);
    from the second step on also a low average log-probability, as Whisper's own fallback (the first step keeps
    the loop guard alone, so a greedy text is only replaced when it loops). Never a ``silent`` row (Whisper's rule:
    decoding silence hotter only makes up other text)."""
    if silent(attempt, options):
        return False
    limit = options.compression_ratio_threshold
    if attempt.cut or (limit and compression_ratio(attempt.text) > limit):
        return True
    low = options.logprob_threshold
    return step > 0 and low is not None and attempt.avg_logprob is not None and attempt.avg_logprob < low


def final_text(attempts: Sequence[Attempt], options: DecodeOptions) -> str:
    """The text a row keeps once every temperature failed: of the attempts that failed on their log-probability
    alone (not on a loop), the likeliest, as faster-whisper picks; when every attempt looped, the last one."""
    limit = options.compression_ratio_threshold
    fine = [a for a in attempts if not a.cut and not (limit and compression_ratio(a.text) > limit)]
    fine = [a for a in fine if a.avg_logprob is not None]
    return max(fine, key=lambda a: a.avg_logprob).text if fine else attempts[-1].text


def stuck(tokens: list[int], text: str | None, threshold: float) -> bool:
    """Whether ``tokens`` (text tokens so far) end in a repetition loop, given their ``text`` (None: not decoded
    yet; checked only when the tokens repeat, since decoding costs more)."""
    n = len(tokens)
    for period in range(1, min(LOOP_PERIOD, n // LOOP_REPEATS) + 1):
        span = max(LOOP_REPEATS * period, LOOP_SPAN)
        if span <= n and tokens[n - span + period :] == tokens[n - span : n - period]:
            return text is None or compression_ratio(text) > LOOP_MARGIN * threshold
    return False


class Rows:
    """Per-row token choice, log-probabilities and loop stops of one batched ``generate`` call (num_beams 1).

    Pass ``processor()`` as a logits processor (it must come last: it picks the token) and ``criterion()`` as a
    stopping criterion.
    """

    def __init__(
        self,
        n: int,
        temperature: float,
        tokenizer,
        eot: int,
        cut_above: float | None,
        seed: int = 0,
        vocab: int | None = None,
        limits: list[int] | None = None,
    ):
        self.n, self.temperature, self.tokenizer, self.eot = n, temperature, tokenizer, eot
        self.vocab = vocab  # sample among the first ``vocab`` ids: the base's own (language tokens added after them)
        self.cut_above = cut_above  # compression-ratio threshold when loops are cut; None: never cut
        self.seed = seed
        self.start: int | None = None  # the decoder prompt's length (the first generated position)
        self.logprob = [0.0] * n
        self.count = [0] * n
        self.ended = [False] * n  # end of text chosen, or cut
        self.cut = [False] * n
        self.limits = limits  # each row's most new tokens (it ends there); None: the call's own limit
        self.capped = [False] * n  # ended at its limit
        self._generators: list[torch.Generator] | None = None

    def attempts(self, texts: list[str]) -> list[Attempt]:
        return [Attempt(t, self.logprob[r] / max(self.count[r], 1), self.cut[r]) for r, t in enumerate(texts)]

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature <= 0:
            return scores.argmax(-1)
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(self.seed) for _ in range(self.n)]
        # the same draws whatever language tokens adapters added after the base's vocabulary (never chosen anyway)
        probs = torch.softmax(scores[:, : self.vocab].float() / self.temperature, -1)
        return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self._generators)])

    def processor(self) -> LogitsProcessor:
        return _Pick(self)

    def criterion(self) -> StoppingCriteria:
        return _StopLoops(self)


class _Pick(LogitsProcessor):
    """Chooses each row's token (``Rows``) and records its log-probability."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = self.rows
        if rows.start is None:
            rows.start = input_ids.shape[1]
        chosen = rows._choose(scores)
        logp = torch.log_softmax(scores.float(), -1).gather(1, chosen[:, None])[:, 0].tolist()
        for r, (token, lp) in enumerate(zip(chosen.tolist(), logp, strict=True)):
            if not rows.ended[r]:
                rows.logprob[r] += lp
                rows.count[r] += 1
                rows.ended[r] = token == rows.eot
        if rows.temperature <= 0:
            return scores  # greedy search takes the argmax itself
        return torch.full_like(scores, -torch.inf).scatter_(1, chosen[:, None], 0.0)


class _StopLoops(StoppingCriteria):
    """Ends the rows ``Rows`` finds stuck in a repetition loop (when it cuts loops), and rows at their own limit."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        rows = self.rows
        if rows.limits is not None:
            for r in range(rows.n):
                if not rows.ended[r] and rows.count[r] >= rows.limits[r]:
                    rows.capped[r] = rows.ended[r] = True
        if rows.cut_above is not None and rows.start is not None:
            for r in range(rows.n):
                if rows.ended[r]:
                    continue
                tokens = [t for t in input_ids[r, rows.start :].tolist() if t < rows.eot]
                if stuck(tokens, None, rows.cut_above) and stuck(tokens, rows.tokenizer.decode(tokens), rows.cut_above):
                    rows.cut[r] = rows.ended[r] = True
        return torch.tensor(
            [c or p for c, p in zip(rows.cut, rows.capped, strict=True)], dtype=torch.bool, device=input_ids.device
        )
