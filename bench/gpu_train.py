#!/usr/bin/env python
"""Training speed on a GPU (and, with a small shape, on a CPU): whisper-lora's step against PEFT's int8 recipe.

    python bench/gpu_train.py [--shapes base large-v3] [--batches 8 32] [--precisions int8 nf4 bf16] [--attention auto torch]
                              [--steps 6] [--warmup 3] [--processor DIR] [--root DIR] [--no-reference]
                              [--json bench/results/gpu_train.json]
    python bench/gpu_train.py --shapes tiny --batches 2 4 --precisions int8 fp32 --steps 3   # a CPU check

Random-weight checkpoints of OpenAI's shapes (``memory.build_with_processor``; the tokenizer of ``--processor``, default whisper-base)
and a corpus of 64 tone clips of 3-8 s with 8-20 token transcripts: speed and memory, never quality. For each shape,
precision and batch size it runs

- **whisper-lora**: ``train_adapter`` with the library's defaults for that precision (LoRA in every stack, trimmed
  encoder input, duration-bucketed batches), no dev or test scoring, once per ``--attention`` value (the SDPA
  back-ends, ``base/attention.py``: ``auto`` leaves cuDNN out on CUDA, ``torch`` lets torch choose);
- **reference** (int8 only): PEFT's int8 Whisper recipe written out plainly (``prepare_model_for_kbit_training``,
  LoRA r=32 on q/v, 30 s windows, gradient checkpointing, fp16 autocast on CUDA, AdamW lr 1e-3),

and prints one table: seconds per step (mean of ``--steps`` steps after ``--warmup``), utterances per second, the device-busy
share of a step (CUDA kernel time over wall time, from ``torch.profiler`` on two more steps; CUDA only), host
reads of device values and operator launches per step (``training/profiling.py``: ``.item()``-like reads other than
AdamW's host-side counters; CUDA kernels or, on a CPU, aten operators), the distinct input shapes of one epoch, and peak memory (CUDA ``max_memory_allocated``; on
a CPU the peak resident memory of the process). JSON goes to ``--json``; the device line names the GPU or CPU class.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from memory import build_with_processor, status_kb  # bench/memory.py: random-weight checkpoints of OpenAI's shapes

from whisper_lora import TrainConfig, train_adapter
from whisper_lora.base.hardware import device_summary
from whisper_lora.base.model import pick_device
from whisper_lora.base.resolve import resolve_base
from whisper_lora.base.trim import trimmed_frames
from whisper_lora.data.sampler import batch_indices
from whisper_lora.training.profiling import step_profile

WORDS = ["jambo", "habari", "asante", "karibu", "ndiyo", "hapana", "rafiki", "chakula", "maji", "nyumba", "shule"]
CLIPS = 64


def corpus(root: Path) -> tuple[Path, list[float]]:
    """64 tone clips of 3-8 s (seeded), every one in the train split, plus one dev and one test line."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, durations = ["id,audio,text,split"], []
    for i in range(CLIPS):
        seconds = float(rng.uniform(3, 8))
        t = np.arange(int(16000 * seconds)) / 16000
        wav = 0.2 * np.sin(2 * np.pi * (200 + 20 * i) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"c{i}.wav", wav.astype(np.float32), 16000)
        text = " ".join(rng.choice(WORDS, int(rng.integers(4, 9))))
        rows.append(f"c{i},{root / f'c{i}.wav'},{text},train")
        durations.append(len(t) / 16000)
    rows += [f"dev,{root / 'c0.wav'},jambo,dev", f"test,{root / 'c1.wav'},jambo,test"]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv", durations


