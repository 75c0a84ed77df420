"""WER/CER, orthographic and normalised, of a base model and its adapter side by side.

Hypotheses come from ``decode.decode_texts``: the same decoding ``transcribe`` does (no cap
derived from the references), so the scores are what users get and compare with other tools.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

from whisper_lora.data.features import Example
from whisper_lora.inference.decode import Decoding, decode_texts
from whisper_lora.languages import decoder_token, resolve_language
from whisper_lora.results import Comparison, Scores

if TYPE_CHECKING:
    import torch

_AR_DIACRITICS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")  # harakat, tatweel
_AR_ALEF = re.compile("[\u0622\u0623\u0625\u0671\u0672\u0673]")  # آ أ إ ٱ -> ا


def normalize_arabic(text: str) -> str:
    """Strip Arabic diacritics and tatweel, unify alef forms."""
    return _AR_ALEF.sub("\u0627", _AR_DIACRITICS.sub("", unicodedata.normalize("NFKC", text)))


def normalizer_for(language: str):
    """Whisper's English normaliser for English, the basic one otherwise (+ Arabic-script rules)."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    lang = resolve_language(language)
    if lang.whisper == "en":
        inner = EnglishTextNormalizer({})
    elif lang.whisper in ("ar", "fa", "ur", "ps", "sd"):
        basic = BasicTextNormalizer()
        inner = lambda s: basic(normalize_arabic(s))  # noqa: E731
    else:
        inner = BasicTextNormalizer()
    return lambda s: " ".join(inner(s).split())


def score(references: Sequence[str], hypotheses: Sequence[str], language: str) -> Scores:
    """Orthographic and normalised WER/CER (jiwer), skipping references that normalise to empty."""
    import jiwer

    norm = normalizer_for(language)
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if norm(r).strip()]
    if not pairs:
        return Scores(math.nan, math.nan, math.nan, math.nan, 0)
    refs, hyps = [p[0].strip() for p in pairs], [p[1].strip() for p in pairs]
    nrefs, nhyps = [norm(r) for r in refs], [norm(h) for h in hyps]
    return Scores(
        wer=jiwer.wer(nrefs, nhyps),
        cer=jiwer.cer(nrefs, nhyps),
        wer_orthographic=jiwer.wer(refs, hyps),
        cer_orthographic=jiwer.cer(refs, hyps),
        n=len(pairs),
    )


def transcribe_examples(
    model,
    processor,
    examples: Sequence[Example],
    language: str,
    decoding: Decoding | None = None,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "decode",
    encoder_states: dict[int, torch.Tensor] | None = None,
    token: str | None = None,
    trim: float | None = None,
) -> list[str]:
    """Transcripts of examples, decoded as ``transcribe`` decodes (``decode.decode_texts``), in input order.

    ``token``: the Whisper token code the decoder is prompted with (an adapter's ``whisper_language``); None: the
    language's own or proxy (``decoder_token``).

    ``trim``: encode each clip trimmed to its length plus this many seconds (``decode_texts``), not a 30 s window.
    Batches group clips of similar duration (never by reference length: references are not read).
    ``encoder_states`` (by example index, read and filled): pass one dict to two calls whose encoders compute the
    same (``reuses_encoder``) and the second skips the encoder.
    """
    import torch
    from tqdm.auto import tqdm

    decoding = decoding or Decoding()
    whisper = token or decoder_token(language)
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: examples[i].duration)
    out: list[str] = [""] * len(examples)
    try:
        with torch.no_grad(), tqdm(total=len(order), desc=desc, unit="clip", disable=not progress) as bar:
            for i in range(0, len(order), batch_size):
                rows = order[i : i + batch_size]
                audios = [examples[k].audio_array() for k in rows]
                known = None
                if encoder_states is not None:
                    known = {j: encoder_states[k] for j, k in enumerate(rows) if k in encoder_states}
                texts = decode_texts(model, processor, audios, whisper, decoding, known, trim)
                if known is not None:
                    encoder_states.update({rows[j]: state for j, state in known.items()})
                for k, text in zip(rows, texts, strict=True):
                    out[k] = text
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return out


def evaluate_examples(model, processor, examples: Sequence[Example], language: str, **kw) -> tuple[Scores, list[str]]:
    """Transcribe and score; returns the scores and the hypotheses."""
    hyps = transcribe_examples(model, processor, examples, language, **kw)
    return score([e.text for e in examples], hyps, language), hyps


def compare_base_and_adapter(
    peft_model,
    processor,
    examples: Sequence[Example],
    language: str,
    split: str | None = None,
    base_scores: Scores | None = None,
    base_token: str | None = None,
    trim: float | None = None,
    **kw,
) -> Comparison:
    """Scores of the untouched base (adapters disabled; ``base_scores`` when already known) and of the
    active adapter. An adapter that leaves the encoder untouched decodes from the base's encoder outputs.

    ``kw["token"]``: the Whisper token code the adapter decodes with; ``base_token``: the base's, when it differs
    (an adapter that adds a token: the base decodes with the proxy, ``AdapterMetadata.base_token``). ``trim``: the
    adapter's encoder was trained on clips plus this many seconds (``base/trim.py``): it is scored a second time
    with its inputs encoded so (``Comparison.trimmed``), which decides how ``Transcriber`` encodes them."""
    if base_scores is None:
        if reuses_encoder(peft_model, len(examples)):
            kw = {**kw, "encoder_states": {}}
        base_kw = {**kw, "token": base_token} if base_token else kw
        with peft_model.disable_adapter():
            base_scores, _ = evaluate_examples(peft_model, processor, examples, language, desc="base", **base_kw)
    adapted, _ = evaluate_examples(peft_model, processor, examples, language, desc="adapter", **kw)
    trimmed = None
    if trim is not None:
        kw = {k: v for k, v in kw.items() if k != "encoder_states"}  # those are of 30 s windows
        kw.update(desc="adapter, trimmed", trim=trim)
        trimmed, _ = evaluate_examples(peft_model, processor, examples, language, **kw)
    return Comparison(base_scores, adapted, split, trimmed)


MAX_REUSED = 256  # clips whose encoder outputs scoring keeps for a second decode (whisper-base: 3 MB each)


def reuses_encoder(peft_model, n: int) -> bool:
    """Whether the base's encoder outputs of ``n`` clips can serve ``peft_model``'s active adapter too: it has no
    LoRA module in the encoder (so both compute the same), and the outputs are few enough to keep."""
    adapted = any(".encoder." in name and "lora_" in name for name, _ in peft_model.named_parameters())
    return not adapted and n <= MAX_REUSED


def scored_with(precision: str, decoding: Decoding) -> dict:
    """How a ``metrics`` record was scored (kept next to the scores in ``whisper_lora.json``)."""
    return {
        "precision": precision,
        "decoding": {
            "num_beams": decoding.num_beams,
            "max_new_tokens": decoding.max_new_tokens,
            "loop_guard": decoding.options.compression_ratio_threshold,
        },
    }
