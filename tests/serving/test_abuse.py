"""The bad-input and abuse suite against a real ``whisper-lora serve`` process on loopback: crafted and mutated
uploads (``hostile.py``) each get a JSON answer in under 5 s, never a 5xx; the server keeps serving right answers and
its memory stays bounded throughout. Slow and idle connections: ``test_server_limits.py``."""

import time

import httpx
import numpy as np
import pytest

from tests.inference.test_transcriber import AUDIO
from tests.serving import hostile
from tests.serving.conftest import wav_bytes
from whisper_lora.serving.process import memory_bytes, running, server_pid

KEY = "abuse-key-0123456789"
SECONDS = 5.0  # every answer, good or bad, within this
RSS_GROWTH_MB = 400  # peak resident memory over the warm idle server, through the whole suite


def _post(url, data, filename, model="sw", key=KEY):
    started = time.monotonic()
    r = httpx.post(
        f"{url}/v1/audio/transcriptions",
        data={"model": model},
        files={"file": (filename, data)},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    return r, time.monotonic() - started


def _server_memory_mb(url: str) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the server process listening at ``url``, in MiB."""
    pid = server_pid(url)
    return memory_bytes(pid, "VmRSS") / 2**20, memory_bytes(pid, "VmHWM") / 2**20


@pytest.fixture(scope="module")
def server(tiny_dir, tiny_registry):
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(tiny_registry), "--precision", "fp32"]
    args += ["--device", "cpu", "--max-new-tokens", "8", "--api-key", KEY, "--max-audio-seconds", "600"]
    with running(args, timeout=240) as url:
        yield url


def test_hostile_uploads_get_json_4xx_fast_and_the_server_stays_right_and_small(server):
    good = wav_bytes(AUDIO[0])
    want = _post(server, good, "good.wav")[0].json()["text"]
    idle_rss, _ = _server_memory_mb(server)
    failures = []
    for name, (data, filename) in hostile.crafted().items():
        r, seconds = _post(server, data, filename)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        if not (400 <= r.status_code < 500 and body and "error" in body and seconds < SECONDS):
            failures.append(f"{name}: {r.status_code} in {seconds:.1f} s: {r.text[:120]}")
        assert _post(server, good, "good.wav")[0].json()["text"] == want, f"wrong answer after {name}"
    for name, (data, filename) in hostile.mutated(count=60, clip=AUDIO[0][:32000]).items():
        r, seconds = _post(server, data, filename)
        if r.status_code >= 500 or seconds >= SECONDS or "application/json" not in r.headers.get("content-type", ""):
            failures.append(f"{name}: {r.status_code} in {seconds:.1f} s: {r.text[:120]}")
    assert not failures, "\n".join(failures)
    rss, peak = _server_memory_mb(server)
    assert peak - idle_rss < RSS_GROWTH_MB, (idle_rss, peak)
    assert rss < 1.5 * idle_rss, (idle_rss, rss)
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert _post(server, good, "good.wav")[0].json()["text"] == want


def test_silence_and_speech_at_odd_but_real_rates_are_served(server):
    """What the bounds must not refuse: real recordings at 8 kHz to 96 kHz, stereo, and plain silence."""
    for rate, channels in ((8_000, 1), (44_100, 2), (96_000, 2)):
        t = np.arange(rate * 2) / rate
        audio = np.stack([0.2 * np.sin(2 * np.pi * 300 * t)] * channels, axis=1).astype(np.float32)
        r, _ = _post(server, hostile._encode(audio, "WAV", "PCM_16", rate), "real.wav")
        assert r.status_code == 200, (rate, channels, r.text[:200])
    r, _ = _post(server, hostile._encode(np.zeros(16000, np.float32), "WAV", "PCM_16"), "silence.wav")
    assert r.status_code == 200 and r.json()["text"] == ""
