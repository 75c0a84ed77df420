"""Serving: an OpenAI-compatible HTTP API and a gradio demo over one ``Transcriber``."""
