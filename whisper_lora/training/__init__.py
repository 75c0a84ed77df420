"""Training: the typed ``TrainConfig``, LoRA injection, the encoder cache, the learning-rate schedule and the
training loop that writes an adapter into the registry.

Layer 5: imports the layers below (foundation, ``base``, ``data``, ``registry``, ``inference``), never ``serving``
or ``cli``.
"""
