#!/usr/bin/env python
"""Inference benchmarks on the real whisper-base and the shipped adapters; prints tables, writes JSON.

    python bench/inference.py [--precision int8] [--repeats 5] [--only swap mixed rtf adapters short auto graphs long]
                              [--json bench/results/inference.json]

Sections: adapter swap latency; a mixed-language batch; real-time factor of base, unmerged and merged; and
(``adapters``) one batch spread over 1, 2, 4 and 8 adapters plus base rows, row-indexed (``row_lora``) against
peft's ``adapter_names``, in tokens/s relative to the untouched base (every row decodes the same 32 tokens). The
eight adapters are copies of the shipped ones under eight names (real weights; ``cs`` adapts the encoder too).
``short``: the held-out Czech lines (``--clips``, Debian's fillets-ng-data-cs) with the shipped ``cs`` adapter,
seconds per clip and WER of ``Transcriber`` on 30 s windows and on trimmed input (as its metadata chose), against
faster-whisper int8 on the adapter's merged CTranslate2 export (``merge --ct2``; ``pip install faster-whisper``),
one clip at a time as faster-whisper transcribes, on the same threads.
``auto``: English speech (LibriVox, no adapter) with ``language="auto"``: the base decodes it from the encoder output
routing computed, against encoding it a second time for the decode (what every version before 0.x did).
``graphs``: ``Transcriber(graphs="on")`` (static KV cache, compiled decoder step; ``inference/graphs.py``) against the
same eager decode, fp32 whisper-base (transformers compiles no int8 base), the mixed 4-language batch and base rows
alone, with whether the texts are the same; the first call of each batch size compiles and is left out.
``long``: long real recordings (held-out Czech lines joined, with the ``cs`` adapter; LibriVox English, the base),
timestamped, row-indexed: transformers' long-form loop one input at a time (what every version before 0.x did),
the owned loop (``inference/seek.py``) one input at a time, and all inputs in one batch; seconds, WER against the
joined lines' texts, and whether the batch gave each input's text alone.
All ratios are measured side by side in one run (the machines are noisy).
"""

import argparse
import atexit
import csv
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from whisper_lora.base.hardware import device_summary
from whisper_lora.base.model import load_base_model
from whisper_lora.data.audio import load_audio
from whisper_lora.data.synth import shipped_sentences, synthesize
from whisper_lora.inference.transcriber import Transcriber

