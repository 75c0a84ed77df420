#!/usr/bin/env python
"""Time to held-out WER: whisper-lora against a port of PEFT's int8 Whisper recipe, same data and base.

    python bench/time_to_wer.py [--data data/sw_synth] [--minutes 6] [--ours-minutes 4] [--eval-n 16]

Reference (peft examples/int8_training): 8-bit base, prepare_model_for_kbit_training, LoRA r=32/alpha=64 on
q_proj/v_proj (all stacks), dropout 0.05, Seq2SeqTrainer, batch 8, lr 1e-3, 50 warm-up steps, 30 s padded inputs.
Ours: recipes/configs/sw_synth.yaml (decoder self+cross q/k/v/out, encoder outputs cached on first use), run once
per VARIANTS entry so each speed lever's share shows. Every run's clock starts before loading the base, so its
minutes include loading, featurising and (ours) encoding; the clock is paused while held-out WER on the first
--eval-n test utterances is measured. Prints the curves and the time each run needs to reach the reference's
final WER, and writes JSON.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from whisper_lora.config import TrainConfig
from whisper_lora.data.features import collate
from whisper_lora.data.prepare import prepare_splits
from whisper_lora.evaluate import evaluate_examples
from whisper_lora.hardware import device_summary
from whisper_lora.model import load_base_model
from whisper_lora.train import train_adapter

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """Wall time since start, excluding measurement pauses."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def minutes(self) -> float:
        return (time.perf_counter() - self.start - self.paused) / 60

    def measure(self, fn):
        t = time.perf_counter()
        out = fn()
        self.paused += time.perf_counter() - t
        return out


def run_reference(cfg: TrainConfig, minutes: float, eval_every: int, eval_n: int) -> list[dict]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    clock = Clock()
    _loaded = load_base_model(cfg.base, "int8")
    model, processor = _loaded.model, _loaded.processor
    data = prepare_splits(cfg.data, cfg.language, processor, splits=("train", "test"), progress=False)
    test = data["test"][:eval_n]
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(
        model, LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none")
    )
    curve = []

    def point(step):
        minutes = round(clock.minutes(), 2)  # read before measuring: the measurement is not training time
        scores, _ = evaluate_examples(model, processor, test, cfg.language, max_new_tokens=cfg.max_new_tokens)
        curve.append({"step": step, "minutes": minutes, "wer": scores.wer, "cer": scores.cer})
        print("reference", curve[-1], flush=True)

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % eval_every == 0:
                clock.measure(lambda: point(state.global_step))
            if clock.minutes() > minutes:
                control.should_training_stop = True

    train = [{"input_features": e.input_features, "labels": e.labels} for e in data["train"]]

    def collator(rows):
        from types import SimpleNamespace

        return collate([SimpleNamespace(**r) for r in rows])

    with tempfile.TemporaryDirectory() as tmp:
        args = Seq2SeqTrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=8,
            learning_rate=1e-3,
            warmup_steps=50,
            max_steps=10_000,
            remove_unused_columns=False,
            label_names=["labels"],
            save_strategy="no",
            report_to=[],
            logging_steps=10,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            seed=0,
        )
        clock.measure(lambda: point(0))
        Seq2SeqTrainer(
            model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[Budget()]
        ).train()
    return curve


# whisper-lora with its speed levers switched on one at a time (TrainConfig overrides)
VARIANTS = {
    "lazy cache, int8 encoder": {"cache_precision": "base", "mixed_precision": "no"},
    "+ bf16 encoder pass": {"cache_precision": "auto", "mixed_precision": "no"},
    "+ bf16 autocast (default)": {"cache_precision": "auto", "mixed_precision": "auto"},
}


def run_ours(cfg: TrainConfig, minutes: float, eval_every: int, eval_n: int, name: str = "ours") -> list[dict]:
    clock = Clock()
    processor = load_base_model(cfg.base, "fp32", "cpu").processor
    test = prepare_splits(cfg.data, cfg.language, processor, splits=("test",), progress=False)["test"][:eval_n]
    curve = []

    def on_step(state, model):
        if state.step % eval_every == 0:

            def point():
                minutes = round(clock.minutes(), 2)
                scores, _ = evaluate_examples(model, processor, test, cfg.language, max_new_tokens=cfg.max_new_tokens)
                curve.append({"step": state.step, "minutes": minutes, "wer": scores.wer, "cer": scores.cer})
                print(name, curve[-1], flush=True)

            clock.measure(point)

    cfg.max_minutes, cfg.max_steps, cfg.eval_every, cfg.checkpoint_every = minutes, 10_000, 0, 0
    cfg.final_eval = False  # the curve above is the measurement
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out = str(Path(tmp) / "sw")
        train_adapter(cfg, progress=False, callbacks=[on_step])
    return curve


def minutes_to_reach(curve: list[dict], wer: float) -> float | None:
    return next((p["minutes"] for p in curve if p["wer"] <= wer), None)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/sw_synth")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--eval-n", type=int, default=16)
    p.add_argument("--ours-minutes", type=float, default=4.0, help="budget of each whisper-lora variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", default="bench/results/time_to_wer.json")
    a = p.parse_args()
    print(f"machine: {device_summary()}", flush=True)  # every table below holds for this CPU class
    if not (Path(a.data) / "texts").is_dir():
        from whisper_lora.cli import main as cli

        cli(["synth", "--language", "sw", "--out", a.data])

    def config(**kw) -> TrainConfig:
        return TrainConfig.from_yaml(ROOT / "recipes" / "configs" / "sw_synth.yaml", data=a.data, **kw)

    ref = run_reference(config(), a.minutes, 5, a.eval_n)
    target = ref[-1]["wer"]
    t_ref = minutes_to_reach(ref, target)
    runs = {"reference (PEFT int8 recipe)": ref}
    for v in a.variants:
        runs[v] = run_ours(config(**VARIANTS[v]), a.ours_minutes, 5, a.eval_n, v)
    summary = []
    for name, curve in runs.items():
        t = minutes_to_reach(curve, target)
        summary.append(
            {
                "run": name,
                "steps": curve[-1]["step"],
                "final_wer": curve[-1]["wer"],
                "final_cer": curve[-1]["cer"],
                "minutes_to_reference_wer": t,
                "ratio": round(t / t_ref, 3) if t is not None and t_ref else None,
            }
        )
    out = {"budget_minutes": a.minutes, "reference_final_wer": target, "summary": summary, "curves": runs}
    print("\n| run | step | minutes | held-out WER | CER |\n|---|---|---|---|---|")
    for name, curve in runs.items():
        for pt in curve:
            print(f"| {name} | {pt['step']} | {pt['minutes']} | {pt['wer']:.3f} | {pt['cer']:.3f} |")
    print(f"\nTime to the reference's final held-out WER ({target:.3f})\n")
    print("| run | steps | final WER | final CER | minutes to reference WER | ratio to reference |")
    print("|---|---|---|---|---|---|")
    for r in summary:
        print(
            f"| {r['run']} | {r['steps']} | {r['final_wer']:.3f} | {r['final_cer']:.3f} | "
            f"{r['minutes_to_reference_wer']} | {r['ratio']} |"
        )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": device_summary(), **out}, indent=2))


if __name__ == "__main__":
    main()
