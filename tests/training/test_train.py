import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_python, tiny_train_config, train_until
from whisper_lora.atomic import FAULT_ENV
from whisper_lora.base.model import load_base_model
from whisper_lora.errors import CheckpointError, ConfigError
from whisper_lora.registry.adapter_io import METADATA_FILE, load_adapter, read_metadata, validate_adapter
from whisper_lora.registry.language_profile import read_profile
from whisper_lora.training.checkpoint import LEGACY_FILE, STATE_FILE, TENSORS_FILE, read_checkpoint
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.lora import LoraSpec
from whisper_lora.training.train import train_adapter

_CFG = dict(lora=LoraSpec(r=4, alpha=8, dropout=0.1), max_steps=4, eval_every=2, checkpoint_every=2, seed=7)
_QUICK = dict(final_eval=False, language_profile=False)  # for runs compared by their weights only


def _cfg(tiny_dir, corpus, out, **kw):
    return tiny_train_config(tiny_dir, corpus, out, **{**_CFG, **kw})


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, sw_corpus, tmp_path_factory):
    """A run of ``_cfg`` from start to end: what every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("uninterrupted") / "full"
    return train_adapter(_cfg(tiny_dir, sw_corpus, out, **_QUICK), progress=False)


def _weights(adapter_dir):
    return load_file(adapter_dir / "adapter_model.safetensors")


def _same_adapter(a_dir, b_dir) -> bool:
    a, b = _weights(a_dir), _weights(b_dir)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_gives_the_same_adapter(tiny_dir, sw_corpus, tmp_path, uninterrupted, caplog):
    full = uninterrupted
    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "resumed", **_QUICK)
    train_until(cfg, 2)
    assert not (tmp_path / "resumed").exists()  # nothing half-written in place
    assert sorted(p.name for p in (tmp_path / "resumed.checkpoint").iterdir()) == [STATE_FILE, TENSORS_FILE]
    with caplog.at_level(logging.INFO, logger="whisper_lora"):
        resumed = train_adapter(cfg, resume=True, progress=False)
    assert f"resumed from {tmp_path / 'resumed.checkpoint'} at step 2" in caplog.text and resumed.resumed_from == 2
    a = _weights(full.adapter_dir)
    assert len(a) == 2 * 12  # lora_A + lora_B of 12 modules
    assert _same_adapter(full.adapter_dir, resumed.adapter_dir)
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k)  # it did train
    assert resumed.state.step == full.state.step == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed"]  # checkpoint and lock gone after success


def test_a_checkpoint_of_an_older_version_resumes(tiny_dir, sw_corpus, tmp_path, uninterrupted):
    """whisper-lora 0.1 wrote one torch.save pickle; it is read with weights_only=True and resumes the same."""
    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "old", **_QUICK)
    train_until(cfg, 2)
    ckpt_dir = tmp_path / "old.checkpoint"
    c = read_checkpoint(ckpt_dir)
    legacy = {"config": c.config, "model": c.model, "optimizer": c.optimizer, "scheduler": c.scheduler}
    torch.save({**legacy, "best": c.best, "state": c.state}, ckpt_dir / LEGACY_FILE)
    (ckpt_dir / STATE_FILE).unlink()
    (ckpt_dir / TENSORS_FILE).unlink()
    resumed = train_adapter(cfg, resume=True, progress=False)
    assert resumed.resumed_from == 2 and _same_adapter(uninterrupted.adapter_dir, resumed.adapter_dir)


def test_a_run_from_before_a_config_key_existed_resumes(tiny_dir, sw_corpus, tmp_path, uninterrupted):
    """A checkpoint, or a finished adapter, written before ``attention`` existed lacks the key: it counts as its
    default, so the run resumes (or is found finished) instead of being refused as "another config". The key only
    changes how fast a step runs, so a resume may change it too."""
    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "old", **_QUICK)
    train_until(cfg, 2)
    state = tmp_path / "old.checkpoint" / STATE_FILE
    doc = json.loads(state.read_text())
    del doc["config"]["attention"]
    state.write_text(json.dumps(doc))
    resumed = train_adapter(replace(cfg, attention="math"), resume=True, progress=False)
    assert resumed.resumed_from == 2 and _same_adapter(uninterrupted.adapter_dir, resumed.adapter_dir)
    meta = tmp_path / "old" / "whisper_lora.json"
    doc = json.loads(meta.read_text())
    del doc["training"]["attention"]
    meta.write_text(json.dumps(doc))
    again = train_adapter(cfg, resume=True, progress=False)
    assert again.already_finished and again.state.step == resumed.state.step
    with pytest.raises(ConfigError, match=r"another config \(learning_rate\)"):
        train_adapter(replace(cfg, learning_rate=1e-4), resume=True, progress=False)


def test_resume_says_what_it_found_and_never_restarts_silently(tiny_dir, sw_corpus, tmp_path, caplog):
    kw = dict(max_steps=1, eval_every=0, final_eval=False, language_profile=False)
    cfg = tiny_train_config(tiny_dir, sw_corpus, tmp_path / "sw", **kw)
    ckpt_dir = tmp_path / "sw.checkpoint"
    ckpt_dir.mkdir()
    (ckpt_dir / STATE_FILE).write_text("{ not json")
    (ckpt_dir / TENSORS_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"cannot resume from {ckpt_dir / STATE_FILE}: it is not readable JSON"):
        train_adapter(cfg, resume=True, progress=False)  # refused before the set-up
    with caplog.at_level(logging.WARNING, logger="whisper_lora"):
        train_adapter(cfg, progress=False)  # without --resume: said, then removed with the run's success
    assert f"{ckpt_dir} holds a checkpoint; starting at step 0 without --resume" in caplog.text
    assert not ckpt_dir.exists()
    caplog.clear()
    shutil.rmtree(tmp_path / "sw")  # no finished adapter either (one is left alone: the test below)
    with caplog.at_level(logging.WARNING, logger="whisper_lora"):
        result = train_adapter(cfg, resume=True, progress=False)
    assert f"resume: no checkpoint at {ckpt_dir}; starting at step 0" in caplog.text
    assert result.resumed_from is None and result.state.step == 1


def test_resume_of_a_finished_run_leaves_its_adapter_alone(tiny_dir, sw_corpus, tmp_path, caplog, capsys):
    """A finished run keeps no checkpoint: ``--resume`` then says there is nothing to do and writes nothing (it used
    to train again from step 0 over the finished adapter); with another config it refuses and says how to go on."""
    from whisper_lora.cli import build_parser, main
    from whisper_lora.cli.train import train_config

    out = tmp_path / "sw"
    args = ["train", "--language", "sw", "--data", str(sw_corpus), "--out", str(out), "--base", str(tiny_dir)]
    args += ["--precision", "fp32", "--device", "cpu", "--max-steps", "2", "--batch-size", "2", "--eval-every", "0"]
    args += ["--max-new-tokens", "4", "--no-final-eval", "--no-language-profile", "--cache-dir", str(tmp_path / "c")]
    cfg = train_config(build_parser().parse_args(args))  # what `whisper-lora train ARGS` trains
    train_adapter(cfg, progress=False)
    assert not (tmp_path / "sw.checkpoint").exists()

    def on_disk():
        return out.stat().st_ino, {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}

    finished = on_disk()
    with caplog.at_level(logging.WARNING, logger="whisper_lora"):
        result = train_adapter(cfg, resume=True, progress=False)
    assert on_disk() == finished, "the finished adapter was replaced"
    assert result.already_finished and result.state.step == 2 and result.resumed_from is None
    assert result.metadata.training["steps"] == 2 and "nothing to resume, nothing written" in caplog.text
    with pytest.raises(
        ConfigError, match=r"holds a finished adapter of another config \(max_steps\).*without --resume"
    ):
        train_adapter(replace(cfg, max_steps=3), resume=True, progress=False)
    assert on_disk() == finished
    assert main([*args, "--resume", "-q"]) == 0  # the command says so
    said = capsys.readouterr().out
    assert f"nothing to resume: the run finished (2 steps) and its adapter is in {out}, left as it is" in said
    assert "run without --resume to train again" in said and on_disk() == finished


# a training run in a child process (kill -9 tests): _CFG into argv[3], the lora spec as a dict
TRAIN = """
import json, sys
from tests.conftest import tiny_train_config
from whisper_lora.training.train import train_adapter
train_adapter(tiny_train_config(sys.argv[1], sys.argv[2], sys.argv[3], **json.loads(sys.argv[4])), progress=False)
"""


@pytest.mark.parametrize(
    ("fault", "resumed_at"),
    [
        ("r.checkpoint:moved-old", 4),  # step 4's checkpoint killed with neither it nor step 2's in place
        ("r:committed", 4),  # the final adapter's write killed after its commit: readers finish it
    ],
)
def test_a_run_killed_while_writing_recovers_and_resumes_to_the_same_adapter(
    tiny_dir, sw_corpus, tmp_path, uninterrupted, caplog, fault, resumed_at
):
    out = tmp_path / "r"
    kw = json.dumps({**_CFG, **_QUICK, "lora": _CFG["lora"].to_dict()})
    child = run_python(TRAIN, str(tiny_dir), str(sw_corpus), str(out), kw, env={FAULT_ENV: fault})
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert any(p.name.startswith(".r.") for p in tmp_path.iterdir())  # a write was left half done
    if fault.startswith("r:"):
        assert not out.exists()
        validate_adapter(out)  # a reader finishes the committed write: the new adapter, complete
        assert _same_adapter(uninterrupted.adapter_dir, out)
    with caplog.at_level(logging.INFO, logger="whisper_lora"):
        resumed = train_adapter(_cfg(tiny_dir, sw_corpus, out, **_QUICK), resume=True, progress=False)
    assert f"resumed from {tmp_path / 'r.checkpoint'} at step {resumed_at}" in caplog.text
    assert resumed.resumed_from == resumed_at and resumed.state.step == 4
    assert _same_adapter(uninterrupted.adapter_dir, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "encoder-cache") == ["r"]  # no leftovers


SECOND_RUN = "import sys\nfrom whisper_lora.cli import main\nsys.exit(main(sys.argv[1:]))"


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tiny_dir, sw_corpus, tmp_path):
    out = tmp_path / "sw"
    kw = dict(max_steps=2, eval_every=0, final_eval=False, checkpoint_every=0, language_profile=False)
    cfg = tiny_train_config(tiny_dir, sw_corpus, out, **kw)
    flags = ["train", "--language", "sw", "--data", str(sw_corpus), "--out", str(out), "--base", str(tiny_dir)]
    second = []

    def start_a_second_run(state, model):
        if state.step == 1:  # the first run is between its steps and holds the lock
            second.append(run_python(SECOND_RUN, *flags, "--precision", "fp32", "--device", "cpu", "-q"))

    first = train_adapter(cfg, progress=False, callbacks=[start_a_second_run])
    assert second[0].returncode == 2
    assert f"another training run (pid {os.getpid()}) is writing {out} and holds {out}.lock" in second[0].stderr
    assert first.state.step == 2 and (out / "adapter_model.safetensors").is_file()  # the first one was not disturbed
    assert not (tmp_path / "sw.lock").exists()  # released when it ended


def test_resume_refuses_a_changed_config(tiny_dir, sw_corpus, tmp_path):
    train_until(_cfg(tiny_dir, sw_corpus, tmp_path / "a", checkpoint_every=1), 1)
    with pytest.raises(ConfigError, match="learning_rate"):
        train_adapter(
            _cfg(tiny_dir, sw_corpus, tmp_path / "a", checkpoint_every=1, learning_rate=1e-4),
            resume=True,
            progress=False,
        )


@pytest.fixture(scope="module")
def trained(tiny_dir, sw_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "sw"
    return train_adapter(_cfg(tiny_dir, sw_corpus, out, checkpoint_every=0), progress=False)


def test_adapter_directory_and_metadata(trained, tiny_dir):
    d = trained.adapter_dir
    assert sorted(p.name for p in d.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "language_profile.safetensors",
        METADATA_FILE,
    ]
    meta = read_metadata(d)
    profile = read_profile(d)  # what auto routing learns from: every training utterance (24 < 96), on this base
    assert profile.utterances == 24 and profile.base_fingerprint == meta.base["fingerprint"]
    assert profile.encoder_mean.shape == (24, 64) and len(profile.languages) == profile.logprobs.shape[1] > 1
    assert meta.language == "sw" and meta.whisper_language == "sw"
    assert meta.base["name"] == str(tiny_dir) and len(meta.base["fingerprint"]) == 16
    assert meta.lora["r"] == 4 and meta.data["train_utterances"] == 24 and len(meta.data["fingerprint"]) == 16
    assert set(meta.metrics["base"]) >= {"wer", "cer"} and set(meta.metrics["adapter"]) >= {"wer", "cer"}
    assert meta.metrics["n"] == 4 and meta.library_version
    assert json.loads((d / "adapter_config.json").read_text()).get("task_type") is None


def test_reloaded_adapter_gives_identical_logits_and_plain_peft_loads_it(trained, tiny_dir, sw_corpus):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whisper_lora.data.features import collate, featurize
    from whisper_lora.data.readers import load_corpus

    _loaded = load_base_model(str(tiny_dir), "fp32", "cpu")
    model, processor = _loaded.model, _loaded.processor
    splits, _ = load_corpus(sw_corpus, "sw")
    batch = collate(featurize(splits["test"][:2], processor)[0])
    ours = load_adapter(model, trained.adapter_dir).eval()
    plain = PeftModel.from_pretrained(
        WhisperForConditionalGeneration.from_pretrained(tiny_dir), str(trained.adapter_dir)
    ).eval()
    with torch.no_grad():
        a, b = ours(**batch).logits, plain(**batch).logits
        with ours.disable_adapter():
            base = ours(**batch).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, base)  # the adapter does something


def test_failed_save_keeps_the_previous_adapter(trained, tmp_path):
    import shutil

    from whisper_lora.atomic import atomic_directory

    target = tmp_path / "sw"
    shutil.copytree(trained.adapter_dir, target)
    before = (target / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert (target / "adapter_model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sw"]  # no temporary left behind


def test_two_process_accelerate_run(tiny_dir, sw_corpus, tmp_path):
    """The same entry point runs unchanged under `accelerate launch` with 2 CPU processes."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "whisper_lora.cli",
        "train",
        "--language",
        "sw",
        "--data",
        str(sw_corpus),
        "--out",
        str(out),
        "--base",
        str(tiny_dir),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-new-tokens",
        "4",  # the random model never stops on its own: scoring would decode to the window's cap
        "--quiet",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = read_metadata(out)
    assert meta.training["processes"] == 2 and meta.training["steps"] == 2