ROOT = Path(__file__).resolve().parent.parent
LANGS = ["sw", "id", "cs", "en"]  # en has no adapter: the base serves it
SECTIONS = ("swap", "mixed", "rtf", "adapters", "short", "auto", "graphs", "long")
TOKENS = 32  # tokens every row decodes in the adapters section (forced: the same work whatever the weights)


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def table(title, rows, cols):
    """Print a markdown table (pastes into the README as it is)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--adapters", default=str(Path(__file__).resolve().parent.parent / "adapters"))
    p.add_argument("--json", default="bench/results/inference.json")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--batch", type=int, default=16, help="rows of the adapters section's batch")
    p.add_argument("--clips", type=int, default=120, help="held-out Czech lines of the short section")
    a = p.parse_args()
    print(f"machine: {device_summary()}", flush=True)  # every table below holds for this CPU class
    torch.manual_seed(0)
    results = {"precision": a.precision, "threads": torch.get_num_threads()}

    # audio: two utterances per language -- espeak-ng test voices for sw/id, real speech for cs/en
    audio = {
        lang: [synthesize(x, lang, v) for x, v in zip(shipped_sentences(lang, "test")[:2], ("m2", "f2"), strict=True)]
        for lang in ("sw", "id")
    }
    audio["cs"] = [load_audio(p) for p in sorted(Path("/usr/share/games/fillets-ng/sound").glob("*/cs/*.ogg"))[100:102]]
    audio["en"] = [load_audio(p) for p in sorted((ROOT / "tests" / "assets" / "librivox").glob("*.wav"))[:2]]
    if len(audio["cs"]) < 2:
        raise SystemExit("needs Debian's fillets-ng-data-cs for the Czech clips")
    seconds = sum(len(x) for xs in audio.values() for x in xs) / 16000

    if "short" in a.only:
        results["short"] = short_clips(a)
    if "auto" in a.only:
        results["auto"] = auto_to_base(a, audio["en"])
    if "graphs" in a.only:
        results["graphs"] = compiled_steps(a, audio)
    if "long" in a.only:
        results["long"] = long_recordings(a)
    if "adapters" in a.only:
        results["adapters"] = spread_over_adapters(a, [x for xs in audio.values() for x in xs])
    if "swap" in a.only:
        swap_section(a, results, audio)
    if "mixed" in a.only:
        mixed_section(a, results, audio)
    if "rtf" in a.only:
        rtf_section(a, results, audio, seconds)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": device_summary(), **results}, indent=2))
    print(f"\nwrote {out}")


def swap_section(a, results, audio):
    # 1. swap latency
    swap = Transcriber("whisper-base", a.adapters, precision=a.precision, mode="hotswap", max_new_tokens=48)
    swap.swap("sw"), swap.swap("id")  # both cached in memory
    order = iter(["sw", "id"] * 1000)
    t_hot = timed(lambda: swap.swap(next(order)), a.repeats * 4)
    peft = swap._pool.peft
    entry = swap.registry.get("cs")

    def load_set():
        peft.load_adapter(str(entry.path), adapter_name="bench")
        peft.set_adapter("bench")
        peft.set_adapter("active")
        peft.delete_adapter("bench")

    t_load = timed(load_set, a.repeats)

    def reload_base():
        from whisper_lora.registry.adapter_io import load_adapter

        m = load_base_model("whisper-base", a.precision).model
        load_adapter(m, entry.path)

    t_reload = timed(reload_base, max(1, a.repeats // 2))
    results["swap"] = {
        "hotswap_ms": t_hot * 1e3,
        "load_adapter_set_adapter_ms": t_load * 1e3,
        "reload_base_ms": t_reload * 1e3,
        "speedup_vs_load": t_load / t_hot,
        "speedup_vs_reload": t_reload / t_hot,
    }
    table("Adapter swap latency (median)", [results["swap"]], list(results["swap"]))


def mixed_section(a, results, audio):
    # 2. mixed-language batch vs single-adapter batch vs per-language sub-batches
    t = Transcriber("whisper-base", a.adapters, precision=a.precision, mode="routed", max_new_tokens=48)
    clips = [x for lang in LANGS for x in audio[lang]]
    langs = [lang for lang in LANGS for _ in audio[lang]]
    t_mixed = timed(lambda: t.transcribe_batch(clips, langs), a.repeats)
    t_single = timed(lambda: t.transcribe_batch(clips, "sw"), a.repeats)
    t_seq = timed(lambda: [t.transcribe_batch(audio[lang], lang) for lang in LANGS], a.repeats)
    n = len(clips)
    results["mixed_batch"] = {
        "utterances": n,
        "languages": len(LANGS),
        "mixed_utt_per_s": n / t_mixed,
        "single_adapter_utt_per_s": n / t_single,
        "sequential_utt_per_s": n / t_seq,
        "mixed_vs_single": t_single / t_mixed,
        "mixed_vs_sequential": t_seq / t_mixed,
    }
    table("Mixed-language batch (8 utterances, 4 languages)", [results["mixed_batch"]], list(results["mixed_batch"]))


def rtf_section(a, results, audio, seconds):
    # 3. real-time factor: plain base, unmerged adapter, merged adapter (fp32 base for an exact merge)
    t = Transcriber("whisper-base", a.adapters, precision=a.precision, mode="routed", max_new_tokens=48)
    feats = t.features([x for xs in audio.values() for x in xs])
    base = load_base_model("whisper-base", "fp32").model
    from whisper_lora.registry.adapter_io import load_adapter

    unmerged = load_adapter(load_base_model("whisper-base", "fp32").model, t.registry.get("sw").path).eval()
    merged = (
        load_adapter(load_base_model("whisper-base", "fp32").model, t.registry.get("sw").path).merge_and_unload().eval()
    )

    def run(m):
        # fixed length so the three models do the same amount of work
        with torch.no_grad():
            m.generate(
                input_features=feats.float(), language="sw", task="transcribe", min_new_tokens=32, max_new_tokens=32
            )

    rt = {
        name: timed(lambda m=m: run(m), a.repeats)
        for name, m in (("base", base), ("unmerged", unmerged), ("merged", merged))
    }
    results["rtf"] = {
        "audio_s": seconds,
        **{f"{k}_rtf": v / seconds for k, v in rt.items()},
        "merged_vs_base": rt["merged"] / rt["base"],
        "unmerged_vs_base": rt["unmerged"] / rt["base"],
    }
    table(
        "Real-time factor, fp32, 8 utterances, 32 tokens each (lower is faster)", [results["rtf"]], list(results["rtf"])
    )


def forced_decode(model, feats, tokens: int, adapter_names=None, **generate_kw) -> None:
    """Every row decodes exactly ``tokens`` tokens (the same work whatever the weights): the adapters measurement
    (here and ``gpu_decode.py``); ``adapter_names``: peft's per-row adapters; ``generate_kw``: more for ``generate``."""
    kw = {"adapter_names": adapter_names, **generate_kw} if adapter_names else generate_kw
    with torch.no_grad():
        model.generate(
            input_features=feats, language="en", task="transcribe", min_new_tokens=tokens, max_new_tokens=tokens, **kw
        )


