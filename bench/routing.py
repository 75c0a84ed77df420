#!/usr/bin/env python
"""Auto routing: the router against Whisper's language ID, on held-out clips, with its cost and end-to-end WER.

    python bench/routing.py [--per-language 24] [--wer-per-language 12] [--librivox DIR] [--out bench/results/routing.json]

Held-out sets (none of it in an adapter's training data or the routing background):
real Czech (Fish Fillets levels of the test and dev splits; cs adapter), real English (LibriVox clips in
tests/assets, plus pocketsphinx's when --librivox points at them, plus Fish Fillets English of held-out
levels), real Dutch (Fish Fillets, held-out levels), synthetic Swahili and Indonesian (shipped test
sentences, voices never used in training; sw and id adapters), synthetic French and German (the half of
bench/sentences the background does not use, test voices), Polish and Spanish (in no background), and the close
relatives Slovak and Malay (the half of their sentences the background does not use, test voices): the pairs
cs/sk, cs/pl and id/ms are shown by threshold.
Both routers decide from the same evidence (one base pass per clip). Prints the CPU class.
"""

import argparse
import csv
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import jiwer

from whisper_lora.base.hardware import device_summary
from whisper_lora.data.audio import load_audio
from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest, level_split, recorded_lines
from whisper_lora.data.synth import TEST_VOICES, read_sentences, shipped_sentences, synthesize
from whisper_lora.inference.language_id import spread
from whisper_lora.inference.routing import Router
from whisper_lora.inference.scoring import normalizer_for
from whisper_lora.inference.transcriber import Transcriber

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ROOT / "bench" / "sentences"
OLD_THRESHOLD = 0.5  # auto's detect_threshold before the router
PAIRS = [("cs", "sk"), ("cs", "pl"), ("id", "ms")]  # (adapter language, close relative without an adapter)


