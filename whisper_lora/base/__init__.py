"""The base model: resolving a name to weights, importing CTranslate2 checkpoints, loading in int8/nf4/bf16/fp32,
the hardware profile that picks defaults, and the encoder trimming that lets it read short inputs.

Layer 1: imports only the foundation modules (``whisper_lora.errors``, ``languages``, ``atomic``).
"""