def spread_over_adapters(a, clips) -> dict:
    """4. One batch of ``a.batch`` rows spread over 1, 2, 4 and 8 adapters plus base rows (every 4th row), each
    row decoding ``TOKENS`` tokens: tokens/s of the row-indexed path and of peft's ``adapter_names``, relative to the
    untouched base on the same batch, and to one adapter."""
    from whisper_lora.inference.row_lora import RowLoRA
    from whisper_lora.registry.adapter_io import load_adapter

    loaded = load_base_model("whisper-base", a.precision)
    shipped = sorted(p for p in Path(a.adapters).iterdir() if (p / "adapter_config.json").is_file())
    model = loaded.model
    names = [f"a{k}" for k in range(8)]
    for k, name in enumerate(names):  # eight adapters: the shipped ones again and again under other names
        model = load_adapter(model, shipped[k % len(shipped)], adapter_name=name)
    model.eval()
    rows_lora = RowLoRA(model)  # float64 sums on a CPU (batch-invariant rows)
    rows_fp = RowLoRA(model, exact=False)  # the weights' dtype, as on a GPU
    feats = loaded.processor.feature_extractor(
        [clips[i % len(clips)] for i in range(a.batch)], sampling_rate=16000, return_tensors="pt"
    ).input_features
    feats = feats.to(model.device, next(p for p in model.parameters() if p.is_floating_point()).dtype)

    def run(adapter_names=None):
        forced_decode(model, feats, TOKENS, adapter_names)

    def base():
        with model.disable_adapter():
            run()

    def rows(spread, lora=rows_lora):
        with lora.rows(spread):
            run()

    tokens = a.batch * TOKENS
    t_base = timed(base, a.repeats)
    model.set_adapter(names[0])
    t_one_peft = timed(run, a.repeats)  # one adapter on every row, peft's layers
    out = {"batch": a.batch, "tokens": tokens, "base_tokens_per_s": tokens / t_base}
    table_rows = [{"adapters": 0, "path": "base", "tokens/s": tokens / t_base, "vs base": 1.0, "vs one adapter": ""}]
    table_rows.append(
        {
            "adapters": 1,
            "path": "peft, one adapter (no base rows)",
            "tokens/s": tokens / t_one_peft,
            "vs base": t_base / t_one_peft,
            "vs one adapter": 1.0,
        }
    )
    for k in (1, 2, 4, 8):
        spread = [None if i % 4 == 3 else names[i % k] for i in range(a.batch)]
        t_rows = timed(lambda s=spread: rows(s), a.repeats)
        t_fp = timed(lambda s=spread: rows(s, rows_fp), a.repeats)
        t_peft = timed(lambda s=spread: run([n or "__base__" for n in s]), a.repeats)
        paths = (("row-indexed, float64 sums", t_rows), ("row-indexed, weights' dtype", t_fp))
        for path, t in (*paths, ("peft adapter_names", t_peft)):
            table_rows.append(
                {
                    "adapters": k,
                    "path": path,
                    "tokens/s": tokens / t,
                    "vs base": t_base / t,
                    "vs one adapter": t_one_peft / t,
                }
            )
        out[f"{k}"] = {
            "row_indexed_float64_s": t_rows,
            "row_indexed_s": t_fp,
            "peft_s": t_peft,
            "base_s": t_base,
            "one_adapter_peft_s": t_one_peft,
        }
    table(
        f"A batch of {a.batch} rows spread over k adapters plus base rows (every 4th), {TOKENS} tokens each, "
        f"{a.precision} whisper-base, {torch.get_num_threads()} threads",
        table_rows,
        ["adapters", "path", "tokens/s", "vs base", "vs one adapter"],
    )
    return out


