"""Long recordings share one ``--request-timeout``: they are decoded in the order they arrived, so the earliest
finishes in its own time instead of every one of them timing out together (tested against real server processes)."""

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import soundfile as sf

from tests.inference.test_transcriber import AUDIO
from whisper_lora.serving.process import running

N = 3  # long recordings sent together


def _wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV")
    return buf.getvalue()


LONG = _wav(np.concatenate([AUDIO[0]] * 40))  # about 5 minutes: several seconds of work on the tiny model


def _post(url: str, wav: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/transcriptions", data={"model": "sw"}, files={"file": ("a.wav", wav)}, timeout=300
    )


def test_long_recordings_finish_in_turn_instead_of_timing_out_together(tiny_dir, tiny_registry):
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(tiny_registry), "--precision", "fp32"]
    args += ["--device", "cpu", "--max-new-tokens", "8"]
    with running(args, timeout=240) as url:
        _post(url, _wav(AUDIO[1]))  # warm-up
        started = time.monotonic()
        alone = _post(url, LONG)
        seconds = time.monotonic() - started
    assert alone.status_code == 200 and seconds > 3, seconds  # longer than a turn of the old round robin (2 s)
    # room for about 1.6 recordings: together they need N times one alone, so not all of them can make it
    timeout = 1.6 * seconds
    with running([*args, "--request-timeout", f"{timeout:.2f}"], timeout=240) as url:
        with ThreadPoolExecutor(N) as pool:
            futures = []
            for _ in range(N):
                futures.append(pool.submit(_post, url, LONG))
                time.sleep(0.2)  # in a known order
            answers = [f.result() for f in futures]
    codes = [r.status_code for r in answers]
    assert codes[0] == 200, codes  # the earliest finished within its own deadline
    assert answers[0].json()["text"] == alone.json()["text"]
    assert codes[-1] == 504, codes  # the last could not: it waited for the earlier ones
    assert all(c in (200, 504) for c in codes)
