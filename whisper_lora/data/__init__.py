"""Data: corpus readers (DVoice, Common Voice, manifests, datasets), audio loading, features, sampling,
waveform perturbation and the espeak-ng synthetic corpora.

Layer 2: imports the foundation modules and ``whisper_lora.base``.
"""