def compiled_steps(a, audio) -> dict:
    """7. Greedy decoding with a static cache and a compiled step (``graphs="on"``) against eager, fp32 whisper-base."""
    kw = dict(precision="fp32", mode="routed", row_indexed=True)
    eager, compiled = (
        Transcriber("whisper-base", a.adapters, **kw),
        Transcriber("whisper-base", a.adapters, graphs="on", **kw),
    )
    clips = [x for lang in LANGS for x in audio[lang]]
    langs = [lang for lang in LANGS for _ in audio[lang]]
    rows, out = [], {}
    for name, xs, ls in (
        ("8 clips, 4 languages (3 adapters + base)", clips, langs),
        ("2 clips, base", audio["en"], "en"),
    ):
        texts = {k: [r.text for r in t.transcribe_batch(xs, ls)] for k, t in (("eager", eager), ("graphs", compiled))}
        times = {
            k: timed(lambda t=t, xs=xs, ls=ls: t.transcribe_batch(xs, ls), a.repeats)
            for k, t in (("eager", eager), ("graphs", compiled))
        }
        same = texts["eager"] == texts["graphs"]
        rows.append(
            {
                "batch": name,
                "eager s": times["eager"],
                "graphs s": times["graphs"],
                "graphs vs eager": times["eager"] / times["graphs"],
                "same text": same,
            }
        )
        out[name] = {**times, "same_text": same}
    table(
        f"Static cache + compiled step (graphs='on') vs eager: fp32 whisper-base, shipped adapters row-indexed, greedy, "
        f"{torch.get_num_threads()} threads; seconds per batch, compile excluded",
        rows,
        ["batch", "eager s", "graphs s", "graphs vs eager", "same text"],
    )
    return out


