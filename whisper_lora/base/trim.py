"""Run Whisper's encoder on a clip's own frames instead of a 30 s window.

Whisper always encodes 30 s: a 4 s clip is 3000 log-mel frames of which ~87% are padding, and the
encoder (self-attention over 1500 positions) dominates a training step on a CPU. Its positional
embeddings are absolute, so a shorter input can use the first ``T/2`` of them; transformers refuses
any input that is not 3000 frames long. ``allow_short_inputs`` is the one place that lifts that
check, for one model instance: inputs of exactly 3000 frames still take transformers' own forward,
shorter ones run the same computation with the positional embeddings sliced to their length.

Training: ``TrainConfig.trim_padding`` (``auto``: 1 s where every encoder layer is adapted) runs each training batch
on its longest clip plus that much padding, about 4.5x faster per step on a CPU. Inference: such an adapter is scored
on the held-out split both on 30 s windows and trimmed (each clip at its own length plus the padding, ``trimmed_frames``),
and ``Transcriber`` encodes its short inputs trimmed only where that scored at least as well
(``AdapterMetadata.trimmed_input``; rows of different lengths decode together, ``decode.Inputs``). The base itself,
never trained on trimmed input, loses on it (CER 0.330 -> 0.406 on held-out real Czech), and keeps 30 s windows, as do
long-form and timestamped decoding, merged checkpoints and CTranslate2 exports.
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

FRAMES_PER_SECOND = 100  # log-mel hop of 10 ms
WINDOW_FRAMES = 3000  # 30 s
_BUCKET = 50  # lengths are rounded up to 0.5 s, so batches see a handful of distinct shapes


def trimmed_frames(n_samples: int, padding_s: float, hop: int = 160) -> int:
    """Log-mel frames kept for a clip of ``n_samples`` (16 kHz) plus ``padding_s`` seconds, capped at 3000."""
    frames = math.ceil(n_samples / hop) + round(padding_s * FRAMES_PER_SECOND)
    return min(WINDOW_FRAMES, math.ceil(frames / _BUCKET) * _BUCKET)


def embed(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The encoder's input to its first layer: convolutions plus as many positional embeddings as frames."""
    x = nn.functional.gelu(encoder.conv1(features))
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    return x + encoder.embed_positions.weight[: x.shape[1]]


def _short_forward(self, input_features, attention_mask=None, **kwargs):
    from transformers.modeling_outputs import BaseModelOutput

    frames = input_features.shape[-1]
    if frames == WINDOW_FRAMES or kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        return self._whisper_lora_full_forward(input_features, attention_mask=attention_mask, **kwargs)
    if frames > WINDOW_FRAMES or frames % 2:
        raise ValueError(f"encoder input of {frames} log-mel frames; expected an even count up to {WINDOW_FRAMES}")
    x = nn.functional.dropout(embed(self, input_features), p=self.dropout, training=self.training)
    return BaseModelOutput(last_hidden_state=encode_upper(self, x, 0))


def encode_upper(encoder: nn.Module, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """The encoder's output from the input of layer ``start`` (returns ``hidden`` when ``start`` is the layer count)."""
    if start >= len(encoder.layers):
        return hidden
    for layer in encoder.layers[start:]:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def find_encoder(model) -> nn.Module:
    """The ``WhisperEncoder`` inside a Whisper model, a PeftModel around one, or the encoder itself."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if isinstance(model, WhisperEncoder):
        return model
    for m in model.modules():
        if isinstance(m, WhisperEncoder):
            return m
    raise TypeError(f"no WhisperEncoder in {type(model).__name__}")


def allow_short_inputs(model) -> None:
    """Let the model's encoder accept inputs shorter than 30 s (idempotent; see the module docstring)."""
    encoder = find_encoder(model)
    if "_whisper_lora_full_forward" not in vars(encoder):
        encoder._whisper_lora_full_forward = encoder.forward
        encoder.forward = types.MethodType(_short_forward, encoder)


def trim_batch(features: torch.Tensor, n_samples: list[int], padding_s: float | None) -> torch.Tensor:
    """A batch of 3000-frame features cut to its longest clip plus ``padding_s`` (None: unchanged)."""
    if padding_s is None:
        return features
    return features[..., : max(trimmed_frames(n, padding_s) for n in n_samples)]