def test_a_datasets_object_with_an_audio_column_trains_an_adapter(tiny_dir, sw_corpus, tmp_path):
    from datasets import Audio, Dataset, DatasetDict

    def split(name):
        with open(sw_corpus / "texts" / f"{name}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        ds = Dataset.from_dict(
            {"audio": [str(sw_corpus / "wavs" / r["wav"]) for r in rows], "text": [r["words"] for r in rows]}
        )
        return ds.cast_column("audio", Audio(sampling_rate=16000))

    data = DatasetDict(train=split("train"), validation=split("dev"), test=split("test"))
    cfg = tiny_train_config(tiny_dir, sw_corpus, tmp_path / "ds", data=data, max_steps=3, checkpoint_every=0)
    result = train_adapter(cfg, progress=False)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.metadata.data["train_utterances"] == 24 and result.metadata.metrics["n"] == 4
    assert result.metadata.data["source"].startswith("datasets:train=")


def test_saved_adapter_carries_a_model_card(trained):
    import yaml

    card = (trained.adapter_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["language"] == ["sw"] and front["library_name"] == "peft"
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [trained.metadata.metrics["adapter"][k] for k in ("wer", "cer")]


def test_a_callback_returning_true_ends_training_and_the_adapter_is_saved(tiny_dir, sw_corpus, tmp_path):
    cfg = tiny_train_config(tiny_dir, sw_corpus, tmp_path / "a", max_steps=50, eval_every=0, final_eval=False)
    seen = []
    result = train_adapter(cfg, progress=False, callbacks=[lambda s, m: seen.append(s.step), lambda s, m: s.step >= 3])
    assert result.state.step == 3 and seen == [1, 2, 3]  # every callback ran on the last step too
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_spec_augment_masks_training_input_and_resumes_identically(tiny_dir, sw_corpus, tmp_path):
    kw = dict(eval_every=0, final_eval=False, mixed_precision="no")
    plain = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "plain", **kw), progress=False)
    full = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "full", spec_augment=True, **kw), progress=False)
    assert full.metadata.training["spec_augment"] and full.metadata.training["trim_padding"] == 1.0
    masked = load_file(full.adapter_dir / "adapter_model.safetensors")
    unmasked = load_file(plain.adapter_dir / "adapter_model.safetensors")
    assert any(not torch.equal(masked[k], unmasked[k]) for k in masked)  # same seed, masked input: other updates
    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "resumed", spec_augment=True, **kw)
    train_until(cfg, 2)
    resumed = train_adapter(cfg, resume=True, progress=False)
    again = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(masked[k], again[k]) for k in masked)  # the masks are drawn per step, like dropout
    base = load_base_model(str(tiny_dir), "fp32", "cpu").model
    assert not base.config.apply_spec_augment  # the checkpoint on disk is untouched


