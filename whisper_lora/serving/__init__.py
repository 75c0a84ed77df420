"""Serving: an OpenAI-compatible HTTP API and a gradio demo over one ``Transcriber``, and the vLLM path.

Layer 6: imports any layer below, never ``cli``.
"""
