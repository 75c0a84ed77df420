"""``whisper-lora serve`` (OpenAI-compatible HTTP API) and ``whisper-lora demo`` (gradio page)."""

from __future__ import annotations

from whisper_lora.cli.options import add_base, add_registry, add_routing, transcriber


def _add_server(p, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    add_registry(p)
    add_base(p)
    add_routing(p)
    p.add_argument(
        "--max-new-tokens", type=int, default=224, help="tokens decoded per 30 s window at most (default 224)"
    )


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-compatible /v1/audio/transcriptions server")
    _add_server(sv, port=8000)
    sv.add_argument("--beams", type=int, default=1, help="beam width (1: greedy, the default)")
    sv.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted (default 25 MB)")
    sv.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    sv.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for company (default 10)")
    sv.set_defaults(fn=run_serve)

    dm = sub.add_parser("demo", help="gradio demo: adapter and base transcripts side by side")
    _add_server(dm, port=7860)
    dm.set_defaults(fn=run_demo)


def run_serve(a) -> int:
    from whisper_lora.serving.server import ServerConfig, serve

    t = transcriber(a, num_beams=a.beams, max_new_tokens=a.max_new_tokens)
    cfg = ServerConfig(max_upload_bytes=int(a.max_upload_mb * 2**20), max_batch=a.max_batch, max_wait_ms=a.max_wait_ms)
    serve(t, a.host, a.port, cfg)
    return 0


def run_demo(a) -> int:
    from whisper_lora.serving.demo import build_demo

    t = transcriber(a, max_new_tokens=a.max_new_tokens)
    build_demo(t).launch(server_name=a.host, server_port=a.port, share=False)
    return 0
