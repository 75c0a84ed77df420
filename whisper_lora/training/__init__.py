"""Training: the typed ``TrainConfig``, LoRA injection, the encoder cache, the learning-rate schedule, the
training loop that writes an adapter into the registry, and what a run reports with it (scores, metadata, language
profile).

Layer 5: imports the layers below (foundation, ``base``, ``data``, ``registry``, ``inference``), never ``serving``
or ``cli``.
"""
