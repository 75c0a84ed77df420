#!/usr/bin/env python
"""The library's device code paths end to end on a tiny random Whisper, for a GPU machine (or any device).

    python bench/gpu_check.py [--device cuda] [--processor DIR] [--json bench/results/gpu_check.json]

Random weights (whisper-tiny's shape) and tone "speech": this checks that the paths run on the device and agree, not quality.
For each precision (int8, nf4, bf16, fp32; auto shows what the profile picks) it trains an adapter for
--steps steps with the library's defaults (``train_adapter``; the loss must fall), then, on the int8 base,
a Transcriber decodes a batch that mixes the adapter with the untouched base and compares it with
isolated calls, and ``merge_adapter`` writes a merged checkpoint. Prints the CPU/GPU and a table.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from memory import build_with_processor  # bench/memory.py: random-weight checkpoints of OpenAI's shapes

from whisper_lora import AdapterRegistry, TrainConfig, Transcriber, merge_adapter, train_adapter
from whisper_lora.base.hardware import device_summary
from whisper_lora.base.model import pick_device
from whisper_lora.base.resolve import resolve_base

WORDS = ["jambo", "habari", "asante", "karibu", "ndiyo", "hapana", "rafiki", "chakula"]


def tone_corpus(root: Path) -> Path:
    """Eight 1-2 s clips, each word its own chord, in a manifest (train/dev/test)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["id,audio,text,split"]
    t = np.arange(16000 * 2) / 16000
    for i, word in enumerate(WORDS):
        n = 16000 + 2000 * i
        wav = sum(np.sin(2 * np.pi * f * t[:n]) for f in (220 * (1 + i / 4), 330 + 40 * i)) * 0.2
        sf.write(root / f"{word}.wav", wav.astype(np.float32), 16000)
        for split in ("train", "dev", "test"):
            rows.append(f"{word}-{split},{root / (word + '.wav')},{word},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def train_one(base: Path, manifest: Path, out: Path, precision: str, device: str, steps: int) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(
        language="sw",
        data=str(manifest),
        out=str(out),
        base=str(base),
        precision=precision,
        device=device,
        max_steps=steps,
        learning_rate=5e-3,
        warmup_steps=2,
        eval_every=0,
        eval_samples=4,
        max_new_tokens=6,
        checkpoint_every=0,
        cache_dir=str(out.parent / "encoder-cache"),
    )
    t = time.perf_counter()
    result = train_adapter(cfg, progress=False)
    seconds = time.perf_counter() - t
    losses = [h["loss"] for h in result.state.history if "loss" in h]
    row = {
        "precision": precision,
        "trained_as": result.metadata.base.get("precision"),
        "steps": result.state.step,
        "s_per_step": seconds / max(result.state.step, 1),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_fell": losses[-1] < losses[0],
    }
    if torch.cuda.is_available():
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def routing(base: Path, registry: Path, device: str) -> dict:
    """A batch mixing the adapter and the base equals isolated calls (int8 base, threshold 0)."""
    t = Transcriber(str(base), AdapterRegistry(registry), precision="int8", device=device, max_new_tokens=6)
    clips = [str(p) for p in sorted(Path(registry.parent / "corpus").glob("*.wav"))[:4]]
    who = ["sw", None, "sw", None]
    mixed = [r.text for r in t.transcribe_batch(clips, language="sw", adapter=who)]
    alone = [t.transcribe_batch([c], language="sw", adapter=[a])[0].text for c, a in zip(clips, who, strict=True)]
    return {"device": str(t.model.device), "mixed_equals_isolated": mixed == alone, "texts": mixed}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--processor", default=None, help="a Whisper checkpoint dir for the tokenizer (default: whisper-base)"
    )
    p.add_argument("--precisions", nargs="+", default=["auto", "int8", "nf4", "bf16", "fp32"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", default="bench/results/gpu_check.json")
    a = p.parse_args()
    device = str(pick_device(a.device))
    print(f"machine: {device_summary(torch.device(device))}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_with_processor("tiny", tmp / "tiny", a.processor or resolve_base("whisper-base"))
        manifest = tone_corpus(tmp / "corpus")
        for prec in a.precisions:
            row = train_one(base, manifest, tmp / prec / "sw", prec, device, a.steps)
            rows.append(row)
            print(json.dumps(row), flush=True)
        route = routing(base, tmp / "int8", device)
        print(json.dumps(route), flush=True)
        merged = merge_adapter(tmp / "int8" / "sw", tmp / "merged", base=str(base), precision="fp32")
        merge = {
            "merged_dir_has_weights": any(Path(merged.out).glob("*.safetensors")),
            "merge_max_logit_diff": merged.max_logit_diff,
        }
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print(f"\nTraining on {device}, random-weight whisper-tiny shape, {a.steps} steps, batch auto\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print(
            "| " + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |"
        )
    print(f"\nmixed batch (adapter + base, int8) equals isolated calls: {route['mixed_equals_isolated']}")
    print(f"merge_adapter wrote a checkpoint: {merge['merged_dir_has_weights']}")
    ok = all(r["loss_fell"] for r in rows) and route["mixed_equals_isolated"] and merge["merged_dir_has_weights"]
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(
        json.dumps({"machine": device_summary(torch.device(device)), "rows": rows, "routing": route, **merge}, indent=2)
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
