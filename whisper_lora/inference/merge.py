"""Merge one adapter into its base for single-language deployment; optional CTranslate2 export."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from whisper_lora.atomic import atomic_directory
from whisper_lora.errors import ConfigError
from whisper_lora.registry.adapter_io import load_adapter, read_metadata


@dataclass
class MergeReport:
    """What merging changed, measured on a probe batch and optionally on a data set."""

    out: str  # merged checkpoint directory
    precision: str  # precision of the base the adapter was merged into
    max_logit_diff: float  # max |merged - unmerged| logits on the probe batch
    scores: dict | None = None  # {"unmerged": {...}, "merged": {...}} WER/CER when data was given
    ct2: str | None = None  # CTranslate2 export directory

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _probe_logits(model, processor, features: torch.Tensor) -> torch.Tensor:
    sot = processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>"])
    dec = torch.tensor([sot] * features.shape[0], device=features.device)
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=dec).logits.float()


def merge_adapter(
    adapter_dir: str | Path,
    out: str | Path,
    base: str | None = None,
    precision: str = "fp32",
    examples=None,
    ct2_out: str | Path | None = None,
    ct2_quantization: str | None = None,
) -> MergeReport:
    """Write a standalone transformers checkpoint with the adapter merged in.

    ``precision="fp32"`` (or ``bf16``) merges exactly; ``int8`` merges into quantised weights
    and the report's logit and WER differences show the rounding this costs. ``examples``
    (featurised) adds WER/CER of the unmerged and merged models side by side.
    """
    from whisper_lora.base.model import load_base_model
    from whisper_lora.inference.scoring import evaluate_examples

    if precision not in ("fp32", "bf16", "int8"):
        raise ConfigError(
            f"cannot merge into {precision!r}; valid: bf16, fp32, int8 (nf4 merges are lossy and unsupported)"
        )
    meta = read_metadata(adapter_dir)
    loaded = load_base_model(base or meta.base["name"], precision)
    processor = loaded.processor
    peft = load_adapter(loaded.model, adapter_dir, tokenizer=processor.tokenizer).eval()  # the tokenizer gets its token
    dtype = next(p.dtype for p in peft.parameters() if p.is_floating_point())
    probe = examples[:4] if examples else None
    feats = torch.stack([e.input_features for e in probe]) if probe else torch.randn(2, 80, 3000) * 0.5
    feats = feats.to(peft.device if hasattr(peft, "device") else "cpu", dtype)
    before = _probe_logits(peft, processor, feats)
    scores = None
    if examples:
        unmerged, _ = evaluate_examples(peft, processor, examples, meta.language, token=meta.whisper_language)
    merged = peft.merge_and_unload()
    after = _probe_logits(merged, processor, feats)
    if examples:
        merged_scores, _ = evaluate_examples(merged, processor, examples, meta.language, token=meta.whisper_language)
        scores = {"unmerged": unmerged.to_dict(), "merged": merged_scores.to_dict()}
    out = Path(out)
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        processor.feature_extractor.save_pretrained(tmp)  # preprocessor_config.json, which faster-whisper reads
        (tmp / "whisper_lora_merge.json").write_text(
            json.dumps(
                {"adapter": str(adapter_dir), "precision": precision, "adapter_metadata": json.loads(meta.to_json())},
                indent=2,
            )
        )
    report = MergeReport(str(out), precision, float((after - before).abs().max()), scores)
    if ct2_out is not None:
        report.ct2 = str(export_ctranslate2(out, ct2_out, ct2_quantization))
    return report


def export_ctranslate2(checkpoint: str | Path, out: str | Path, quantization: str | None = None) -> Path:
    """Convert a (merged, full-precision) transformers checkpoint with ctranslate2's own converter."""
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError("CTranslate2 export needs the ctranslate2 package: pip install 'whisper-lora[ct2]'") from None
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    if "quantization_config" in cfg:
        raise ConfigError(
            "export a checkpoint merged at fp32 or bf16; CTranslate2 quantises on its own (--ct2-quantization)"
        )
    out = Path(out)
    with atomic_directory(out) as tmp:
        files = [f for f in ("tokenizer.json", "preprocessor_config.json") if (Path(checkpoint) / f).exists()]
        converter = ctranslate2.converters.TransformersConverter(str(checkpoint), copy_files=files)
        converter.convert(str(tmp), quantization=quantization, force=True)
    return out
