#!/usr/bin/env python
"""Mixed-adapter decoding on a GPU (and, with a small shape, on a CPU): one batch spread over k adapters plus base rows.

    python bench/gpu_decode.py [--shape large-v3] [--precision bf16] [--batch 16] [--tokens 48] [--repeats 3]
                               [--processor DIR] [--root DIR] [--json bench/results/gpu_decode.json]
    python bench/gpu_decode.py --shape tiny --precision fp32 --batch 4 --tokens 8 --repeats 1   # a CPU check

Issue 33's measurement: random weights of an OpenAI shape (``memory.build_with_processor``; the tokenizer of
``--processor``, default whisper-base), eight random LoRA adapters of the library's default spec (r 32 on q and v of
every encoder and decoder layer, as ``train`` makes them), a batch of ``--batch`` 30 s windows, every row forced to
decode ``--tokens`` tokens. Speed only, never quality. Rows, each timed as the median of ``--repeats`` after a warm-up:

- the untouched base; one adapter merged into the weights (bf16/fp32 only); one adapter on every row through peft;
- the batch spread over 1, 2, 4 and 8 adapters with every 4th row on the base, through peft's ``adapter_names`` and
  through row-indexed LoRA (``inference/row_lora.py``, in the weights' dtype, as on a GPU),

each in tokens/s and relative to the base. ``--graphs`` adds, last, the base, the batch over 1 and 8 adapters
row-indexed, and the merged adapter decoded as ``Transcriber(graphs="on")`` decodes (``inference/graphs.py``:
transformers' static KV cache and its compiled decoder step, ``torch.compile`` mode ``reduce-overhead``: CUDA graphs
on a GPU; on a CPU inductor without graphs, a check that the path runs). Targets (large-v3 shape, bf16, batch 16): 8 adapters plus base rows at least
0.85x the base, one unmerged adapter at least 0.9x. ``--root`` keeps the random checkpoint between runs
(``gpu_train.py`` builds the same one there).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from inference import forced_decode  # bench/inference.py: the adapters measurement's decode
from memory import build_with_processor  # bench/memory.py: random-weight checkpoints of OpenAI's shapes

from whisper_lora.base.hardware import device_summary
from whisper_lora.base.model import load_base_model, pick_device
from whisper_lora.base.resolve import resolve_base

ADAPTERS = 8


def add_random_adapters(model, n: int):
    """``n`` LoRA adapters of the library's default spec with random A and B (outputs change, as trained ones do)."""
    from peft import get_peft_model

    from whisper_lora.training.lora import LoraSpec

    cfg = LoraSpec().peft_config(model.config.encoder_layers, model.config.decoder_layers)
    cfg.init_lora_weights = False
    names = [f"a{k}" for k in range(n)]
    torch.manual_seed(0)
    model = get_peft_model(model, cfg, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, cfg)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return model.eval(), names


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="large-v3")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "int8"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--processor", default=None, help="a Whisper checkpoint dir for the tokenizer (default whisper-base)"
    )
    p.add_argument("--root", default=None, help="where the random checkpoint is built (default: a temporary dir)")
    p.add_argument("--json", default="bench/results/gpu_decode.json")
    p.add_argument("--graphs", action="store_true", help="also decode with a static cache and a compiled step")
    a = p.parse_args()
    if a.graphs:  # measured before any row is: a bad setting costs no device time
        from whisper_lora.inference.graphs import bucket

        if bucket(a.batch) != a.batch:
            p.error(
                f"--graphs measures batches the library pads to: --batch 1, 2, 4, 8, 16, 32 or a multiple of 32, not {a.batch}"
            )
        if a.precision == "int8":
            p.error("--graphs needs --precision bf16 or fp32: transformers does not compile bitsandbytes' int8 layers")
    device = pick_device(a.device)
    machine = device_summary(device)
    print(f"machine: {machine}", flush=True)
    from whisper_lora.inference.row_lora import RowLoRA

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root or tmp)
        base = build_with_processor(a.shape, root / "bases", a.processor or str(resolve_base("whisper-base")))
        loaded = load_base_model(str(base), a.precision, str(device))
        model, names = add_random_adapters(loaded.model, ADAPTERS)
        rows_lora = RowLoRA(model, exact=False)  # the weights' dtype, the GPU default
        rng = np.random.default_rng(0)
        clips = [rng.normal(0, 0.1, 16000 * (3 + i % 6)).astype(np.float32) for i in range(a.batch)]
        feats = loaded.processor.feature_extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
        feats = feats.to(model.device, next(p.dtype for p in model.parameters() if p.is_floating_point()))

        def run(adapter_names=None):
            forced_decode(model, feats, a.tokens, adapter_names)

        def base_only():
            with model.disable_adapter():
                run()

        def spread_rows(spread):
            with rows_lora.rows(spread):
                run()

        tokens = a.batch * a.tokens
        results = Results(a, machine)  # written to --json after every row: a deadline leaves the rows measured
        results["base"] = timed(base_only, a.repeats, device)
        model.set_adapter(names[0])
        results["one adapter, peft"] = timed(run, a.repeats, device)
        if a.precision != "int8":  # bitsandbytes' int8 weights do not merge back exactly
            model.merge_adapter([names[0]])
            # merged, peft's layers call the base layer alone (its weights now hold the adapter)
            results["one adapter, merged"] = timed(run, a.repeats, device)
            model.unmerge_adapter()
        for k in (1, 2, 4, 8):
            # every 4th row on the base; the adapter rows cycle through all k adapters
            spread = [None if i % 4 == 3 else names[(i - i // 4) % k] for i in range(a.batch)]
            results[f"{k} adapters + base rows, row-indexed"] = timed(
                lambda s=spread: spread_rows(s), a.repeats, device
            )
            results[f"{k} adapters + base rows, peft"] = timed(
                lambda s=spread: run([n or "__base__" for n in s]), a.repeats, device
            )
        if a.graphs:  # the settings ``Transcriber(graphs="on")`` decodes with (inference/graphs.py)
            from whisper_lora.inference.graphs import bucket, compiled_settings

            static = compiled_settings(model)
            if bucket(a.batch) != a.batch:
                raise SystemExit(
                    f"--batch {a.batch}: --graphs measures a batch the library pads to, one of its buckets"
                )

            def graphs():
                forced_decode(model, feats, a.tokens, **static)

            with model.disable_adapter():
                results["base, static cache + compiled step"] = timed(graphs, a.repeats, device)
            for k in (1, 8):
                spread = [None if i % 4 == 3 else names[(i - i // 4) % k] for i in range(a.batch)]
                with rows_lora.rows(spread):
                    results[f"{k} adapters + base rows, row-indexed, static cache + compiled step"] = timed(
                        graphs, a.repeats, device
                    )
            model.merge_adapter([names[0]])  # float weights: --graphs refuses int8 (above)
            results["one adapter, merged, static cache + compiled step"] = timed(graphs, a.repeats, device)
            model.unmerge_adapter()
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        results.peak = peak
        results.write()

    t_base = results["base"]
    title = (
        f"Decoding a batch of {a.batch} 30 s windows, {a.tokens} tokens per row, on {machine}; random weights of "
        f"{a.shape}'s shape, {a.precision}, {ADAPTERS} random adapters (LoRA r32 q/v, every layer)"
    )
    print(f"\n{title}\n\n| path | s | tokens/s | vs base |\n|---|---|---|---|")
    for path, s in results.items():
        print(f"| {path} | {s:.3f} | {tokens / s:.1f} | {t_base / s:.2f} |")
    if peak is not None:
        print(f"\npeak CUDA memory: {peak:.0f} MB")
    print(f"\nwrote {a.json}")


class Results(dict):
    """Seconds per path, written to ``--json`` with every row added."""

    def __init__(self, a, machine: str):
        super().__init__()
        self.a, self.machine, self.peak = a, machine, None

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.write()

    def write(self) -> None:
        a, base = self.a, self.get("base")
        out = Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": self.machine, "shape": a.shape, "precision": a.precision, "batch": a.batch}
        doc |= {"tokens": a.tokens, "seconds": dict(self), "peak_cuda_mb": self.peak}
        doc["vs_base"] = {k: base / s for k, s in self.items()} if base else {}
        out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
