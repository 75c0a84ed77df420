#!/usr/bin/env python
"""Load test of the HTTP API on loopback: N requests from T threads, mixed languages; prints a table, writes JSON.

    python bench/serve_load.py [--requests 50] [--threads 8] [--precision int8] [--max-batch 8]

Starts `whisper-lora serve` as a real process on a free loopback port with the shipped adapters,
checks every concurrent answer against an isolated request, and reports requests/s, p50/p95, errors.
"""

import argparse
import io
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import soundfile as sf

from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.hardware import device_summary
from whisper_lora.serving.process import running

ROOT = Path(__file__).resolve().parent.parent
CZECH = Path("/usr/share/games/fillets-ng/sound")


def wav(audio):
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--precision", default="int8")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--json", default="bench/results/serve_load.json")
    a = p.parse_args()
    print(f"machine: {device_summary()}", flush=True)  # every table below holds for this CPU class
    cases = [
        ("sw", wav(synthesize(shipped_sentences("sw", "test")[0], "sw", "m2"))),
        ("id", wav(synthesize(shipped_sentences("id", "test")[0], "id", "f2"))),
        ("auto", (ROOT / "tests/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav").read_bytes()),
    ]
    cz = sorted(CZECH.glob("*/cs/*.ogg"))
    if cz:
        cases.append(("cs", cz[len(cz) // 2].read_bytes()))
    args = ["serve", "--precision", a.precision, "--max-batch", str(a.max_batch), "--max-new-tokens", "96"]
    with running(args, timeout=600) as url:

        def post(model, data):
            t = time.perf_counter()
            r = httpx.post(
                f"{url}/v1/audio/transcriptions",
                data={"model": model, "response_format": "verbose_json"},
                files={"file": ("clip", data)},
                timeout=600,
            )
            return r.status_code, (r.json().get("text") if r.status_code == 200 else r.text), time.perf_counter() - t

        isolated = {i: post(*c) for i, c in enumerate(cases)}
        jobs = [i % len(cases) for i in range(a.requests)]
        started = time.perf_counter()
        with ThreadPoolExecutor(a.threads) as pool:
            results = list(pool.map(lambda i: (i, *post(*cases[i])), jobs))
        wall = time.perf_counter() - started
        health = httpx.get(f"{url}/health").json()
    lat = sorted(r[3] for r in results)
    errors = sum(1 for r in results if r[1] != 200)
    mismatches = sum(1 for i, code, text, _ in results if code == 200 and text != isolated[i][1])
    out = {
        "requests": a.requests,
        "threads": a.threads,
        "precision": a.precision,
        "max_batch": a.max_batch,
        "requests_per_s": a.requests / wall,
        "p50_s": statistics.median(lat),
        "p95_s": lat[int(0.95 * (len(lat) - 1))],
        "errors": errors,
        "mismatches_vs_isolated": mismatches,
        "decode_calls": health["batches"],
        "isolated_latency_s": statistics.median(v[2] for v in isolated.values()),
    }
    print(f"\nHTTP load: {a.requests} requests, {a.threads} threads, languages {[c[0] for c in cases]}")
    for k, v in out.items():
        print(f"  {k:<24}{v:.3f}" if isinstance(v, float) else f"  {k:<24}{v}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": device_summary(), **out}, indent=2))


if __name__ == "__main__":
    main()
