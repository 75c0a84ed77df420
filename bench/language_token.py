#!/usr/bin/env python
"""Languages Whisper lacks: the same training budget with ``language_token: proxy`` and ``new``, side by side.

    python bench/language_token.py [--languages eo ga] [--hand eo=it ga=cy] [--steps 100] [--work DIR]

For each language (an espeak-ng voice and shipped sentence lists: the synthetic corpus of ``whisper-lora synth``,
test sentences and voices never trained on), three runs of its recipe config (``recipes/configs/<lang>_synth.yaml``,
real whisper-base in int8, ``--steps`` steps each), differing only in the token:
- ``proxy (ID)``: the proxy Whisper's own language ID finds most often on the training clips;
- ``proxy (hand)``: a hand-picked proxy (``--hand``), run only where it differs from the one found;
- ``new``: a token ``<|xx|>`` added, its row started from the proxy found, and trained with the adapter.
It prints held-out WER/CER of the base (decoded with that token, the new one starting as the proxy's row) and of
the adapter, the training minutes, the adapter's size, and routing accuracy: the share of each language's test clips
that ``language="auto"`` sends to its adapter, in a registry holding the run's adapters of every language plus the
shipped ones. The table names the CPU. JSON goes to bench/results/language_token.json.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("proxy (ID)", "proxy (hand)", "new")


def corpus(language: str, work: Path) -> Path:
    out = work / "data" / f"{language}_synth"
    if not (out / "texts" / "train.csv").exists():
        subprocess.run(
            [sys.executable, "-m", "whisper_lora.cli", "synth", "--language", language, "--out", str(out)], check=True
        )
    return out


def train(language: str, data: Path, out: Path, steps: int, *flags: str) -> float | None:
    """Train with the language's recipe config for exactly ``steps`` steps (no time cap: every run gets the same
    budget) and ``flags``; returns the wall seconds of the whole command (None: an earlier run's adapter reused)."""
    if (out / "whisper_lora.json").exists():
        return None
    config = ROOT / "recipes" / "configs" / f"{language}_synth.yaml"
    cmd = [sys.executable, "-m", "whisper_lora.cli", "train", "--config", str(config), "--data", str(data)]
    cmd += ["--max-steps", str(steps), "--max-minutes", "600", "--eval-every", str(steps // 2)]
    started = time.monotonic()
    subprocess.run([*cmd, "--out", str(out), *flags], check=True)
    return time.monotonic() - started


def routing_accuracy(registry: Path, clips: dict[str, list[Path]]) -> dict[str, float]:
    """Per language: the share of its test clips ``auto`` routes to its adapter."""
    from whisper_lora import Transcriber

    t = Transcriber("whisper-base", adapters=registry, precision="int8", device="cpu")
    out = {}
    for language, paths in clips.items():
        routes = [d.adapter for d in t.route([str(p) for p in paths])]
        out[language] = sum(r == language for r in routes) / len(routes)
    return out


def main() -> None:
    from whisper_lora.base.hardware import device_summary
    from whisper_lora.registry.adapter_io import read_metadata

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--languages", nargs="+", default=["eo", "ga"])
    p.add_argument("--hand", nargs="*", default=["eo=it", "ga=cy"], help="hand-picked proxies, lang=whisper_code")
    p.add_argument("--work", default="/tmp/whisper-lora-language-token")
    p.add_argument("--steps", type=int, default=100, help="training steps of every run (default 100)")
    a = p.parse_args()
    hand = dict(h.split("=") for h in a.hand)
    work = Path(a.work)
    rows, runs = [], {}
    for lang in a.languages:
        data = corpus(lang, work)
        found_dir = work / "runs" / lang / "proxy-id"
        seconds = {"proxy (ID)": train(lang, data, found_dir, a.steps, "--language-token", "proxy")}
        found = read_metadata(found_dir).language_token["proxy"]
        dirs = {"proxy (ID)": found_dir}
        if hand.get(lang) and hand[lang] != found:
            dirs["proxy (hand)"] = work / "runs" / lang / "proxy-hand"
            seconds["proxy (hand)"] = train(
                lang, data, dirs["proxy (hand)"], a.steps, "--language-token", "proxy", "--proxy", hand[lang]
            )
        dirs["new"] = work / "runs" / lang / "new"
        seconds["new"] = train(lang, data, dirs["new"], a.steps, "--language-token", "new", "--proxy", found)
        for mode, d in dirs.items():
            meta = read_metadata(d)
            m = meta.metrics
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            row = dict(
                language=lang,
                mode=mode,
                token=f"<|{meta.whisper_language}|>",
                proxy=meta.language_token.get("proxy"),
                detected=meta.language_token.get("detected"),
                base_wer=m["base"]["wer"],
                base_cer=m["base"]["cer"],
                wer=m["adapter"]["wer"],
                cer=m["adapter"]["cer"],
                n=m["adapter"]["n"],
                train_minutes=meta.training["minutes"],
                command_seconds=None if seconds[mode] is None else round(seconds[mode], 1),
                weights_bytes=(d / "adapter_model.safetensors").stat().st_size,
                dir_bytes=size,
            )
            rows.append(row)
            runs.setdefault(mode, {})[lang] = d
    # routing: the run's adapters of every language beside the shipped ones, per mode
    clips = {}
    for lang in a.languages:
        test = work / "data" / f"{lang}_synth"
        names = [r["wav"] for r in csv.DictReader(open(test / "texts" / "test.csv", encoding="utf-8"), delimiter="\t")]
        clips[lang] = [test / "wavs" / n for n in names]
    for mode, by_lang in runs.items():
        if set(by_lang) != set(a.languages):
            continue
        registry = work / "registries" / mode.replace(" ", "_").replace("(", "").replace(")", "")
        shutil.rmtree(registry, ignore_errors=True)
        shutil.copytree(ROOT / "adapters", registry)
        for lang, d in by_lang.items():
            shutil.copytree(d, registry / lang)
        for lang, acc in routing_accuracy(registry, clips).items():
            next(r for r in rows if r["language"] == lang and r["mode"] == mode)["routing"] = acc
    device = device_summary("cpu")
    print(f"device: {device}")
    print(
        "| language | run | token | base CER | adapter CER | adapter WER | routing | train min | weights KB | dir KB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        routing = f"{r['routing']:.0%}" if "routing" in r else "-"
        print(
            f"| {r['language']} | {r['mode']} | `{r['token']}` from `<|{r['proxy']}|>` | {r['base_cer']:.3f} | "
            f"{r['cer']:.3f} | {r['wer']:.3f} | {routing} | {r['train_minutes']:.1f} | "
            f"{r['weights_bytes'] / 1024:.1f} | {r['dir_bytes'] / 1024:.1f} |"
        )
    out = ROOT / "bench" / "results" / "language_token.json"
    out.write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