def held_out_sets(n: int, librivox: str | None) -> dict[str, list[tuple[object, str | None]]]:
    """``{language: [(audio, reference text or None)]}``."""
    sets = {}
    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, Path(tempfile.mkdtemp()) / "m.csv")
    rows = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if r["split"] in ("test", "dev")]
    sets["cs"] = [(load_audio(r["audio"]), r["text"]) for r in spread(rows, n)]
    en = []
    for d in [ROOT / "tests" / "assets" / "librivox", *([Path(librivox)] if librivox else [])]:
        for wav in sorted(d.glob("*.wav")):
            txt = wav.with_suffix(".txt")
            en.append((load_audio(wav), txt.read_text().strip() if txt.is_file() else None))
    for voice, lang in (("en", "en"), ("nl", "nl")):
        lines = [p for level, p in recorded_lines(DEFAULT_ROOT, voice) if level_split(level) != "train"]
        clips = [a for a in (load_audio(p) for p in spread(lines, 2 * n)) if len(a) > 8000]
        sets[lang] = (en if lang == "en" else []) + [(a, None) for a in clips[: n - (len(en) if lang == "en" else 0)]]
    for lang in ("sw", "id"):
        sents = shipped_sentences(lang, "test")
        sets[lang] = [(synthesize(s, lang, TEST_VOICES[i % len(TEST_VOICES)]), s) for i, s in enumerate(sents[:n])]
    for lang in ("fr", "de", "pl", "es", "sk", "ms"):
        sents = read_sentences(SENTENCES / f"{lang}.txt")
        # fr, de and the relatives sk, ms: the half not in the background
        sents = sents[len(sents) // 2 :] if lang in ("fr", "de", "sk", "ms") else sents
        sets[lang] = [(synthesize(s, lang, TEST_VOICES[i % len(TEST_VOICES)]), None) for i, s in enumerate(sents[:n])]
    return sets


def whisper_lid_route(t: Transcriber, evidence):
    """What ``auto`` did before the router: Whisper's pick, its adapter when p >= the threshold."""
    out = []
    for code, p in evidence.detected():
        entry = next((e for e in t.registry.entries() if e.whisper_language == code), None)
        out.append(entry.name if entry is not None and p >= OLD_THRESHOLD else "base")
    return out


def wer(refs, hyps, langs) -> float:
    """Corpus WER over a mixed set, each clip normalised for its own language."""
    norms = {lang: normalizer_for(lang) for lang in set(langs)}
    pairs = [(norms[g](r), norms[g](h)) for r, h, g in zip(refs, hyps, langs, strict=True) if norms[g](r)]
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-language", type=int, default=24)
    p.add_argument("--wer-per-language", type=int, default=12, help="clips per adapter language in the WER set")
    p.add_argument("--librivox", help="directory of more LibriVox .wav/.txt pairs (pocketsphinx's test/data/librivox)")
    p.add_argument("--adapters", default=str(ROOT / "adapters"))
    p.add_argument(
        "--thresholds", type=float, nargs="*", default=[0.5, 0.6, 0.7, 0.8], help="router thresholds to sweep"
    )
    p.add_argument("--skip-wer", action="store_true", help="routing accuracy only (no end-to-end decoding)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "routing.json"))
    a = p.parse_args()
    print(device_summary("cpu"))
    t = Transcriber("whisper-base", a.adapters, precision="int8", device="cpu")
    adapters = set(t.adapters())
    started = time.perf_counter()
    Router(t.registry.entries(), t.base_info.fingerprint, t.router.base_languages)
    fit_s = time.perf_counter() - started
    sets = held_out_sets(a.per_language, a.librivox)
    table, confusion, cost, evidences = {}, {}, [], {}
    for lang, items in sets.items():
        audios = [x for x, _ in items]
        started = time.perf_counter()
        evidence = t.language_evidence(audios)
        cost.append((time.perf_counter() - started, len(audios)))
        evidences[lang] = evidence
        started = time.perf_counter()
        routed = [d.adapter or "base" for d in t.router.route(evidence, t.detect_threshold)]
        route_s = time.perf_counter() - started
        lid = whisper_lid_route(t, evidence)
        want = lang if lang in adapters else "base"
        table[lang] = {
            "n": len(items),
            "expected": want,
            "router": round(sum(r == want for r in routed) / len(items), 3),
            "whisper_lid": round(sum(r == want for r in lid) / len(items), 3),
            "router_ms_per_clip": round(1000 * route_s / len(items), 3),
        }
        confusion[lang] = dict(Counter(routed))
    print(f"\nrouting accuracy (share of held-out clips sent where they belong), adapters: {sorted(adapters)}")
    print(f"{'language':<10}{'n':>4}  {'goes to':<8}{'router':>8}{'whisper LID':>13}  router's choices")
    for lang, row in table.items():
        print(
            f"{lang:<10}{row['n']:>4}  {row['expected']:<8}{row['router']:>8.3f}{row['whisper_lid']:>13.3f}  {confusion[lang]}"
        )
    evidence_s = sum(s for s, _ in cost) / sum(n for _, n in cost)
    print(
        f"\ncost: evidence (one base encoder pass + one decoder step) {evidence_s:.3f} s/clip; classifier "
        f"{max(r['router_ms_per_clip'] for r in table.values()):.3f} ms/clip; router fit {fit_s * 1000:.0f} ms at start"
    )

    sweep = {}
    default = t.detect_threshold
    for thr in a.thresholds:  # the same evidence, other confidence floors
        sweep[thr] = {}
        for lang, ev in evidences.items():
            want = lang if lang in adapters else "base"
            sweep[thr][lang] = round(
                sum((d.adapter or "base") == want for d in t.router.route(ev, thr)) / table[lang]["n"], 3
            )
    print("\nrouter accuracy by threshold (the default is", default, ")")
    print(f"{'threshold':<10}" + "".join(f"{lang:>7}" for lang in evidences))
    for thr, row in sweep.items():
        print(f"{thr:<10}" + "".join(f"{row[lang]:>7.3f}" for lang in evidences))
    result_sweep = {str(k): v for k, v in sweep.items()}
    # close relatives: the adapter's language must reach it, the relative without an adapter the base
    pairs = [(x, y) for x, y in PAIRS if x in adapters and y in evidences and y not in adapters and x in evidences]
    print("\nclose relatives, by threshold: the adapter's language to its adapter / the relative to the base")
    print(f"{'threshold':<10}" + "".join(f"{x + '/' + y:>12}" for x, y in pairs))
    for thr, row in sweep.items():
        print(f"{thr:<10}" + "".join(f"{f'{row[x]:.2f}/{row[y]:.2f}':>12}" for x, y in pairs))
    hard = {name: info.get("hard_negatives") for name, info in t.router.describe()["adapters"].items()}
    print("hard negatives of each adapter:", hard)
    if a.skip_wer:
        raise SystemExit(0)

    # end to end: auto against the forced language on a mixed-language set with references
    mixed = [(x, ref, lang) for lang in ("cs", "sw", "id", "en") for x, ref in sets[lang] if ref]
    per = Counter()
    mixed = [m for m in mixed if per.update([m[2]]) or per[m[2]] <= a.wer_per_language]
    refs = [r for _, r, _ in mixed]
    started = time.perf_counter()
    auto = [t.transcribe(x, "auto").text for x, _, _ in mixed]
    auto_s = time.perf_counter() - started
    started = time.perf_counter()
    forced = [t.transcribe(x, lang).text for x, _, lang in mixed]
    forced_s = time.perf_counter() - started
    langs = [g for _, _, g in mixed]
    w_auto, w_forced = wer(refs, auto, langs), wer(refs, forced, langs)
    print(f"\nend to end on {len(mixed)} mixed clips ({dict(Counter(m[2] for m in mixed))}):")
    print(f"  WER auto {w_auto:.4f}  forced language {w_forced:.4f}  relative {(w_auto - w_forced) / w_forced:+.2%}")
    print(f"  time auto {auto_s:.1f} s, forced {forced_s:.1f} s ({auto_s / forced_s:.2f}x)")
    result = {
        "cpu": device_summary("cpu"),
        "adapters": sorted(adapters),
        "accuracy": table,
        "confusion": confusion,
        "threshold_sweep": result_sweep,
        "relative_pairs": [list(pair) for pair in pairs],
        "hard_negatives": hard,
        "cost": {"evidence_s_per_clip": round(evidence_s, 4), "router_fit_ms": round(fit_s * 1000, 1)},
        "end_to_end": {
            "clips": len(mixed),
            "wer_auto": round(w_auto, 4),
            "wer_forced": round(w_forced, 4),
            "auto_s": round(auto_s, 1),
            "forced_s": round(forced_s, 1),
        },
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {a.out}")
