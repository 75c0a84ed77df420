#!/usr/bin/env python
"""Long-form transcription on real speech: WER of long-form vs per-clip decoding, segment start errors, loops.

    python bench/longform.py [--adapter cs=adapters/cs ...] [--files 2] [--clips 20] [--precision int8]

Long recordings are made by joining held-out clips with pauses (known boundaries and texts): real Czech
(Fish Fillets NG test levels, Debian's fillets-ng-data-cs) and LibriVox English (tests/assets). For each
model (the base, then every ``--adapter NAME=DIR``) it prints, side by side: the WER/CER of the clips
decoded one by one, of the same clips inside the long file, their ratio, the median and 90th percentile
distance between each true clip start and the nearest segment start (segments from Whisper's timestamp
tokens, and bounded by word alignment), and the outputs that look like a repetition loop. Every table names the CPU it ran on.
"""

import argparse
import csv
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from whisper_lora.base.hardware import device_summary
from whisper_lora.data.audio import load_audio
from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest
from whisper_lora.data.longaudio import join_clips, start_errors
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.scoring import score
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.catalog import AdapterRegistry

ROOT = Path(__file__).resolve().parent.parent
LIBRIVOX = ROOT / "tests" / "assets" / "librivox"


def czech_files(n_files: int, n_clips: int, pause: float):
    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, Path(tempfile.mkdtemp()) / "cs.csv")
    rows = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if r["split"] == "test"]
    out = []
    for k in range(n_files):
        part = rows[k * n_clips : (k + 1) * n_clips]
        clips = [load_audio(r["audio"]) for r in part]
        out.append((clips, join_clips(clips, [r["text"] for r in part], pause=pause)))
    return out


def english_files(pause: float):
    wavs = sorted(LIBRIVOX.glob("*.wav")) * 2  # three clips, twice: about 45 s
    clips = [load_audio(w) for w in wavs]
    texts = [w.with_suffix(".txt").read_text().strip() for w in wavs]
    return [(clips, join_clips(clips, texts, pause=pause))]


def loop_files():
    """Synthetic Swahili (espeak-ng) that makes whisper-base loop: a minute of it as one file."""
    sentences = shipped_sentences("sw", "test")[:12]
    clips = [synthesize(s, "sw", "m2") for s in sentences]
    return [(clips, join_clips(clips, sentences, pause=1.0))]


WORDS = DecodeOptions(word_timestamps=True)


def measure(t: Transcriber, files, language: str, adapter, words: bool = True) -> dict:
    refs, clip_hyps, long_hyps, errors, word_errors, segments, looped = [], [], [], [], [], 0, 0
    started = time.perf_counter()
    clip_s = long_s = 0.0
    for clips, joined in files:
        t0 = time.perf_counter()
        per_clip = t.transcribe_batch(clips, language, adapter=adapter)
        t1 = time.perf_counter()
        long = t.transcribe(joined.audio, language, adapter=adapter, timestamps=True)
        t2 = time.perf_counter()
        clip_s, long_s = clip_s + t1 - t0, long_s + t2 - t1
        refs.append(" ".join(joined.texts))
        clip_hyps.append(" ".join(r.text for r in per_clip))
        long_hyps.append(long.text)
        errors += start_errors([s.start for s in long.segments], joined.starts)
        if words:  # segments bounded by word alignment
            worded = t.transcribe(joined.audio, language, adapter=adapter, timestamps=True, options=WORDS)
            word_errors += start_errors([s.start for s in worded.segments], joined.starts)
        segments += len(long.segments)
        looped += sum(s.repetition for s in long.segments)
    clips_score, long_score = score(refs, clip_hyps, language), score(refs, long_hyps, language)
    audio_s = sum(j.duration for _, j in files)
    return {
        "clip_wer": clips_score.wer,
        "clip_cer": clips_score.cer,
        "long_wer": long_score.wer,
        "long_cer": long_score.cer,
        "wer_ratio": long_score.wer / clips_score.wer if clips_score.wer else float("nan"),
        "start_err_median": statistics.median(errors),
        "start_err_p90": sorted(errors)[int(0.9 * (len(errors) - 1))],
        "start_err_words_median": statistics.median(word_errors) if word_errors else float("nan"),
        "segments": segments,
        "clips": len(errors),
        "repetition_segments": looped,
        "longest_output_words": max(len(h.split()) for h in long_hyps),
        "reference_words": max(len(r.split()) for r in refs),
        "audio_s": audio_s,
        "rtf_long": long_s / audio_s,
        "rtf_clips": clip_s / audio_s,
        "seconds": time.perf_counter() - started,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", action="append", default=[], help="NAME=DIR of an adapter to compare (repeatable)")
    p.add_argument("--files", type=int, default=2, help="Czech long files")
    p.add_argument("--clips", type=int, default=20, help="held-out clips per Czech file")
    p.add_argument("--pause", type=float, default=1.0, help="seconds of silence between clips")
    p.add_argument("--precision", default="int8")
    p.add_argument("--skip-english", action="store_true")
    p.add_argument("--skip-loops", action="store_true")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    print(device_summary("cpu"))
    corpora = [("cs", czech_files(a.files, a.clips, a.pause))]
    if not a.skip_english:
        corpora.append(("en", english_files(a.pause)))
    rows = []
    for name, path in [("base", None)] + [tuple(x.split("=", 1)) for x in a.adapter]:
        with tempfile.TemporaryDirectory() as reg:
            if path:
                shutil.copytree(path, Path(reg) / "cs")
            t = Transcriber("whisper-base", AdapterRegistry(reg), precision=a.precision, device="cpu")
            for lang, files in corpora:
                adapter = None if (path is None or lang != "cs") else "cs"
                rows.append({"model": name, "language": lang, **measure(t, files, lang, adapter)})
                print(json.dumps(rows[-1]), flush=True)
            if path is None and not a.skip_loops:
                rows.append(
                    {"model": name, "language": "sw-synth", **measure(t, loop_files(), "sw", None, words=False)}
                )
                print(json.dumps(rows[-1]), flush=True)
    cols = ["model", "language", "clip_wer", "long_wer", "wer_ratio", "start_err_median", "start_err_p90"]
    cols += ["start_err_words_median"]
    cols += ["repetition_segments", "longest_output_words", "reference_words", "rtf_long", "rtf_clips"]
    print(f"\nlong-form vs per-clip ({a.precision} whisper-base; {device_summary('cpu')})\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
