"""Adapters that add a language token, served by real ``whisper-lora serve`` processes (plain and ``--ray``): the
answers equal one in-process ``Transcriber``'s, asked by ``model`` or by ``language``, mixed with Whisper's own
tokens and the base."""

import os

import httpx
import pytest

from tests.conftest import make_tiny_adapter
from tests.serving.conftest import shutdown_serve, wav_bytes
from tests.serving.test_ray import KEY
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.serving.process import running

# (model, language): by the adapter's name, by its language (routed to it), Whisper's own token, the base
CASES = [("eo", None), ("auto", "ga"), ("sw", None), ("whisper-tiny-random", "fr")]
MAX_NEW = 8


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("served-new-tokens") / "adapters"
    make_tiny_adapter(tiny_dir, root, "eo", seed=21, new_token=True)
    make_tiny_adapter(tiny_dir, root, "ga", seed=22, new_token=True)
    make_tiny_adapter(tiny_dir, root, "sw", seed=23)
    return root


@pytest.fixture(scope="module")
def clips():
    import numpy as np

    rng = np.random.default_rng(8)
    return [rng.standard_normal(16000 * s).astype(np.float32) * 0.1 for s in (2, 3)]


def _reference(registry, tiny_dir, clips, threads: int | None = None) -> dict:
    """What one in-process ``Transcriber`` answers, with ``threads`` torch threads (a Ray replica's: 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        t = Transcriber(str(tiny_dir), registry, precision="fp32", device="cpu", max_new_tokens=MAX_NEW)
        out = {}
        for i, audio in enumerate(clips):
            for model, language in CASES:
                adapter = None if model == "whisper-tiny-random" else ("route" if model == "auto" else model)
                r = t.transcribe(audio, language or "auto", adapter=adapter)
                out[i, model] = (r.text, r.adapter)
        return out
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(registry, tiny_dir, clips):
    return _reference(registry, tiny_dir, clips)


def _ask(url, audio, model, language, key=None):
    # json: decoded as one window (verbose_json decodes with timestamps, whose sampled fallback is transformers':
    # its draws depend on the vocabulary's size, so on which tokens this process added; docs/languages.md)
    data = {"model": model, "response_format": "json", **({"language": language} if language else {})}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(
        f"{url}/v1/audio/transcriptions",
        data=data,
        files={"file": ("a.wav", wav_bytes(audio))},
        headers=headers,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return r.json()["text"]


def _args(tiny_dir, registry):
    return ["serve", "--base", str(tiny_dir), "--adapters", str(registry), "--precision", "fp32", "--device", "cpu"] + [
        "--max-new-tokens",
        str(MAX_NEW),
    ]


def test_serve_answers_new_tokens_as_the_transcriber(registry, tiny_dir, clips, reference):
    with running(_args(tiny_dir, registry), timeout=240) as url:
        models = {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert {"eo", "ga", "sw"} <= models
        for i, audio in enumerate(clips):
            for model, language in CASES:
                assert _ask(url, audio, model, language) == reference[i, model][0], (i, model)
        assert reference[0, "eo"][1] == "eo" and reference[0, "auto"][1] == "ga"
        # a language Whisper lacks, with no adapter and no proxy: refused by name, not decoded under a wrong token
        r = httpx.post(
            f"{url}/v1/audio/transcriptions",
            data={"model": "auto", "language": "gn"},
            files={"file": ("a.wav", wav_bytes(clips[0]))},
            timeout=120,
        )
        assert r.status_code == 400 and "Whisper has no token for Guarani (gn)" in r.json()["error"]["message"], r.text


@pytest.mark.slow
def test_serve_ray_answers_new_tokens_as_the_transcriber(ray_cluster, registry, tiny_dir, clips):
    from tests.serving.conftest import REPLICA_THREADS

    reference = _reference(registry, tiny_dir, clips, REPLICA_THREADS)  # a random model's ties follow the threads
    args = [*_args(tiny_dir, registry), "--ray", "--ray-address", ray_cluster, "--replicas", "2", "--max-loaded", "2"]
    env = {**os.environ, "WHISPER_LORA_API_KEY": KEY}
    try:
        with running(args, timeout=600, env=env) as url:
            for i, audio in enumerate(clips):
                for model, language in CASES:
                    assert _ask(url, audio, model, language, KEY) == reference[i, model][0], (i, model)
    finally:
        shutdown_serve()
