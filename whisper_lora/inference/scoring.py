"""WER/CER, orthographic and normalised, for a base model and its adapter side by side."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from whisper_lora.data.features import Example
from whisper_lora.inference.generation import decoding_config
from whisper_lora.languages import resolve_language

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


@dataclass(frozen=True)
class Scores:
    """Error rates over a set of utterances."""

    wer: float  # normalised word error rate
    cer: float  # normalised character error rate
    wer_orthographic: float  # on raw text (case and punctuation count)
    cer_orthographic: float
    n: int  # utterances scored (references that normalise to empty are dropped)

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def score(references: Sequence[str], hypotheses: Sequence[str], language: str) -> Scores:
    """Orthographic and normalised WER/CER (jiwer), skipping references that normalise to empty."""
    import jiwer

    norm = normalizer_for(language)
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if norm(r).strip()]
    if not pairs:
        return Scores(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    refs, hyps = [p[0].strip() for p in pairs], [p[1].strip() for p in pairs]
    nrefs, nhyps = [norm(r) for r in refs], [norm(h) for h in hyps]
    return Scores(
        wer=jiwer.wer(nrefs, nhyps),
        cer=jiwer.cer(nrefs, nhyps),
        wer_orthographic=jiwer.wer(refs, hyps),
        cer_orthographic=jiwer.cer(refs, hyps),
        n=len(pairs),
    )


def reference_cap(examples: Sequence[Example], max_new_tokens: int) -> int:
    """Decoding cap for a batch: its longest reference plus a margin (a quarter, at least 10
    tokens), never above ``max_new_tokens``. A hypothesis that long already scores as a loop, so
    decoding further changes nothing but time."""
    longest = max(len(e.labels) for e in examples)
    return min(max_new_tokens, longest + max(10, longest // 4))


@torch.no_grad()
def transcribe_examples(
    model,
    processor,
    examples: Sequence[Example],
    language: str,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    progress: bool = False,
    desc: str = "decode",
    cap_to_references: bool = True,
) -> list[str]:
    """Greedy (or beam) transcripts of featurised examples with the language forced, in input order.

    Examples are decoded in batches of similar reference length, each batch stopping at
    ``reference_cap`` tokens (``cap_to_references=False``: at ``max_new_tokens``).
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].labels))  # batched by length
    out: list[str] = [""] * len(examples)
    try:
        for i in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            rows = order[i : i + batch_size]
            batch = [examples[k] for k in rows]
            feats = torch.stack([e.input_features for e in batch]).to(device=device, dtype=dtype)
            cap = reference_cap(batch, max_new_tokens) if cap_to_references else max_new_tokens
            ids = model.generate(
                input_features=feats,
                generation_config=decoding_config(model, num_beams, cap),
                language=resolve_language(language).whisper,
                task="transcribe",
            )
            for k, text in zip(rows, processor.batch_decode(ids, skip_special_tokens=True), strict=True):
                out[k] = text.strip()
    finally:
        model.train(was_training)
    return out


def evaluate_examples(model, processor, examples: Sequence[Example], language: str, **kw) -> tuple[Scores, list[str]]:
    """Transcribe and score; returns the scores and the hypotheses."""
    hyps = transcribe_examples(model, processor, examples, language, **kw)
    return score([e.text for e in examples], hyps, language), hyps


def compare_base_and_adapter(peft_model, processor, examples: Sequence[Example], language: str, **kw) -> dict:
    """Scores of the untouched base (adapters disabled) and of the active adapter."""
    with peft_model.disable_adapter():
        base, _ = evaluate_examples(peft_model, processor, examples, language, desc="base", **kw)
    adapted, _ = evaluate_examples(peft_model, processor, examples, language, desc="adapter", **kw)
    return {"base": base.to_dict(), "adapter": adapted.to_dict()}