def long_recordings(a) -> dict:
    """8. Long recordings of two languages (an adapter and the base): transformers' loop, the owned loop one input at a
    time, and the owned loop over all of them at once."""
    import tempfile

    from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest
    from whisper_lora.data.longaudio import join_clips
    from whisper_lora.inference import transcriber as transcriber_module
    from whisper_lora.inference.scoring import score

    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, Path(tempfile.mkdtemp()) / "cs.csv")
    lines = [r for r in csv.DictReader(open(manifest, encoding="utf-8")) if r["split"] == "test"]
    files, langs = [], []
    for k in range(2):  # two Czech files of eight lines each (~40 s)
        part = lines[8 * k : 8 * (k + 1)]
        files.append(join_clips([load_audio(r["audio"]) for r in part], [r["text"] for r in part], pause=1.0))
        langs.append("cs")
    wavs = sorted((ROOT / "tests" / "assets" / "librivox").glob("*.wav"))
    for order in (wavs * 2, list(reversed(wavs)) * 2):  # two English files (~45 s)
        texts = [w.with_suffix(".txt").read_text().strip() for w in order]
        files.append(join_clips([load_audio(w) for w in order], texts, pause=1.0))
        langs.append("en")
    audios = [f.audio for f in files]
    t = Transcriber("whisper-base", a.adapters, precision=a.precision, mode="routed", row_indexed=True)
    owned = transcriber_module.windowed

    def one_by_one():
        return [t.transcribe(x, lang, timestamps=True).text for x, lang in zip(audios, langs, strict=True)]

    def batched():
        return [r.text for r in t.transcribe_batch(audios, langs, timestamps=True)]

    def transformers_loop():
        transcriber_module.windowed = lambda decoding: False  # the per-input path: transformers' generate
        try:
            return one_by_one()
        finally:
            transcriber_module.windowed = owned

    rows, out = [], {}
    alone_texts = None
    for name, run in (
        ("transformers' loop, one input at a time", transformers_loop),
        ("owned loop, one input at a time", one_by_one),
        ("owned loop, all inputs in one batch", batched),
    ):
        started = time.perf_counter()
        texts = run()
        seconds = time.perf_counter() - started
        if name.startswith("owned loop, one"):
            alone_texts = texts
        wer = {
            lang: score(
                [" ".join(f.texts) for f, g in zip(files, langs, strict=True) if g == lang],
                [x for x, g in zip(texts, langs, strict=True) if g == lang],
                lang,
            ).wer
            for lang in ("cs", "en")
        }
        same = "" if alone_texts is None or name.startswith("owned loop, one") else str(texts == alone_texts)
        rows.append({"decoding": name, "s": seconds, "WER cs": wer["cs"], "WER en": wer["en"], "= alone": same})
        out[name] = {"seconds": seconds, "wer": wer, "same_as_alone": same}
    base = rows[0]["s"]
    for r in rows:
        r["vs transformers"] = base / r["s"]
    table(
        f"Long recordings: 2 Czech (cs adapter) + 2 English (base), {sum(len(x) for x in audios) / 16000:.0f} s in all, "
        f"timestamped, {a.precision} whisper-base, row-indexed, {torch.get_num_threads()} threads (speed: x faster)",
        rows,
        ["decoding", "s", "vs transformers", "WER cs", "WER en", "= alone"],
    )
    return out


def auto_to_base(a, clips) -> dict:
    """6. ``auto`` inputs that route to the base: decoded from routing's encoder pass, or encoded again."""
    t = Transcriber("whisper-base", a.adapters, precision=a.precision)
    reuse = t._decodes_from_base_encoding
    rows, out = [], {}
    for batch in (1, 4):
        xs = (clips * 4)[:batch]
        times, texts = {}, {}
        for name, choice in (("decoded from routing's encoding", reuse), ("encoded again", lambda *_: False)):
            t._decodes_from_base_encoding = choice  # the older path, side by side on the same instance
            run = lambda xs=xs: t.transcribe_batch(xs, "auto")  # noqa: E731
            texts[name] = [r.text for r in run()]
            times[name] = timed(run, a.repeats)
        first = next(iter(times.values()))
        for name, seconds in times.items():
            rows.append(
                {"batch": batch, "path": name, "s": seconds, "vs encoded again": seconds / times["encoded again"]}
            )
        same = len(set(map(tuple, texts.values()))) == 1
        out[f"batch {batch}"] = {**times, "same_text": same, "ratio": first / times["encoded again"]}
    t._decodes_from_base_encoding = reuse
    table(
        f"auto inputs the base decodes (English LibriVox clips, {a.precision} whisper-base, {torch.get_num_threads()} "
        "threads; seconds per batch)",
        rows,
        ["batch", "path", "s", "vs encoded again"],
    )
    return out


