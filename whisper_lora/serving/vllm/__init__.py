"""vLLM: exporting registry adapters to what vLLM can load, and running vLLM in its own interpreter.

Part of layer 6 (``serving``); ``runner.py`` imports nothing from whisper_lora (it runs under vLLM's venv).
"""
