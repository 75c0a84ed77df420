"""whisper-lora: per-language LoRA adapters for OpenAI Whisper."""

from .adapter_io import AdapterMetadata, load_adapter, read_metadata, save_adapter
from .config import TrainConfig
from .ct2_import import convert_ct2_checkpoint
from .data.readers import load_corpus, read_commonvoice, read_dvoice, read_manifest
from .data.records import BadRows, Utterance
from .errors import (
    AdapterError,
    ConfigError,
    ConversionError,
    DataError,
    ModelNotFoundError,
    WhisperLoraError,
)
from .evaluate import compare_base_and_adapter, score
from .formats import render
from .languages import resolve_language
from .longform import DecodeOptions, Segment, Word
from .lora import LoraSpec, apply_lora, count_parameters
from .merge import MergeReport, export_ctranslate2, merge_adapter
from .model import load_base_model, silence_bitsandbytes
from .registry import AdapterEntry, AdapterRegistry
from .resolve import resolve_base
from .train import TrainResult, train_adapter
from .transcriber import Transcriber, Transcription

silence_bitsandbytes()  # before bitsandbytes is first imported, so its import-time notice is dropped too

__all__ = [
    "AdapterEntry",
    "AdapterRegistry",
    "MergeReport",
    "Transcriber",
    "Transcription",
    "DecodeOptions",
    "Segment",
    "Word",
    "render",
    "export_ctranslate2",
    "merge_adapter",
    "AdapterError",
    "AdapterMetadata",
    "BadRows",
    "ConfigError",
    "ConversionError",
    "DataError",
    "LoraSpec",
    "ModelNotFoundError",
    "TrainConfig",
    "TrainResult",
    "Utterance",
    "WhisperLoraError",
    "apply_lora",
    "compare_base_and_adapter",
    "convert_ct2_checkpoint",
    "count_parameters",
    "load_adapter",
    "load_base_model",
    "load_corpus",
    "read_commonvoice",
    "read_dvoice",
    "read_manifest",
    "read_metadata",
    "resolve_base",
    "resolve_language",
    "save_adapter",
    "score",
    "train_adapter",
]
