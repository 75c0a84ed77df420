"""One place that builds the ``GenerationConfig`` of every decode (eval, transcription, long-form).

Passing a full config instead of keyword arguments keeps transformers quiet: ``max_new_tokens``
next to the checkpoint's ``max_length`` warns on every call, and so does a config passed together
with generation keywords. Whisper's ``generate`` adds each window's prompt length to ``max_length``,
so ``max_length`` set to the budget of new tokens means exactly that many new tokens.
"""

from __future__ import annotations

MAX_NEW_TOKENS = 224  # openai-whisper's sample_len: half of the decoder's 448-token context; the one home of the cap


def decoding_config(model, num_beams: int, max_new_tokens: int):
    """A copy of ``model``'s generation config that decodes at most ``max_new_tokens`` tokens."""
    from transformers import GenerationConfig

    gen = GenerationConfig.from_dict(model.generation_config.to_dict())
    gen.num_beams, gen.max_new_tokens, gen.max_length = num_beams, None, max_new_tokens
    return gen
