"""Hub-ready adapter directories: a public base id in ``adapter_config.json`` and a model card.

peft writes the base's local path into ``base_model_name_or_path`` (for whisper-lora's offline
conversion, a directory in the builder's cache) and a blank card template. ``make_hub_ready``
replaces both from ``whisper_lora.json``, so the directory can be copied to any machine,
uploaded (``push_adapter``) and loaded with plain ``PeftModel.from_pretrained``. The card is
built with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData`` / ``EvalResult``, so the hub
reads its language, base model and held-out results as it reads any other card.
"""

from __future__ import annotations

import json
from pathlib import Path

from whisper_lora.atomic import atomic_write_text, target_lock
from whisper_lora.base.resolve import HUB_IDS
from whisper_lora.languages import resolve_language
from whisper_lora.registry.metadata import PEFT_FILES, AdapterMetadata, read_metadata
from whisper_lora.results import Comparison

CARD_FILE = "README.md"


def public_base_id(name: str) -> str:
    """The hub id of a base: ``whisper-base`` and the offline conversion of it -> ``openai/whisper-base``."""
    short = Path(str(name)).name if Path(str(name)).is_absolute() else str(name)
    short = short.removeprefix("openai/")
    return HUB_IDS.get(short, str(name))


def card_data(meta: AdapterMetadata, base_id: str):
    """The card's metadata block: language, base model, task and the adapter's held-out results."""
    from huggingface_hub import EvalResult, ModelCardData

    lang = resolve_language(meta.language)
    result = Comparison.from_dict(meta.metrics)
    evals = []
    if result is not None and result.adapter is not None:
        common = dict(
            task_type="automatic-speech-recognition",
            task_name="Speech recognition",
            dataset_type="custom",
            dataset_name=str(meta.data.get("source", "held-out")),
            dataset_split=result.split or "test",
        )
        evals = [
            EvalResult(metric_type="wer", metric_value=result.adapter.wer, metric_name="WER (normalised)", **common),
            EvalResult(metric_type="cer", metric_value=result.adapter.cer, metric_name="CER (normalised)", **common),
        ]
    return ModelCardData(
        model_name=f"whisper-lora-{meta.language}",
        language=[lang.code],  # the language itself (``ary``), not the token it is decoded with
        license="mit",
        library_name="peft",
        base_model=base_id,
        pipeline_tag="automatic-speech-recognition",
        tags=["whisper", "lora", "peft", "whisper-lora", f"language:{meta.language}"],
        eval_results=evals or None,
    )


def _results_table(meta: AdapterMetadata) -> str:
    result = Comparison.from_dict(meta.metrics)
    if result is None:
        return "| (not evaluated) | - | - | - |"
    rows = [("base", result.base), ("adapter", result.adapter)]
    if result.trimmed is not None:  # an encoder trained trimmed, scored both ways
        rows = [rows[0], ("adapter (30 s windows)", result.adapter), ("adapter, trimmed input", result.trimmed)]
    lines = [f"| {name} | {s.wer:.4f} | {s.cer:.4f} | {s.n} |" for name, s in rows if s is not None]
    change = result.change("cer")
    if change is not None:
        lines.append(f"| CER change | | {change:+.1%} | |")
    return "\n".join(lines)


def _body(meta: AdapterMetadata, base_id: str) -> str:
    lang = resolve_language(meta.language)
    t, d = meta.training, meta.data
    how = meta.metrics.get("precision")
    how = f", base in {how}, decoded as `whisper-lora transcribe` decodes" if how else ""
    return f"""# whisper-lora adapter: {lang.name} (`{meta.language}`) on {base_id}

A LoRA adapter trained with [whisper-lora](https://pypi.org/project/whisper-lora/) for {lang.name}; {_token_note(meta)}

## Training data

- source: `{d.get("source", "?")}`
- {d.get("train_utterances", "?")} utterances, {d.get("train_seconds", "?")} s of audio (fingerprint `{d.get("fingerprint", "?")}`)
- LoRA r={meta.lora.get("r")}, alpha={meta.lora.get("alpha")} on {", ".join(meta.lora.get("targets", []))} of
  {", ".join(meta.lora.get("stacks", []))}{_cross_note(meta.lora)}; {t.get("steps", "?")} steps, batch {t.get("batch_size", "?")},
  lr {t.get("learning_rate", "?")}, base in {t.get("precision", meta.base.get("precision", "?"))},
  {t.get("minutes", "?")} min{_trim_note(meta)}

## Held-out results ({meta.metrics.get("split") or "test"} split, normalised WER/CER{how})

| model | WER | CER | utterances |
|---|---|---|---|
{_results_table(meta)}

## Usage

With `transformers.pipeline` (the language token must be forced: `<|{meta.whisper_language}|>`):

```python
{usage_code(meta, base_id)}
print(asr("clip.wav", generate_kwargs={{"language": "<|{meta.whisper_language}|>", "task": "transcribe"}})["text"])
```

or, serving many languages from one base: `whisper_lora.Transcriber("{base_id}", adapters="adapters")`.

Base weights fingerprint: `{meta.base.get("fingerprint", "?")}` (whisper-lora refuses the adapter on another base).
"""