def test_spec_augment_with_a_cached_encoder_prefix_is_refused(tiny_dir, sw_corpus, tmp_path):
    decoder_only = LoraSpec(r=4, alpha=8, stacks=("decoder_self", "decoder_cross"))
    with pytest.raises(ConfigError, match="set cache_encoder: false or spec_augment: false"):
        _cfg(tiny_dir, sw_corpus, tmp_path / "x", lora=decoder_only, spec_augment=True)  # by the config itself


def test_a_conflict_that_needs_the_base_depth_is_refused_before_anything_is_loaded(tmp_path):
    from transformers import WhisperConfig

    base = tmp_path / "base"  # a config.json and weights that cannot be loaded: only the depth can be read
    WhisperConfig(encoder_layers=2, decoder_layers=2).save_pretrained(base)
    (base / "model.safetensors").write_bytes(b"")
    top1 = LoraSpec(r=4, alpha=8, encoder_top=1)  # on 2 encoder layers: the lower one is cached
    cfg = TrainConfig(language="sw", data=str(tmp_path / "no-corpus"), base=str(base), out=str(tmp_path / "sw"))
    for conflict in (dict(spec_augment=True), dict(trim_padding=1.0)):
        with pytest.raises(ConfigError, match="set cache_encoder: false or"):
            train_adapter(replace(cfg, lora=top1, **conflict), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no lock taken, nothing written


def _fake_clock(monkeypatch):
    """Every reading of the training loop's clock is 30 s after the previous one."""
    import types

    import whisper_lora.training.train as train_module

    ticks = iter(range(0, 100_000, 30))
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(monotonic=lambda: float(next(ticks))))


