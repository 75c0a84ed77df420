"""Inference: the ``Transcriber`` (one base, many adapters: routing, hot-swap, mixed batches), long-form
decoding, output formats, scoring (WER/CER of what ``transcribe`` returns) and merging.

Layer 4: imports the layers below (foundation, ``base``, ``data``, ``registry``), never ``training``,
``serving`` or ``cli``.
"""
