#!/usr/bin/env python
"""Peak memory of one LoRA training step at batch 1 for Whisper shapes (random weights, no download).

    python bench/memory.py [--shapes tiny base small] [--precisions int8 nf4 fp32] [--checkpointing 0 1]

Each configuration runs in its own process. On CUDA the figure is ``torch.cuda.max_memory_allocated``.
On CPU it is the peak resident memory during the step minus the process's resident memory before the
model was loaded (the interpreter and libraries), so it counts weights + activations + gradients +
optimizer state like the CUDA figure: freed heap is handed back (``malloc_trim``) and the kernel's
peak mark is reset after loading, so load-time copies do not count. The absolute peak is in the JSON.
medium and large-v3 work the same way but take a minute or more per step on a 2-core CPU.

glibc's malloc keeps freed memory in its heap when its adaptive mmap threshold has grown, which on CPU
inflates every figure (int8 most: its kernels allocate a dequantised weight per call). Run with
``MALLOC_MMAP_THRESHOLD_=131072`` in the environment (inherited by each configuration's process) to see
memory closer to what is live.
"""

import argparse
import ctypes
import gc
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from whisper_lora.base.hardware import device_summary

# (d_model, layers, heads, ffn, mels, vocab) of OpenAI's checkpoints
SHAPES = {
    "tiny": (384, 4, 6, 1536, 80, 51865),
    "base": (512, 6, 8, 2048, 80, 51865),
    "small": (768, 12, 12, 3072, 80, 51865),
    "medium": (1024, 24, 16, 4096, 80, 51865),
    "large-v3": (1280, 32, 20, 5120, 128, 51866),
}


def random_model(shape: str):
    """A random-weight Whisper of ``shape`` (seeded: the same weights every time)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    d, n, h, ffn, mels, vocab = SHAPES[shape]
    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=vocab,
        d_model=d,
        encoder_layers=n,
        decoder_layers=n,
        encoder_attention_heads=h,
        decoder_attention_heads=h,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        num_mel_bins=mels,
    )
    return WhisperForConditionalGeneration(cfg)


def _saved(out: Path, save) -> Path:
    """``save(folder)`` into a temporary folder renamed to ``out`` once whole (a run killed mid-save leaves none)."""
    part = out.with_name(f".{out.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    save(part)
    part.rename(out)
    return out


def build(shape: str, root: Path) -> Path:
    """Save a random-weight checkpoint of ``shape`` once (from_pretrained then quantises it like a real one)."""
    out = root / shape
    if (out / "config.json").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    return _saved(out, random_model(shape).save_pretrained)


def build_with_processor(shape: str, root: Path, processor_dir: str) -> Path:
    """``build``, plus the tokenizer and generation config of ``processor_dir`` and a feature extractor of the shape's
    mel bins (large-v3 reads 128): what training and decoding need (``gpu_check.py``, ``gpu_train.py``,
    ``gpu_decode.py``)."""
    from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperProcessor

    out = root / f"{shape}-with-processor"
    if (out / "tokenizer_config.json").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)

    def save(folder: Path) -> None:
        model = random_model(shape)
        model.generation_config = GenerationConfig.from_pretrained(processor_dir)
        model.save_pretrained(folder)
        tokenizer = WhisperProcessor.from_pretrained(processor_dir).tokenizer
        features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)

    return _saved(out, save)


def one_step(path: str, precision: str, checkpointing: bool) -> dict:
    import bitsandbytes  # noqa: F401  (its libraries count as "before" for every precision)
    import torch

    from whisper_lora.base.model import load_whisper, pick_device
    from whisper_lora.training.lean_backward import make_backward_lean
    from whisper_lora.training.lora import LoraSpec, apply_lora

    dev = pick_device("auto")
    before = status_kb("VmRSS") * 1024
    bnb_backward = precision.endswith("-bnb")  # bitsandbytes' own backward, for comparison
    full = precision == "full-fp32"  # full fine-tuning: every weight trained (the figure LoRA is measured against)
    precision = "fp32" if full else precision.removesuffix("-bnb")
    model = load_whisper(path, precision, dev)
    if full:
        model.requires_grad_(True)
    else:
        model = apply_lora(model, LoraSpec(r=32, alpha=64, targets=("q", "v")))  # the reference recipe's spec
    if not (bnb_backward or full):
        make_backward_lean(model)  # what train_adapter does
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    mels = model.config.num_mel_bins
    feats = torch.randn(1, mels, 3000, device=dev, dtype=model.get_encoder().conv1.weight.dtype)
    labels = torch.randint(0, 50000, (1, 32), device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:  # give freed load-time buffers back, then reset the kernel's peak-RSS mark
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    model(input_features=feats, labels=labels).loss.backward()
    opt.step()
    if dev.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "device": "cuda"}
    peak = status_kb("VmHWM") * 1024
    return {"peak_mb": (peak - before) / 2**20, "rss_peak_mb": peak / 2**20, "device": "cpu"}


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _cell(col: str, v) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.0f}" if col.endswith("_mb") else f"{v:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["tiny", "base", "small"], choices=list(SHAPES))
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["int8", "int8-bnb", "nf4", "fp32"],
        choices=["int8", "int8-bnb", "nf4", "nf4-bnb", "bf16", "fp32", "full-fp32"],
        help="int8/nf4 use whisper-lora's lean backward (as train_adapter does); -bnb: bitsandbytes' own; "
        "full-fp32: full fine-tuning (all weights trained, AdamW), for comparison",
    )
    p.add_argument(
        "--checkpointing", nargs="+", type=int, default=[0, 1], choices=[0, 1], help="gradient checkpointing off/on"
    )
    p.add_argument("--json", default="bench/results/memory.json")
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: path precision checkpointing
    a = p.parse_args()
    import torch

    machine = device_summary("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine}", flush=True)  # every table below holds for this device / CPU class
    if a.one:
        print(json.dumps(one_step(a.one[0], a.one[1], a.one[2] == "1")))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in a.shapes:
            path = build(shape, Path(tmp))
            row = {"shape": shape}
            for prec in a.precisions:
                for gc in a.checkpointing:
                    r = subprocess.run(
                        [sys.executable, __file__, "--one", str(path), prec, str(gc)], capture_output=True, text=True
                    )
                    key = f"{prec}{'+gc' if gc else ''}_mb"
                    if r.returncode in (-9, 137):  # killed by the kernel's OOM killer
                        row[key] = "OOM"
                        continue
                    if r.returncode:
                        raise SystemExit(r.stderr[-2000:])
                    row[key] = json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"]
            pairs = [("int8", "fp32"), ("int8+gc", "fp32+gc"), ("int8-bnb", "fp32"), ("int8-bnb+gc", "fp32+gc")]
            pairs += [(f"{q}{g}", f"full-fp32{g}") for q in ("int8", "nf4", "bf16") for g in ("", "+gc")]
            for a_, b_ in pairs:
                x, y = row.get(f"{a_}_mb"), row.get(f"{b_}_mb")
                if isinstance(x, float) and isinstance(y, float):
                    row[f"{a_}/{b_}"] = x / y
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print("\nPeak memory of one training step, batch 1, LoRA r=32 on q/v (MB; CPU: step peak RSS minus pre-load RSS)\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_cell(c, r.get(c, "")) for c in cols) + " |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