@pytest.mark.parametrize(("decay", "max_steps"), [("budget", 100), ("budget", None), ("steps", 100)])
def test_a_time_capped_run_decays_its_learning_rate_by_the_budget(
    tiny_dir, sw_corpus, tmp_path, monkeypatch, decay, max_steps
):
    _fake_clock(monkeypatch)  # one step per 30 s: a 3-minute budget ends after 6 steps
    kw = dict(max_steps=max_steps, max_minutes=3.0, lr_decay=decay, eval_every=0)
    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / decay, **kw)
    r = train_adapter(cfg, progress=False)
    lrs = [h["lr"] / cfg.learning_rate for h in r.state.history if "lr" in h]
    assert r.state.step == 6
    if decay == "budget":  # linear to 0 over the minutes (with or without a step cap)
        assert lrs == pytest.approx([0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    else:  # over the 100 steps: the run stops at nearly the full rate
        assert lrs == pytest.approx([0, 1, 98 / 99, 97 / 99, 96 / 99, 95 / 99])


def test_a_resumed_time_capped_run_continues_its_budget(tiny_dir, sw_corpus, tmp_path, monkeypatch):
    kw = dict(max_steps=100, max_minutes=3.0, eval_every=0, checkpoint_every=1)
    _fake_clock(monkeypatch)
    full = train_adapter(_cfg(tiny_dir, sw_corpus, tmp_path / "full", **kw), progress=False)
    _fake_clock(monkeypatch)
    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "resumed", **kw)
    train_until(cfg, 3)
    _fake_clock(monkeypatch)  # a new process: its clock starts again
    resumed = train_adapter(cfg, resume=True, progress=False)
    assert resumed.state.step == full.state.step == 6  # not 3 + 6: the minutes spent before count
    assert [h["lr"] for h in resumed.state.history if "lr" in h] == [h["lr"] for h in full.state.history if "lr" in h]
    a = load_file(full.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_scores_are_what_eval_gives_for_the_saved_adapter(trained, tiny_dir, sw_corpus, capsys):
    """On a CPU, training scores with the adapter copied onto an int8 base (score_precision auto): what ``eval`` and
    ``transcribe`` load by default, so the scores stored in the metadata are theirs, clip for clip."""
    from whisper_lora.cli import main

    meta = read_metadata(trained.adapter_dir)
    assert meta.metrics["precision"] == "int8"  # trained in fp32, scored as transcribe loads the base
    args = ["eval", "--language", "sw", "--data", str(sw_corpus), "--base", str(tiny_dir), "--max-new-tokens", "4"]
    assert main([*args, "--adapter", str(trained.adapter_dir), "--json", "--no-cache"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["adapter"] == meta.metrics["adapter"] and out["base"] == meta.metrics["base"]


def test_score_precision_is_validated_and_train_scores_with_the_training_model(tiny_dir, sw_corpus, tmp_path):
    with pytest.raises(ConfigError, match="score_precision='int3'"):
        _cfg(tiny_dir, sw_corpus, tmp_path / "x", score_precision="int3")
    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "fp32", score_precision="train", max_steps=2, language_profile=False)
    assert read_metadata(train_adapter(cfg, progress=False).adapter_dir).metrics["precision"] == "fp32"


def test_resume_keeps_the_runs_own_auto_choices(tiny_dir, sw_corpus, tmp_path, uninterrupted, monkeypatch, caplog):
    """``auto`` settings resolve per machine and per whisper-lora version (issue 32 changed what a GPU picks): a
    resume keeps what the run chose, from its checkpoint or its finished adapter, instead of refusing "another
    config"; a setting given explicitly is still compared."""
    from whisper_lora.base.profile import Profile
    from whisper_lora.training import train as train_module

    cfg = _cfg(tiny_dir, sw_corpus, tmp_path / "auto", **_QUICK, precision="auto")
    train_until(cfg, 2)
    elsewhere = Profile("int8", True, 4, ("precision int8: what a newer profile picks",))
    monkeypatch.setattr(train_module, "choose_profile", lambda *a, **k: elsewhere)
    monkeypatch.setattr(train_module, "choose_trim_padding", lambda *a, **k: (2.0, "a newer padding"))
    with caplog.at_level(logging.INFO, logger="whisper_lora"):
        resumed = train_adapter(cfg, resume=True, progress=False)
    said = "auto settings as the run chose them: precision fp32, gradient_checkpointing False, trim_padding 1.0\n"
    assert said in caplog.text and resumed.metadata.training["trim_padding"] == 1.0
    assert resumed.resumed_from == 2 and _same_adapter(uninterrupted.adapter_dir, resumed.adapter_dir)
    again = train_adapter(cfg, resume=True, progress=False)  # finished: its metadata says what it chose
    assert again.already_finished
    assert train_module.resolve_auto_settings(cfg, torch.device("cpu")).precision == "int8"  # the patch holds
    with pytest.raises(ConfigError, match=r"another config \(gradient_checkpointing, precision\)"):
        train_adapter(replace(cfg, precision="int8", gradient_checkpointing=True), resume=True, progress=False)