def _token_note(meta: AdapterMetadata) -> str:
    token, how = f"<|{meta.whisper_language}|>", meta.language_token
    if meta.new_token:
        return (
            f"it adds the language token `{token}` to Whisper (`added_tokens.json`; its embedding row, started from "
            f"`<|{how.get('proxy')}|>`'s, is trained in `adapter_model.safetensors`)."
        )
    if how.get("mode") == "proxy":
        return f"Whisper has no token for it: it is decoded with `{token}` (proxy from the {how.get('proxy_source')})."
    return f"Whisper decodes it with the `{token}` language token."


def usage_code(meta: AdapterMetadata, base_id: str, adapter_dir: str = "path/to/this/directory") -> str:
    """Python that loads the adapter with plain transformers and peft and builds the pipeline ``asr`` (an adapter
    with a new language token first gives the base and its tokenizer that token, at the id it was trained with)."""
    lines = [
        "from peft import PeftModel",
        "from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline",
        "",
        f'processor = WhisperProcessor.from_pretrained("{base_id}")',
        f'base = WhisperForConditionalGeneration.from_pretrained("{base_id}")',
    ]
    if meta.new_token:
        token = f"<|{meta.new_token}|>"
        lines += [
            f'processor.tokenizer.add_tokens(["{token}"], special_tokens=True)  # added_tokens.json',
            "base.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)",
            f'token_id = processor.tokenizer.convert_tokens_to_ids("{token}")',
            f'base.generation_config.lang_to_id["{token}"] = token_id',
            "base.generation_config.suppress_tokens = [token_id, *base.generation_config.suppress_tokens]  # not text",
        ]
    lines += [
        f'model = PeftModel.from_pretrained(base, "{adapter_dir}").merge_and_unload()',
        'asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,',
        "               feature_extractor=processor.feature_extractor)",
    ]
    return "\n".join(lines)


def model_card(meta: AdapterMetadata, base_id: str):
    """The adapter's ``huggingface_hub.ModelCard`` (metadata block + body)."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\n{card_data(meta, base_id).to_yaml()}\n---\n\n{_body(meta, base_id)}")


def _cross_note(lora: dict) -> str:
    cross = lora.get("cross_targets")
    return f" (cross-attention: {', '.join(cross)})" if cross and "decoder_cross" in lora.get("stacks", []) else ""


def _trim_note(meta: AdapterMetadata) -> str:
    pad = meta.trim_padding
    if pad is None:
        return ""
    return (
        f"; encoder trained on each clip + {pad:g} s instead of 30 s windows (`whisper-lora transcribe` encodes clips "
        "so where that scored at least as well on the held-out split; any other runtime decodes 30 s windows)"
    )


def write_hub_files(adapter_dir: str | Path, meta: AdapterMetadata) -> str:
    """Set the public base id in ``adapter_config.json`` and write the card (in place, atomically per file);
    returns the base id."""
    adapter_dir = Path(adapter_dir)
    base_id = public_base_id(meta.base.get("name", ""))
    config_path = adapter_dir / PEFT_FILES[0]
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(adapter_dir / CARD_FILE, str(model_card(meta, base_id)))
    return base_id


def make_hub_ready(adapter_dir: str | Path) -> str:
    """Regenerate an existing adapter directory's base id and card from its metadata, holding the adapter's lock
    (``atomic.target_lock``: never into a replacement written meanwhile); returns the base id."""
    with target_lock(adapter_dir):
        return write_hub_files(adapter_dir, read_metadata(adapter_dir))
