"""``whisper-lora adapters list|card|push|vllm-args``: inspect and publish the registry."""

from __future__ import annotations

import json
import sys

from whisper_lora.cli.options import add_registry, parse_languages
from whisper_lora.registry.language_profile import PROFILE_FILE


def add_parser(sub) -> None:
    ad = sub.add_parser("adapters", help="inspect the adapter registry")
    ad_sub = ad.add_subparsers(dest="action", required=True, metavar="{list,card,profile,push,vllm-args}")
    ls = ad_sub.add_parser("list", help="adapters by language with their held-out WER/CER")
    add_registry(ls)
    ls.add_argument("--json", action="store_true", help="one JSON line per adapter (broken ones with a reason)")
    ls.add_argument("--base", help="also check compatibility with this base (name, path or hub id)")
    ls.add_argument("--strict", action="store_true", help="exit with status 1 when any adapter is broken")
    ls.set_defaults(fn=run_list)
    cd = ad_sub.add_parser(
        "card", help="regenerate hub-ready files: public base id in adapter_config.json, README card"
    )
    add_registry(cd)
    cd.set_defaults(fn=run_card)
    pr = ad_sub.add_parser(
        "profile", help="add the language profile auto routing needs to an adapter trained without one"
    )
    pr.add_argument("adapter", help="adapter directory (e.g. adapters/sw)")
    pr.add_argument("--data", required=True, help="the adapter's training corpus (any format train reads)")
    pr.add_argument("--format", default="auto", help="corpus format: auto, dvoice, commonvoice, manifest, audiofolder")
    pr.add_argument("--split", default="train", help="split to profile (default: train)")
    pr.set_defaults(fn=run_profile)
    pu = ad_sub.add_parser("push", help="upload one adapter to the Hugging Face hub (huggingface_hub.upload_folder)")
    pu.add_argument("adapter", help="adapter directory (e.g. adapters/sw)")
    pu.add_argument("repo_id", help="hub model repo, <user or organisation>/<name>; created when missing")
    pu.add_argument("--private", action="store_true", help="create the repo private")
    pu.add_argument("--revision", help="branch to push to (default: main)")
    pu.add_argument("--token", help="hub token (default: $HF_TOKEN or the `hf auth login` token)")
    pu.set_defaults(fn=run_push)
    va = ad_sub.add_parser(
        "vllm-args", help="arguments of `vllm serve` for the registry (refuses adapters vLLM cannot apply exactly)"
    )
    add_registry(va)
    va.add_argument("--languages", help="comma-separated adapters to serve (default: all)")
    va.add_argument("--base", help="model argument for vLLM (default: the adapters' public base id)")
    va.add_argument(
        "--base-adapter",
        help="write an all-zero adapter here and serve it as `base` (on CPU, request `base` instead of the model)",
    )
    va.add_argument("--command", action="store_true", help="print the whole `vllm serve ...` command")
    va.set_defaults(fn=run_vllm_args)


def run_push(a) -> int:
    from whisper_lora.registry.publish import push_adapter

    print(push_adapter(a.adapter, a.repo_id, token=a.token, private=a.private, revision=a.revision))
    return 0


def run_profile(a) -> int:
    from whisper_lora.atomic import target_lock
    from whisper_lora.base.model import load_base_model
    from whisper_lora.data.readers import load_corpus
    from whisper_lora.inference.language_id import profile_utterances
    from whisper_lora.registry.adapter_io import validate_adapter
    from whisper_lora.registry.language_profile import write_profile

    meta = validate_adapter(a.adapter)
    records, _ = load_corpus(a.data, meta.language, a.format, splits=[a.split])
    base = load_base_model(meta.base.get("name") or "whisper-base", "int8", "auto", 0.0)  # as Transcriber loads it
    profile = profile_utterances(base.model, base.processor, [r.audio for r in records[a.split]], base.info, True)
    with target_lock(a.adapter):  # never into a replacement written meanwhile
        print(f"{write_profile(a.adapter, profile)}: {profile.utterances} utterances of {a.split}")
    return 0


def run_card(a) -> int:
    from whisper_lora.registry.card import make_hub_ready
    from whisper_lora.registry.catalog import AdapterRegistry

    good, broken = AdapterRegistry(a.adapters).scan()
    for e in good:
        print(f"{e.path}: base {make_hub_ready(e.path)}, card written")
    for b in broken:
        print(f"{b.name}: broken, left as is ({b.reason})")
    return 0


def run_vllm_args(a) -> int:
    from whisper_lora.registry.catalog import AdapterRegistry
    from whisper_lora.serving.vllm.export import plan_vllm

    langs = parse_languages(a.languages)
    plan = plan_vllm(AdapterRegistry(a.adapters), langs, base=a.base, base_adapter=a.base_adapter)
    print(plan.command() if a.command else " ".join(plan.serve_args()))
    return 0


def _row(e) -> dict:
    m = e.metadata.metrics
    return {
        "language": e.name,
        "whisper_language": e.whisper_language,
        "path": str(e.path),
        "base": e.metadata.base.get("name"),
        "rank": e.metadata.lora.get("r"),
        "size_mb": round(sum(f.stat().st_size for f in e.path.iterdir()) / 1e6, 2),
        "routing": "router" if (e.path / PROFILE_FILE).is_file() else "whisper-lid",
        "test_wer": (m.get("adapter") or {}).get("wer"),
        "base_test_wer": (m.get("base") or {}).get("wer"),
        "test_cer": (m.get("adapter") or {}).get("cer"),
        "base_test_cer": (m.get("base") or {}).get("cer"),
    }


def run_list(a) -> int:
    from whisper_lora.registry.catalog import AdapterRegistry

    reg = AdapterRegistry(a.adapters)
    if a.base:
        from whisper_lora.base.model import describe_base
        from whisper_lora.base.resolve import resolve_base

        reg = reg.with_base(describe_base(a.base, resolve_base(a.base), "int8"))
    good, broken = reg.scan()
    rows = [_row(e) for e in good]
    if a.json:
        for r in rows:
            print(json.dumps(r))
        for b in broken:
            print(json.dumps({"language": b.name, "broken": True, **b.to_dict()}))
    else:
        print(
            f"{'lang':<6}{'whisper':<9}{'base':<14}{'r':>4}{'MB':>7}{'WER':>8}{'base WER':>10}{'CER':>8}{'base CER':>10}"
            f"  routing"
        )
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"  # noqa: E731
        for r in rows:
            print(
                f"{r['language']:<6}{r['whisper_language']:<9}{str(r['base']):<14}{r['rank']:>4}{r['size_mb']:>7}"
                f"{fmt(r['test_wer']):>8}{fmt(r['base_test_wer']):>10}{fmt(r['test_cer']):>8}{fmt(r['base_test_cer']):>10}"
                f"  {r['routing']}"
            )
        if broken:
            print(f"\nbroken ({len(broken)}), left out:")
            for b in broken:
                print(f"{b.name:<6}{b.reason}")
    if broken and a.strict:
        print(f"whisper-lora: error: {len(broken)} broken adapter(s) in {reg.root}", file=sys.stderr)
        return 1
    return 0
