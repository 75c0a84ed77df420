#!/usr/bin/env python
"""Time to held-out WER: whisper-lora against a port of PEFT's int8 Whisper recipe, same data and base.

    python bench/time_to_wer.py [--data data/sw_synth] [--minutes 6] [--ours-minutes 4] [--eval-n 16]
    python bench/time_to_wer.py --config cs_fillets --data data/cs_fillets/manifest.csv --metric cer \
        --minutes 12 --ours-minutes 6 --eval-n 40 --ref-eval-every 10 --ours-eval-every 40

Reference (peft examples/int8_training): 8-bit base, prepare_model_for_kbit_training, LoRA r=32/alpha=64 on
q_proj/v_proj (all stacks), dropout 0.05, Seq2SeqTrainer, batch 8, lr 1e-3, 50 warm-up steps, 30 s padded inputs.
Ours: the recipe's config (--config: sw_synth, decoder self+cross q/k/v/out with encoder outputs cached on first use;
cs_fillets, real Czech, LoRA in every stack), run once per VARIANTS entry so each lever's share shows. Every run's clock starts before loading the base, so its
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

from whisper_lora.base.hardware import device_summary
from whisper_lora.base.model import load_base_model, pick_device
from whisper_lora.data.features import collate
from whisper_lora.data.prepare import prepare_splits
from whisper_lora.inference.scoring import evaluate_examples
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.train import train_adapter

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """Wall time since start, excluding measurement pauses; ``every`` minutes (if set) also make a point due."""

    def __init__(self, every: float | None = None):
        self.start, self.paused = time.perf_counter(), 0.0
        self.every, self.next = every, every

    def due(self, step: int, eval_every: int) -> bool:
        """A measurement is due: every ``eval_every`` steps, or each time ``every`` more minutes have passed."""
        if self.every is None:
            return step % eval_every == 0
        if self.minutes() < self.next:
            return False
        self.next = (int(self.minutes() / self.every) + 1) * self.every
        return True

    def minutes(self) -> float:
        return (time.perf_counter() - self.start - self.paused) / 60

    def measure(self, fn):
        t = time.perf_counter()
        out = fn()
        self.paused += time.perf_counter() - t
        return out


def run_reference(
    cfg: TrainConfig, minutes: float, eval_every: int, eval_n: int, eval_minutes: float | None = None
) -> list[dict]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    clock = Clock(eval_minutes)
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
            over = clock.minutes() > minutes
            if clock.due(state.global_step, eval_every) or over:  # the last step is always measured
                clock.measure(lambda: point(state.global_step))
            if over:
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


# whisper-lora variants (TrainConfig overrides), one set per recipe: the speed levers switched on one at a time
VARIANTS = {
    "sw_synth": {
        "lazy cache, int8 encoder": {"cache_precision": "base", "mixed_precision": "no"},
        "+ bf16 encoder pass": {"cache_precision": "auto", "mixed_precision": "no"},
        "+ bf16 autocast (default)": {"cache_precision": "auto", "mixed_precision": "auto"},
    },
    "cs_fillets": {
        "recipe, 30 s windows": {"trim_padding": None},
        "recipe defaults (trimmed encoder input)": {},
    },
}


def run_ours(
    cfg: TrainConfig,
    minutes: float,
    eval_every: int,
    eval_n: int,
    name: str = "ours",
    eval_minutes: float | None = None,
) -> list[dict]:
    clock = Clock(eval_minutes)
    processor = load_base_model(cfg.base, "fp32", "cpu").processor
    test = prepare_splits(cfg.data, cfg.language, processor, splits=("test",), progress=False)["test"][:eval_n]
    curve = []

    def on_step(state, model):
        over = clock.minutes() > minutes  # the budget excludes measurements, so the run is stopped here
        if clock.due(state.step, eval_every) or over:

            def point():
                minutes_now = round(clock.minutes(), 2)
                scores, _ = evaluate_examples(model, processor, test, cfg.language, max_new_tokens=cfg.max_new_tokens)
                curve.append({"step": state.step, "minutes": minutes_now, "wer": scores.wer, "cer": scores.cer})
                print(name, curve[-1], flush=True)

            clock.measure(point)
        return over

    cfg.max_minutes, cfg.eval_every, cfg.checkpoint_every = None, 0, 0  # the recipe's max_steps and schedule stay
    cfg.final_eval = False  # the curve above is the measurement
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out = str(Path(tmp) / cfg.language)
        train_adapter(cfg, progress=False, callbacks=[on_step])
    return curve


def minutes_to_reach(curve: list[dict], target: float, metric: str = "wer") -> float | None:
    return next((p["minutes"] for p in curve if p[metric] <= target), None)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="sw_synth", choices=list(VARIANTS), help="recipe config (recipes/configs)")
    p.add_argument("--data", default="data/sw_synth")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--eval-n", type=int, default=16)
    p.add_argument("--ours-minutes", type=float, default=4.0, help="budget of each whisper-lora variant")
    p.add_argument("--variants", nargs="+", help="names from VARIANTS[config] (default: all)")
    p.add_argument(
        "--metric", default="wer", choices=("wer", "cer"), help="time to the reference's final value of this"
    )
    p.add_argument("--ref-eval-every", type=int, default=5, help="steps between the reference's measurements")
    p.add_argument("--ours-eval-every", type=int, default=5, help="steps between whisper-lora's measurements")
    p.add_argument("--eval-minutes", type=float, help="measure every this many training minutes instead (fast devices)")
    p.add_argument("--json", default="bench/results/time_to_wer.json")
    a = p.parse_args()
    machine = device_summary(pick_device("auto"))
    print(f"machine: {machine}", flush=True)  # every table below holds for this device / CPU class
    variants = VARIANTS[a.config]
    chosen = a.variants or list(variants)
    unknown = [v for v in chosen if v not in variants]
    if unknown:
        p.error(f"unknown variants {unknown} for {a.config}; valid: {', '.join(variants)}")
    if a.config == "sw_synth" and not (Path(a.data) / "texts").is_dir():
        from whisper_lora.cli import main as cli

        cli(["synth", "--language", "sw", "--out", a.data])

    def config(**kw) -> TrainConfig:
        return TrainConfig.from_yaml(ROOT / "recipes" / "configs" / f"{a.config}.yaml", data=a.data, **kw)

    ref = run_reference(config(), a.minutes, a.ref_eval_every, a.eval_n, a.eval_minutes)
    target = ref[-1][a.metric]
    t_ref = minutes_to_reach(ref, target, a.metric)
    runs = {"reference (PEFT int8 recipe)": ref}
    for v in chosen:
        runs[v] = run_ours(config(**variants[v]), a.ours_minutes, a.ours_eval_every, a.eval_n, v, a.eval_minutes)
    summary = []
    for name, curve in runs.items():
        t = minutes_to_reach(curve, target, a.metric)
        summary.append(
            {
                "run": name,
                "steps": curve[-1]["step"],
                "final_wer": curve[-1]["wer"],
                "final_cer": curve[-1]["cer"],
                f"minutes_to_reference_{a.metric}": t,
                "ratio": round(t / t_ref, 3) if t is not None and t_ref else None,
            }
        )
    out = {"config": a.config, "budget_minutes": a.minutes, f"reference_final_{a.metric}": target, "summary": summary}
    out["curves"] = runs
    print("\n| run | step | minutes | held-out WER | CER |\n|---|---|---|---|---|")
    for name, curve in runs.items():
        for pt in curve:
            print(f"| {name} | {pt['step']} | {pt['minutes']} | {pt['wer']:.3f} | {pt['cer']:.3f} |")
    m = a.metric.upper()
    print(f"\nTime to the reference's final held-out {m} ({target:.3f})\n")
    print(f"| run | steps | final WER | final CER | minutes to reference {m} | ratio to reference |")
    print("|---|---|---|---|---|---|")
    for r in summary:
        print(
            f"| {r['run']} | {r['steps']} | {r['final_wer']:.3f} | {r['final_cer']:.3f} | "
            f"{r[f'minutes_to_reference_{a.metric}']} | {r['ratio']} |"
        )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": machine, **out}, indent=2))


if __name__ == "__main__":
    main()
