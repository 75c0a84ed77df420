"""The adapter registry: PEFT adapter directories plus ``whisper_lora.json`` metadata, written atomically,
validated, listed by language, described by model cards and pushed to the hub.

Layer 3: imports the foundation modules, ``whisper_lora.base`` and ``whisper_lora.data``.
"""

from whisper_lora.registry.catalog import AdapterEntry, AdapterRegistry, BrokenAdapter

__all__ = ["AdapterEntry", "AdapterRegistry", "BrokenAdapter"]
