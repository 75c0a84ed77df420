"""Serving: an OpenAI-compatible HTTP API and a gradio demo over one ``Transcriber``, and the vLLM path.

Layer 6: imports any layer below, never ``cli``. Nothing here imports the ``serve`` extra, so the CLI reads
these names without it.
"""

KEY_ENV = "WHISPER_LORA_API_KEY"  # API keys of ``serve``: one, or several separated by commas
AUTH_ENV = "WHISPER_LORA_DEMO_AUTH"  # logins of ``demo``: user:password, several separated by commas
