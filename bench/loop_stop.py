#!/usr/bin/env python
"""The loop stop on real corpora: does stopping decodes stuck in a repetition loop change any final text, and
what does it save?

    python bench/loop_stop.py [--corpus sw librivox cs] [--limit N] [--batch-size 8]

For each corpus, the base (whisper-base, int8, as ``eval`` loads it) decodes the held-out clips the way ``eval``
and ``transcribe`` do, twice in one run: with ``DecodeOptions.stop_loops_early`` off, then on. It prints the
seconds of each, their ratio, and every clip whose final text differs (goal: none). Corpora: ``sw``, the
synthetic Swahili test split of the main job (whisper-base loops on most of it); ``librivox``, real English
(tests/assets); ``cs``, real Czech (Fish Fillets NG test levels, Debian's fillets-ng-data-cs). The table names the
CPU it ran on.
"""

import argparse
import csv
import tempfile
import time
from pathlib import Path

from whisper_lora.base.hardware import device_summary
from whisper_lora.base.model import load_base_model
from whisper_lora.data.audio import load_audio
from whisper_lora.data.synth import synthesize_corpus
from whisper_lora.data.synth_presets import default_synth_config
from whisper_lora.inference.decode import Decoding
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.scoring import score, transcribe_examples

ROOT = Path(__file__).resolve().parent.parent
LIBRIVOX = ROOT / "tests" / "assets" / "librivox"


class Clip:
    """What ``transcribe_examples`` reads of an example."""

    def __init__(self, audio, text: str):
        self.audio, self.text, self.duration = audio, text, len(audio) / 16000

    def audio_array(self):
        return self.audio


def corpus(name: str, limit: int | None) -> tuple[str, list[Clip]]:
    if name == "sw":
        root = synthesize_corpus(default_synth_config("sw"), Path(tempfile.mkdtemp()) / "sw")  # the main job's
        rows = list(csv.DictReader(open(root / "texts" / "test.csv", encoding="utf-8"), delimiter="\t"))
        clips = [Clip(load_audio(root / "wavs" / r["wav"]), r["words"]) for r in rows]
        language = "sw"
    elif name == "librivox":
        wavs = sorted(LIBRIVOX.glob("*.wav"))
        clips = [Clip(load_audio(w), w.with_suffix(".txt").read_text().strip()) for w in wavs]
        language = "en"
    elif name == "cs":
        from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest

        manifest, _ = build_fillets_manifest(DEFAULT_ROOT, Path(tempfile.mkdtemp()) / "cs.csv")
        rows = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if r["split"] == "test"]
        clips = [Clip(load_audio(r["audio"]), r["text"]) for r in rows]
        language = "cs"
    else:
        raise SystemExit(f"unknown corpus {name!r}; valid: sw, librivox, cs")
    return language, clips[:limit] if limit else clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", nargs="+", default=["sw", "librivox", "cs"])
    p.add_argument("--limit", type=int, help="first N clips of each corpus")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    loaded = load_base_model("whisper-base", "int8", "cpu", 0.0)
    print(f"device: {device_summary('cpu')}")
    print("| corpus | clips | stop off s | stop on s | speed-up | texts differing | CER off | CER on |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.corpus:
        language, clips = corpus(name, a.limit)
        texts, seconds = {}, {}
        for stop in (False, True):
            decoding = Decoding(options=DecodeOptions(stop_loops_early=stop))
            started = time.perf_counter()
            texts[stop] = transcribe_examples(
                loaded.model, loaded.processor, clips, language, decoding, a.batch_size, progress=True
            )
            seconds[stop] = time.perf_counter() - started
        differ = [i for i, (x, y) in enumerate(zip(texts[False], texts[True], strict=True)) if x != y]
        cer = {s: score([c.text for c in clips], texts[s], language).cer for s in (False, True)}
        print(
            f"| {name} | {len(clips)} | {seconds[False]:.1f} | {seconds[True]:.1f} | "
            f"{seconds[False] / seconds[True]:.2f}x | {len(differ)} | {cer[False]:.3f} | {cer[True]:.3f} |",
            flush=True,
        )
        for i in differ:
            print(f"  clip {i}: off {texts[False][i]!r}\n          on  {texts[True][i]!r}")


if __name__ == "__main__":
    main()
