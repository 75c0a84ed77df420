"""``whisper-lora merge``: one adapter merged into its base, a standalone checkpoint (and CTranslate2)."""

from __future__ import annotations

from whisper_lora.cli.options import run_precision


def add_parser(sub) -> None:
    m = sub.add_parser("merge", help="merge an adapter into its base: a standalone checkpoint")
    m.add_argument("--adapter", required=True, help="adapter directory to merge")
    m.add_argument("--out", required=True, help="checkpoint directory to write")
    m.add_argument("--base", help="base model (default: the one in the adapter's metadata)")
    m.add_argument(
        "--precision", choices=["fp32", "bf16", "int8"], help="merge into this base precision (default fp32)"
    )
    m.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    m.add_argument("--data", help="corpus whose test split measures WER unmerged vs merged")
    m.add_argument("--limit", type=int, default=32, help="test utterances used with --data (default 32)")
    m.add_argument("--ct2", help="also export the merged model to CTranslate2 here")
    m.add_argument("--ct2-quantization", help="CTranslate2 quantization (int8, float16, ...)")
    m.set_defaults(fn=run)


def run(a) -> int:
    from whisper_lora.inference.merge import merge_adapter
    from whisper_lora.registry.adapter_io import read_metadata

    examples = None
    if a.data:
        from whisper_lora.base.language_tokens import add_token_text
        from whisper_lora.base.model import load_base_model
        from whisper_lora.cli.eval import examples as read_examples

        meta = read_metadata(a.adapter)
        processor = load_base_model(a.base or meta.base["name"], "fp32", "cpu").processor
        if meta.new_token:  # labels start with the adapter's token
            add_token_text(processor.tokenizer, meta.new_token)
        a.json = True  # no progress bars around the JSON report
        examples = read_examples(a, meta.language, processor, "test", meta.whisper_language)
    report = merge_adapter(a.adapter, a.out, a.base, run_precision(a, "fp32"), examples, a.ct2, a.ct2_quantization)
    print(report.to_json())
    return 0