def short_clips(a) -> dict:
    """5. Short real clips with an adapter trained trimmed: seconds per clip and WER, windows vs trimmed vs
    faster-whisper int8 on the merged CTranslate2 export of the same adapter."""
    import tempfile

    from whisper_lora.data.fillets import DEFAULT_ROOT, build_fillets_manifest
    from whisper_lora.inference.merge import merge_adapter
    from whisper_lora.inference.scoring import score
    from whisper_lora.registry.adapter_io import read_metadata

    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise SystemExit("the short section needs faster-whisper: pip install faster-whisper") from None
    adapter = Path(a.adapters) / "cs"
    pad = read_metadata(adapter).trimmed_input
    if pad is None:
        raise SystemExit(f"{adapter}'s metadata does not choose trimmed input (eval --write-metadata measures it)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-short-"))
    atexit.register(shutil.rmtree, tmp, True)  # the merged model and its export: 370 MB
    manifest, _ = build_fillets_manifest(DEFAULT_ROOT, tmp / "manifest.csv")

    with open(manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"][: a.clips]
    clips = [load_audio(r["audio"]) for r in rows]
    refs = [r["text"] for r in rows]
    print(f"short: {len(clips)} held-out Czech lines, {sum(len(c) for c in clips) / 16000 / len(clips):.2f} s each")
    merge_adapter(adapter, tmp / "merged", ct2_out=tmp / "ct2", ct2_quantization="int8")
    threads = torch.get_num_threads()
    fw = WhisperModel(str(tmp / "ct2"), device="cpu", compute_type="int8", cpu_threads=threads)

    def faster_whisper(xs):
        out = []
        for c in xs:
            segments, _ = fw.transcribe(c, language="cs", beam_size=1, without_timestamps=True)
            out.append(" ".join(s.text.strip() for s in segments))
        return out

    def ours(t, batch, xs):
        out = []
        for i in range(0, len(xs), batch):
            out += [r.text for r in t.transcribe_batch(xs[i : i + batch], "cs")]
        return out

    windows = Transcriber("whisper-base", a.adapters, precision=a.precision, trimmed=False)
    trimmed = Transcriber("whisper-base", a.adapters, precision=a.precision)
    paths = [
        ("faster-whisper int8, merged export, one clip at a time", faster_whisper),
        ("whisper-lora, 30 s windows, batch 8", lambda xs: ours(windows, 8, xs)),
        (f"whisper-lora, trimmed (clip + {pad:g} s), batch 8", lambda xs: ours(trimmed, 8, xs)),
        (f"whisper-lora, trimmed (clip + {pad:g} s), one clip at a time", lambda xs: ours(trimmed, 1, xs)),
    ]
    out, table_rows = {"clips": len(clips), "trim_padding": pad}, []
    for name, fn in paths:
        fn(clips[:8])  # warm-up
        t = time.perf_counter()
        hyps = fn(clips)
        seconds = (time.perf_counter() - t) / len(clips)
        s = score(refs, hyps, "cs")
        out[name] = {"s_per_clip": seconds, "wer": s.wer, "cer": s.cer}
        table_rows.append({"path": name, "s/clip": seconds, "WER": s.wer, "CER": s.cer})
    for r in table_rows:
        r["vs faster-whisper"] = r["s/clip"] / table_rows[0]["s/clip"]
    table(
        f"Short real clips with the shipped cs adapter ({len(clips)} held-out Czech lines, {a.precision} whisper-base, "
        f"{threads} threads; seconds per clip, lower is faster)",
        table_rows,
        ["path", "s/clip", "vs faster-whisper", "WER", "CER"],
    )
    return out


if __name__ == "__main__":
    main()
