"""What routing looks at, from one pass of the untouched base over the first 30 s of an input.

- Whisper's own language ID: the log-probabilities of its language tokens after
  ``<|startoftranscript|>`` (one decoder step on the encoder output);
- the pooled encoder state: the mean of the last encoder layer over the frames that hold audio
  (not the padding of a short clip).

Both come from the same encoder pass, so routing costs what Whisper's language ID costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from whisper_lora.data.audio import N_SAMPLES
from whisper_lora.errors import ConfigError
from whisper_lora.inference.decode import features
from whisper_lora.languages import WHISPER_LANGUAGES

SAMPLES_PER_FRAME = 320  # 16 kHz audio -> 50 encoder frames a second
ENCODER_FRAMES = 1500
BATCH = 8


@dataclass(frozen=True)
class LanguageEvidence:
    """Per input: Whisper's language-ID log-probabilities and the pooled encoder state."""

    languages: tuple[str, ...]  # Whisper codes of the ``logprobs`` columns
    logprobs: np.ndarray  # (inputs, languages) float32
    encoder_mean: np.ndarray  # (inputs, d_model) float32

    @staticmethod
    def concat(parts: Sequence[LanguageEvidence]) -> LanguageEvidence:
        """The evidence of several batches, in order (at least one)."""
        logprobs = np.concatenate([e.logprobs for e in parts])
        return LanguageEvidence(parts[0].languages, logprobs, np.concatenate([e.encoder_mean for e in parts]))

    def detected(self, allowed: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Whisper's pick per input (code, probability), among ``allowed`` languages only when given
        (probabilities renormalised over them)."""
        lp = self.logprobs
        cols = list(range(len(self.languages)))
        if allowed is not None:
            cols = [i for i, code in enumerate(self.languages) if code in set(allowed)]
            if not cols:
                raise ConfigError(f"none of {sorted(allowed)} is a language of this base model")
        sub = lp[:, cols]
        p = np.exp(sub - sub.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        best = p.argmax(1)
        return [(self.languages[cols[int(b)]], float(p[i, b])) for i, b in enumerate(best)]


def language_tokens(model, processor) -> dict[str, int]:
    """``{whisper code: token id}`` of a multilingual base; ConfigError for an English-only one."""
    gen = model.generation_config
    table = dict(gen.lang_to_id) if getattr(gen, "lang_to_id", None) else {}
    if not table:
        raise ConfigError("this base model is English-only: it has no language tokens to detect with")
    # Whisper's own tokens only: one added to this base for an adapter (language_tokens.py) is not the base's evidence
    return {token[2:-2]: int(i) for token, i in table.items() if token[2:-2] in WHISPER_LANGUAGES}


@torch.no_grad()
def language_evidence(model, processor, audios: Sequence[np.ndarray], progress: bool = False) -> LanguageEvidence:
    """``LanguageEvidence`` of each input (its first 30 s), computed with ``model`` as it is: pass the
    untouched base (a PeftModel inside ``disable_adapter()``)."""
    return evidence_and_states(model, processor, audios, progress, keep_states=False)[0]


@torch.no_grad()
def evidence_and_states(
    model, processor, audios: Sequence[np.ndarray], progress: bool = False, keep_states: bool = True
) -> tuple[LanguageEvidence, list[torch.Tensor]]:
    """``language_evidence``, and each input's encoder output ``(1500, d_model)`` on the model's device (``[]`` when
    not ``keep_states``): the base's encoding of the input's 30 s window, which an input the base then decodes need
    not compute again (``Transcriber``)."""
    from tqdm.auto import tqdm

    whisper = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not len(audios):
        codes = tuple(language_tokens(model, processor))
        empty = np.zeros((0, len(codes)), np.float32), np.zeros((0, whisper.config.d_model), np.float32)
        return LanguageEvidence(codes, *empty), []
    parts, kept = [], []
    for start in tqdm(range(0, len(audios), BATCH), desc="language evidence", disable=not progress, unit="batch"):
        chunk = [np.asarray(a)[:N_SAMPLES] for a in audios[start : start + BATCH]]
        states = whisper.model.encoder(features(model, processor, chunk)).last_hidden_state
        parts.append(evidence_of_states(model, processor, states, [len(a) for a in chunk]))
        if keep_states:
            kept += list(states.unbind(0))
    return LanguageEvidence.concat(parts), kept


@torch.no_grad()
def evidence_of_states(model, processor, states: torch.Tensor, samples: Sequence[int]) -> LanguageEvidence:
    """``LanguageEvidence`` from encoder outputs ``states`` ``(inputs, frames, d_model)`` of 30 s windows whose audio
    was ``samples`` long: one decoder step after ``<|startoftranscript|>``, and the mean over the frames that hold
    audio. Used on a fresh encoder pass, and on the states training already cached (``training/report.py``)."""
    tokens = language_tokens(model, processor)
    codes, ids = list(tokens), list(tokens.values())
    sot = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    whisper = model.get_base_model() if hasattr(model, "get_base_model") else model
    dec = torch.full((len(states), 1), sot, dtype=torch.long, device=states.device)
    logits = whisper(encoder_outputs=(states,), decoder_input_ids=dec).logits[:, -1]
    pooled = []
    for j, n in enumerate(samples):
        frames = max(1, min(ENCODER_FRAMES, n // SAMPLES_PER_FRAME))
        pooled.append(states[j, :frames].float().mean(0).cpu().numpy())
    return LanguageEvidence(tuple(codes), logits[:, ids].float().log_softmax(-1).cpu().numpy(), np.stack(pooled))


def spread(items: Sequence, n: int) -> list:
    """Up to ``n`` items evenly spaced over ``items`` (a profile then spans the whole corpus, not its start)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def profile_utterances(model, processor, audio_paths: Sequence[str], base_info, progress: bool = False):
    """The ``LanguageProfile`` of up to ``MAX_UTTERANCES`` utterances (evenly spread), computed with
    ``model`` as it is (pass the untouched base)."""
    from whisper_lora.data.audio import load_audio
    from whisper_lora.registry.language_profile import MAX_UTTERANCES, LanguageProfile

    paths = spread(list(audio_paths), MAX_UTTERANCES)
    if not paths:
        raise ConfigError("a language profile needs at least one utterance")
    evidence = language_evidence(model, processor, [load_audio(p) for p in paths], progress)
    return LanguageProfile.from_evidence(evidence, base_info.fingerprint, base_info.precision)
