#!/usr/bin/env python
"""Build the routing background of a base: speech in languages no shipped adapter covers.

    apt-get install fillets-ng-data fillets-ng-data-nl      # real Dutch and English voice acting
    python recipes/routing_background.py [--base whisper-base]

Writes ``whisper_lora/routing_backgrounds/<base fingerprint>.safetensors``: real Dutch and English
lines from the Fish Fillets levels of the *train* split (bench/routing.py holds out the others), and
espeak-ng speech in training voices: the first half of French and German ``bench/sentences`` (the
bench speaks the other half, in other voices) and Italian, Portuguese, English, Dutch and Turkish, and the first
half of Slovak and Malay: close relatives of the shipped Czech and Indonesian adapters, which the router learns apart
from them (``routing.HARD_CLASSES``). Polish and Spanish are in no background: the bench uses them as languages
the router never saw.
"""

import argparse
from pathlib import Path

from whisper_lora.base.model import load_base_model
from whisper_lora.data.audio import load_audio
from whisper_lora.data.fillets import DEFAULT_ROOT, level_split, recorded_lines
from whisper_lora.data.synth import read_sentences, synthesize
from whisper_lora.inference.language_id import spread
from whisper_lora.inference.routing import build_background
from whisper_lora.registry.language_profile import write_profile

SENTENCES = Path(__file__).resolve().parent.parent / "bench" / "sentences"
HARD = ("sk", "ms")  # close relatives of shipped adapters' languages (Czech, Indonesian): the router's hard negatives
OUT = Path(__file__).resolve().parent.parent / "whisper_lora" / "routing_backgrounds"

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="whisper-base")
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--per-language", type=int, default=160, help="real lines per language (the shipped: 160)")
    a = p.parse_args()
    speech = {}
    for voice in ("nl", "en"):
        lines = [path for level, path in recorded_lines(a.root, voice) if level_split(level) == "train"]
        signals = [s for s in (load_audio(path) for path in spread(lines, a.per_language * 2)) if len(s) > 8000]
        speech[voice] = signals[: a.per_language]
    for lang in ("fr", "de", "it", "pt", "en", "nl", "tr", *HARD):
        sentences = read_sentences(SENTENCES / f"{lang}.txt")
        if lang in ("fr", "de", *HARD):  # the bench speaks the other half
            sentences = sentences[: len(sentences) // 2]
        synthetic = [synthesize(s, lang, v) for s in sentences for v in ("m1", "f3")]
        speech[lang] = speech.get(lang, []) + synthetic
    base = load_base_model(a.base, "int8", "auto", 0.0)  # as Transcriber loads it
    profile = build_background(base.model, base.processor, base.info, speech)
    out = write_profile(OUT, profile).rename(OUT / f"{base.info.fingerprint}.safetensors")
    print(f"{out}: {profile.utterances} utterances ({', '.join(f'{k} {len(v)}' for k, v in speech.items())})")
