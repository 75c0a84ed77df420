#!/usr/bin/env python
"""RAM and disk of the encoder cache as the corpus grows: the disk store against the in-RAM store.

    python bench/cache_scale.py [--sizes 1000 10000] [--shape base] [--root DIR] [--memory-up-to 2000]

Each (store, size) runs in its own process: it puts ``size`` encoder states of the shape's size (1500 frames x
d_model, as whisper-lora caches them: fp32 into RAM, 16 bit onto disk) into the store, then reads one epoch of
training batches (8 states, seeded random order) back, as a training run does. It reports the process's peak
resident memory over the epoch minus before the store was filled, the disk the store takes, and the time per
stored state and per batch read. The states are random numbers: the figures depend only on their size. The
in-RAM store is run up to --memory-up-to utterances (beyond that it needs more RAM than a laptop has); the disk
store needs 1.5 MB of free disk per whisper-base utterance (3.8 MB for large-v3) under --root.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from whisper_lora.base.hardware import device_summary

D_MODEL = {"tiny": 384, "base": 512, "small": 768, "medium": 1024, "large-v3": 1280}
FRAMES = 1500  # encoder positions of a 30 s window
BATCH = 8


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def one(store: str, size: int, shape: str, root: str) -> dict:
    """Fill and read one store in this process; returns the figures."""
    import torch

    from whisper_lora.training.encoder_cache import DiskStore, MemoryStore

    d = D_MODEL[shape]
    directory = Path(root) / f"{store}-{size}"
    s = DiskStore(directory, torch.bfloat16) if store == "disk" else MemoryStore()
    gen = torch.Generator().manual_seed(0)
    state = torch.randn(FRAMES, d, generator=gen)  # one buffer, varied per key: generation is not what is measured
    before = rss_mb()
    peak = before
    t = time.perf_counter()
    for i in range(size):
        s.put(f"{i:032x}", state + i)  # a new tensor per entry, as the encoder's output is
        if i % 256 == 0:
            peak = max(peak, rss_mb())
    put_s = (time.perf_counter() - t) / size
    order = list(range(size))
    random.Random(0).shuffle(order)
    t = time.perf_counter()
    for start in range(0, size - BATCH + 1, BATCH):
        batch = torch.stack([s.get(f"{i:032x}") for i in order[start : start + BATCH]])
        assert batch.shape == (BATCH, FRAMES, d)
        peak = max(peak, rss_mb())
    get_s = (time.perf_counter() - t) / (size // BATCH)
    disk = sum(f.stat().st_size for f in directory.glob("*.npy")) if store == "disk" else 0
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "store": store,
        "utterances": size,
        "shape": shape,
        "peak_rss_growth_mb": round(peak - before, 1),
        "disk_mb": round(disk / 2**20, 1),
        "put_ms_per_state": round(1000 * put_s, 2),
        "read_ms_per_batch": round(1000 * get_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--shape", default="base", choices=sorted(D_MODEL))
    ap.add_argument("--root", default=None, help="where the disk store is written (default: a temporary directory)")
    ap.add_argument("--memory-up-to", type=int, default=2000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: run one (store, size) in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.shape, args.root)))
        return

    print(f"machine: {device_summary('cpu')}")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.root) as root:
        for size in args.sizes:
            for store in ("memory", "disk"):
                if store == "memory" and size > args.memory_up_to:
                    continue
                cmd = [sys.executable, __file__, "--one", store, str(size), "--shape", args.shape, "--root", root]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    per_state = FRAMES * D_MODEL[args.shape] * 4 / 2**20
    print(f"\nwhisper-{args.shape} encoder states ({FRAMES} x {D_MODEL[args.shape]}), one epoch of batches of {BATCH}")
    print(
        "| store | utterances | peak RSS growth (MB) | RAM the in-RAM store would need (MB) | disk (MB) | put ms/state | read ms/batch |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['store']} | {r['utterances']} | {r['peak_rss_growth_mb']} | {per_state * r['utterances']:.0f} | "
            f"{r['disk_mb']} | {r['put_ms_per_state']} | {r['read_ms_per_batch']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": device_summary("cpu"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
