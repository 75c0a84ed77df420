"""Hub-ready adapter directories: a public base id in ``adapter_config.json`` and a generated model card.

peft writes the base's local path into ``base_model_name_or_path`` (for whisper-lora's offline
conversion, a directory in the builder's cache) and a blank card template. ``make_hub_ready``
replaces both from ``whisper_lora.json``, so the directory can be copied to any machine or
uploaded with ``huggingface_hub.upload_folder`` and loaded with plain ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

from whisper_lora.atomic import atomic_write_text
from whisper_lora.base.resolve import HUB_IDS
from whisper_lora.languages import resolve_language
from whisper_lora.registry.metadata import PEFT_FILES, AdapterMetadata, read_metadata

CARD_FILE = "README.md"


def public_base_id(name: str) -> str:
    """The hub id of a base: ``whisper-base`` and the offline conversion of it -> ``openai/whisper-base``."""
    short = Path(str(name)).name if Path(str(name)).is_absolute() else str(name)
    short = short.removeprefix("openai/")
    return HUB_IDS.get(short, str(name))


def _metric_rows(meta: AdapterMetadata) -> list[tuple[str, dict]]:
    m = meta.metrics or {}
    return [(k, m[k]) for k in ("base", "adapter") if isinstance(m.get(k), dict)]


def model_card(meta: AdapterMetadata, base_id: str) -> str:
    """The card: YAML front matter the hub reads (language, base, task, metrics) and a short body."""
    import yaml

    lang = resolve_language(meta.language)
    adapter = dict(_metric_rows(meta)).get("adapter")
    front = {
        "language": [lang.whisper],
        "license": "mit",
        "library_name": "peft",
        "base_model": base_id,
        "pipeline_tag": "automatic-speech-recognition",
        "tags": ["whisper", "lora", "peft", "whisper-lora", f"language:{meta.language}"],
    }
    if adapter:
        split = meta.metrics.get("split", "test")
        front["model-index"] = [
            {
                "name": f"whisper-lora-{meta.language}",
                "results": [
                    {
                        "task": {"type": "automatic-speech-recognition", "name": "Speech recognition"},
                        "dataset": {"name": str(meta.data.get("source", "held-out")), "type": "custom", "split": split},
                        "metrics": [
                            {"type": "wer", "value": adapter["wer"], "name": "WER (normalised)"},
                            {"type": "cer", "value": adapter["cer"], "name": "CER (normalised)"},
                        ],
                    }
                ],
            }
        ]
    rows = "\n".join(
        f"| {name} | {r.get('wer', '-')} | {r.get('cer', '-')} | {r.get('n', meta.metrics.get('n', '-'))} |"
        for name, r in _metric_rows(meta)
    )
    t = meta.training
    body = f"""# whisper-lora adapter: {lang.name} (`{meta.language}`) on {base_id}

A LoRA adapter trained with [whisper-lora](https://pypi.org/project/whisper-lora/) for {lang.name}; Whisper decodes it
with its `<|{meta.language if meta.language == lang.whisper else lang.whisper}|>` language token.

## Training data

- source: `{meta.data.get("source", "?")}`
- {meta.data.get("train_utterances", "?")} utterances, {meta.data.get("train_seconds", "?")} s of audio
  (fingerprint `{meta.data.get("fingerprint", "?")}`)
- LoRA r={meta.lora.get("r")}, alpha={meta.lora.get("alpha")} on {", ".join(meta.lora.get("targets", []))} of
  {", ".join(meta.lora.get("stacks", []))}{_cross_note(meta.lora)}; {t.get("steps", "?")} steps, batch {t.get("batch_size", "?")},
  lr {t.get("learning_rate", "?")}, base in {t.get("precision", meta.base.get("precision", "?"))},
  {t.get("minutes", "?")} min{_trim_note(t)}

## Held-out results ({meta.metrics.get("split", "test")} split, normalised WER/CER)

| model | WER | CER | utterances |
|---|---|---|---|
{rows or "| (not evaluated) | - | - | - |"}

## Usage

```python
from peft import PeftModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor

base = WhisperForConditionalGeneration.from_pretrained("{base_id}")
model = PeftModel.from_pretrained(base, "path/to/this/directory")
processor = WhisperProcessor.from_pretrained("{base_id}")
```

or, serving many languages from one base: `whisper_lora.Transcriber("{base_id}", adapters="adapters")`.

Base weights fingerprint: `{meta.base.get("fingerprint", "?")}` (whisper-lora refuses the adapter on another base).
"""
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def _cross_note(lora: dict) -> str:
    cross = lora.get("cross_targets")
    return f" (cross-attention: {', '.join(cross)})" if cross and "decoder_cross" in lora.get("stacks", []) else ""


def _trim_note(training: dict) -> str:
    pad = training.get("trim_padding")
    if not isinstance(pad, (int, float)):
        return ""
    return f"; encoder trained on each clip + {pad:g} s instead of 30 s windows (decode on 30 s windows as usual)"


def write_hub_files(adapter_dir: str | Path, meta: AdapterMetadata) -> str:
    """Set the public base id in ``adapter_config.json`` and write the card (in place, atomically per file);
    returns the base id."""
    adapter_dir = Path(adapter_dir)
    base_id = public_base_id(meta.base.get("name", ""))
    config_path = adapter_dir / PEFT_FILES[0]
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(adapter_dir / CARD_FILE, model_card(meta, base_id))
    return base_id


def make_hub_ready(adapter_dir: str | Path) -> str:
    """Regenerate an existing adapter directory's base id and card from its metadata; returns the base id."""
    return write_hub_files(adapter_dir, read_metadata(adapter_dir))