def epoch_shapes(durations: list[float], batch: int, trim: float | None) -> int:
    """Distinct (batch, encoder frames) input shapes over one epoch of duration-bucketed batches."""
    steps = max(1, len(durations) // batch)
    shapes = set()
    for step in range(steps):
        idx = batch_indices(durations, batch, 0, step, True)
        frames = 3000 if trim is None else max(trimmed_frames(round(durations[i] * 16000), trim) for i in idx)
        shapes.add((len(idx), frames))
    return len(shapes)


class Meter:
    """Times ``steps`` steps after ``warmup`` (synchronising the device only at the window's ends: the mean step, as
    the device runs it), then profiles two more steps."""

    def __init__(self, device: torch.device, warmup: int, steps: int):
        self.device, self.warmup, self.steps = device, warmup, steps
        self.times: list[float] = []
        self.profile: dict = {}
        self._last = None
        self._prof = None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def after_step(self, step: int) -> bool:
        """Called after optimizer step ``step`` (1-based); True when the measurement is complete."""
        if step == self.warmup:
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self._last = time.perf_counter()
        elif step == self.warmup + self.steps:
            self._sync()
            self.times.append((time.perf_counter() - self._last) / self.steps)
            self._start_profile()
        elif step == self.warmup + self.steps + 2:
            self._stop_profile()
            return True
        return False

    def _start_profile(self):
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self._prof = profile(activities=acts, with_stack=True)  # stacks tell the optimizer's host reads apart
        self._prof.__enter__()
        self._t0 = time.perf_counter()

    def _stop_profile(self):
        self._sync()
        wall = time.perf_counter() - self._t0
        self._prof.__exit__(None, None, None)
        steps = step_profile(self._prof.events(), 2, self.device)
        self.profile = {
            "host_reads": steps.host_reads,
            "launches": steps.launches,
            "busy_s": steps.device_seconds,
            "wall_s": wall / 2,
        }

    def row(self, batch: int) -> dict:
        s = self.times[0] if self.times else float("nan")
        busy = self.profile.get("busy_s")
        return {
            "s/step": s,
            "utt/s": batch / s,
            "busy": busy / s if busy is not None else None,
            "host reads/step": self.profile.get("host_reads"),
            "launches/step": self.profile.get("launches"),
            "peak MB": peak_mb(self.device),
        }


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return status_kb("VmHWM") / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the kernel's peak-RSS mark starts again from here


def run_ours(base: Path, manifest: Path, out: Path, precision: str, batch: int, device, a, attention="auto") -> dict:
    meter = Meter(device, a.warmup, a.steps)
    cfg = TrainConfig(
        language="sw",
        data=str(manifest),
        out=str(out),
        base=str(base),
        precision=precision,
        attention=attention,
        device=a.device,
        batch_size=batch,
        max_steps=a.warmup + a.steps + 2,
        eval_every=0,
        eval_samples=0,
        final_eval=False,
        language_profile=False,
        checkpoint_every=0,
        cache_dir=str(out.parent / "encoder-cache"),
    )
    reset_peak(device)
    result = train_adapter(cfg, progress=False, callbacks=[lambda state, model: meter.after_step(state.step)])
    trim = result.metadata.training.get("trim_padding")
    return {**meter.row(batch), "trimmed": trim is not None, "trim": trim}


def run_reference(base: Path, manifest: Path, batch: int, device, a) -> dict:
    """PEFT's int8 Whisper recipe, plainly: 8-bit base, prepare_model_for_kbit_training, LoRA r=32 on q/v, 30 s
    windows, gradient checkpointing, fp16 autocast on CUDA."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration, WhisperProcessor

    from whisper_lora.data.features import collate
    from whisper_lora.data.prepare import prepare_splits

    processor = WhisperProcessor.from_pretrained(base)
    train = prepare_splits(str(manifest), "sw", processor, splits=("train",), progress=False)["train"]
    reset_peak(device)
    model = WhisperForConditionalGeneration.from_pretrained(
        base, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": device}
    )
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(
        model, LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none")
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    meter = Meter(device, a.warmup, a.steps)
    rng = np.random.default_rng(0)
    step = 0
    while True:
        idx = rng.choice(len(train), batch, replace=False)
        b = collate([train[i] for i in idx])
        feats = b["input_features"].to(device, torch.float32)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss = model(input_features=feats, labels=b["labels"].to(device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        print(f"  reference step {step}: loss {loss.item():.3f}", flush=True)  # the recipe logs every step
        if meter.after_step(step):
            return meter.row(batch)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["base", "large-v3"])
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--precisions", nargs="+", default=["int8", "nf4", "bf16"])
    p.add_argument("--steps", type=int, default=6, help="timed steps (their mean), after --warmup")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--processor", default=None, help="a Whisper checkpoint dir for the tokenizer (default whisper-base)"
    )
    p.add_argument(
        "--attention",
        nargs="+",
        default=["auto"],
        help="TrainConfig.attention values to run each precision with (auto leaves cuDNN out on CUDA; torch: its own)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip PEFT's int8 recipe")
    p.add_argument("--root", default=None, help="where random checkpoints are built and kept (gpu_decode.py's too)")
    p.add_argument("--json", default="bench/results/gpu_train.json")
    a = p.parse_args()
    device = pick_device(a.device)
    machine = device_summary(device)
    print(f"machine: {machine}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest, durations = corpus(tmp / "corpus")
        processor_dir = a.processor or str(resolve_base("whisper-base"))
        for shape in a.shapes:
            base = build_with_processor(shape, Path(a.root or tmp) / "bases", processor_dir)
            for batch in a.batches:
                runs = [("whisper-lora", prec, att) for prec in a.precisions for att in a.attention]
                runs += [] if a.no_reference else [("PEFT int8 recipe", "int8", "torch")]
                for who, prec, att in runs:
                    out = tmp / f"{shape}-{prec}-{att}-{batch}" / "sw"
                    if who == "whisper-lora":
                        r = run_ours(base, manifest, out, prec, batch, device, a, att)
                    else:
                        r = {**run_reference(base, manifest, batch, device, a), "trimmed": False, "trim": None}
                    r["shapes/epoch"] = epoch_shapes(durations, batch, r.pop("trim"))
                    rows.append({"shape": shape, "run": who, "precision": prec, "attention": att, "batch": batch, **r})
                    print(json.dumps(rows[-1]), flush=True)
                    write(a.json, machine, a, rows)  # after every row: a deadline that cuts the run keeps what ran
    cols = ["shape", "run", "precision", "attention", "batch", "s/step", "utt/s", "busy", "host reads/step"]
    cols += ["launches/step"]
    cols += ["shapes/epoch", "peak MB"]
    print(f"\nTraining steps on {machine}; random weights of OpenAI's shapes, 3-8 s clips, mean of {a.steps} steps\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [
            "n/a" if r.get(c) is None else f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r[c]) for c in cols
        ]
        print("| " + " | ".join(cells) + " |")
    print(f"\nwrote {write(a.json, machine, a, rows)}")


def write(path: str, machine: str, a, rows: list[dict]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "steps": a.steps, "warmup": a.warmup, "rows": rows}, indent=2))
    return out


if __name__ == "__main__":
    main()
