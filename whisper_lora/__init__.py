"""whisper-lora: per-language LoRA adapters for OpenAI Whisper."""

from whisper_lora.base.ct2_import import convert_ct2_checkpoint
from whisper_lora.base.model import load_base_model, silence_bitsandbytes
from whisper_lora.base.resolve import resolve_base
from whisper_lora.data.readers import load_corpus, read_commonvoice, read_dvoice, read_manifest
from whisper_lora.data.records import BadRows, Utterance
from whisper_lora.errors import (
    AdapterError,
    ConfigError,
    ConversionError,
    DataError,
    ModelNotFoundError,
    WhisperLoraError,
)
from whisper_lora.inference.decode import Decoding
from whisper_lora.inference.formats import render
from whisper_lora.inference.longform import DecodeOptions, Segment, Word
from whisper_lora.inference.merge import MergeReport, export_ctranslate2, merge_adapter
from whisper_lora.inference.request import Request, RequestError, Transcription
from whisper_lora.inference.scoring import compare_base_and_adapter, score
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.languages import resolve_language
from whisper_lora.registry.adapter_io import AdapterMetadata, load_adapter, read_metadata, save_adapter
from whisper_lora.registry.catalog import AdapterEntry, AdapterRegistry
from whisper_lora.registry.publish import asr_pipeline, push_adapter
from whisper_lora.results import Comparison, Scores
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.lora import LoraSpec, apply_lora, count_parameters
from whisper_lora.training.train import TrainResult, train_adapter

silence_bitsandbytes()  # before bitsandbytes is first imported, so its import-time notice is dropped too

__all__ = [
    "AdapterEntry",
    "Comparison",
    "Decoding",
    "Scores",
    "asr_pipeline",
    "push_adapter",
    "AdapterRegistry",
    "MergeReport",
    "Request",
    "RequestError",
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
