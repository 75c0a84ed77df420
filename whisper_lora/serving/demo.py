"""Gradio demo: upload or record audio, pick a language or auto, compare adapter and base side by side."""

import time

from whisper_lora.data.audio import AudioError, AudioLimits, load_audio
from whisper_lora.inference.transcriber import AUTO, Transcriber
from whisper_lora.languages import WHISPER_LANGUAGES
from whisper_lora.serving.config import DemoConfig


def language_choices(transcriber: Transcriber) -> list[str]:
    """``auto``, then languages with an adapter, then every other Whisper language."""
    have = transcriber.adapters()
    return [AUTO, *have, *(c for c in WHISPER_LANGUAGES if c not in have)]


def run_demo_request(
    transcriber: Transcriber, audio_path: str | None, language: str, limits: AudioLimits | None = None
) -> tuple[str, str, str]:
    """Adapter transcript, base transcript and a details line for one request; the recording is decoded once,
    within ``limits`` (default: ``DemoConfig``'s)."""
    if not audio_path:
        return "", "", "Upload or record some audio first."
    try:
        audio = load_audio(audio_path, limits=limits or DemoConfig().audio_limits)
    except AudioError as e:
        return "", "", f"This recording cannot be transcribed: {e}"
    started = time.perf_counter()
    adapted = transcriber.transcribe(audio, language or AUTO)
    mid = time.perf_counter()
    base = transcriber.transcribe(audio, adapted.language, adapter=None)
    done = time.perf_counter()
    prob = f" (p={adapted.language_probability:.2f})" if adapted.language_probability is not None else ""
    details = (
        f"language: {adapted.language}{prob} | adapter: {adapted.adapter or 'none (base)'} | "
        f"route: {adapted.route} | "
        f"adapter {mid - started:.2f} s, base {done - mid:.2f} s"
    )
    return adapted.text, base.text, details


def build_demo(transcriber: Transcriber, config: DemoConfig | None = None):
    """The gradio Blocks app (``config``: its audio limits)."""
    import gradio as gr

    limits = (config or DemoConfig()).audio_limits

    with gr.Blocks(title="whisper-lora") as demo:
        gr.Markdown(
            f"# whisper-lora\nOne `{transcriber.base_info.name}` base ({transcriber.base_info.precision}), "
            f"adapters: {', '.join(transcriber.adapters()) or 'none'}. `auto` lets the router pick (it learnt the adapters' training speech)."
        )
        with gr.Row():
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
            language = gr.Dropdown(language_choices(transcriber), value=AUTO, label="Language", elem_id="language")
        button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
        with gr.Row():
            adapted = gr.Textbox(label="With the language's adapter", lines=3, elem_id="adapter-text")
            base = gr.Textbox(label="Base model", lines=3, elem_id="base-text")
        details = gr.Textbox(label="Details", elem_id="details")
        button.click(
            lambda a, lang: run_demo_request(transcriber, a, lang, limits), [audio, language], [adapted, base, details]
        )
    return demo
