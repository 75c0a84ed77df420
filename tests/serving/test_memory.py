"""Memory that finished work freed goes back to the system when the server runs out of work."""

import platform
import subprocess
import sys
import time

import pytest

from whisper_lora.inference.request import Request
from whisper_lora.serving.scheduler import Scheduler

FRAGMENTED_HEAP = """
import os
import numpy as np
from whisper_lora.serving.memory import release_free_memory

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

big = np.ones((16 << 20) // 8)
del big  # freeing a 16 MB block raises glibc's mmap threshold: the arrays below come from the heap, as a server's do
arrays = [np.ones((1 << 20) // 8) for _ in range(400)]  # 400 MB, one in 20 kept: the heap cannot shrink from its top
kept = arrays[::20]
del arrays
before = rss()
assert release_free_memory()
print((before - rss()) >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_freed_heap_goes_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    released_mb = int(out.stdout.strip())
    assert released_mb > 200, f"only {released_mb} MB of 380 MB freed went back"  # none without the trim


def test_the_scheduler_releases_memory_when_it_runs_out_of_work(monkeypatch, tiny_dir, tiny_registry):
    from tests.inference.test_transcriber import AUDIO
    from whisper_lora.inference.transcriber import Transcriber

    calls = []
    monkeypatch.setattr(
        "whisper_lora.serving.memory.release_free_memory", lambda: calls.append(time.monotonic()) or True
    )
    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=4)
    scheduler = Scheduler(t, max_wait_ms=5)
    try:
        jobs = [scheduler.submit(Request(a, "sw")) for a in AUDIO[:3]]
        for j in jobs:
            j.future.result(60)
        deadline = time.monotonic() + 5
        while not scheduler.stats()["memory_releases"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls and scheduler.stats()["memory_releases"] == len(calls)
        first = len(calls)
        scheduler._release_memory.interval = 3600.0
        scheduler.transcribe(Request(AUDIO[0], "sw"), timeout=60)  # idle again, but within the interval: no release
        time.sleep(0.1)
        assert len(calls) == first
    finally:
        scheduler.close()
