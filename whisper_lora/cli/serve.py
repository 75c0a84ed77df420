"""``whisper-lora serve`` (OpenAI-compatible HTTP API) and ``whisper-lora demo`` (gradio page); their settings' flags
are generated from ``ServerConfig``, ``RayConfig`` and ``DemoConfig`` (serving/config.py)."""

from __future__ import annotations

from whisper_lora.cli.options import (
    add_base,
    add_dataclass_flags,
    add_decoding,
    add_graphs,
    add_registry,
    add_routing,
    config_from_args,
    parse_languages,
    run_precision,
    transcriber,
)
from whisper_lora.errors import ConfigError
from whisper_lora.serving import AUTH_ENV
from whisper_lora.serving.config import DemoConfig, RayConfig, ServerConfig

# fields that are no flags: the scheduler's tuning (bench/ measures it), the retry policy and the application's name
SERVER_SKIP = ("slice_ms",)
RAY_SKIP = ("retries", "app_name")
DEMO_SKIP = ("auth",)  # --auth USER:PASSWORD, parsed by DemoConfig.logins


def _add_server(p, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    add_registry(p)
    add_base(p)
    add_graphs(p)
    add_routing(p)


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-compatible /v1/audio/transcriptions server")
    _add_server(sv, port=8000)
    add_decoding(sv)
    add_dataclass_flags(sv, ServerConfig, skip=SERVER_SKIP)
    g = sv.add_argument_group("Ray Serve (--ray; pip install 'whisper-lora[ray]'; docs/scaling-out.md)")
    g.add_argument("--ray", action="store_true", help="serve on Ray Serve: replicas across a cluster, same API")
    add_dataclass_flags(g, RayConfig, skip=RAY_SKIP)
    sv.set_defaults(fn=run_serve)

    dm = sub.add_parser("demo", help="gradio demo: adapter and base transcripts side by side")
    _add_server(dm, port=7860)
    add_decoding(dm, beams=False)
    dm.add_argument(
        "--auth",
        action="append",
        default=None,
        metavar="USER:PASSWORD",
        help=f"require a login (repeatable; default ${AUTH_ENV}, comma-separated; none: open)",
    )
    add_dataclass_flags(dm, DemoConfig, skip=DEMO_SKIP)
    dm.set_defaults(fn=run_demo)


def server_config(a) -> ServerConfig:
    """``ServerConfig`` from the flags given; keys from ``--api-key``, else ``$WHISPER_LORA_API_KEY``."""
    return config_from_args(ServerConfig, a, SERVER_SKIP, api_keys=ServerConfig.keys_from_env())


def ray_config(a) -> RayConfig:
    """``RayConfig`` from the flags given."""
    return config_from_args(RayConfig, a, RAY_SKIP)


def run_serve(a) -> int:
    from whisper_lora.serving.server import serve

    cfg = server_config(a)  # validated before the model loads
    if a.ray:
        return _run_ray(a, cfg)
    t = transcriber(a, num_beams=a.beams, max_new_tokens=a.max_new_tokens)
    serve(t, a.host, a.port, cfg)
    return 0


def _run_ray(a, cfg: ServerConfig) -> int:
    import socket
    from pathlib import Path

    from whisper_lora.registry.catalog import serving_registry

    rc = ray_config(a)  # validated before Ray starts
    registry = serving_registry(a.adapters)  # the driver's view: what every replica must see too
    absent = not registry.root.is_dir() and not rc.registry_path  # none named, no ./adapters: the base alone
    if absent and rc.ship_adapters:
        raise ConfigError(f"--ship-adapters sends the adapter registry, but there is none ({registry.root} is absent)")
    try:
        from whisper_lora.serving.ray_front import run
        from whisper_lora.serving.ray_replica import SHIPPED, ReplicaSpec
    except ImportError as e:
        raise ConfigError(f"serve --ray needs Ray Serve ({e}); install it: pip install 'whisper-lora[ray]'") from None
    spec = ReplicaSpec(
        registry=SHIPPED if rc.ship_adapters else str(Path(rc.registry_path or registry.root).absolute()),
        digest=registry.digest(),
        server=cfg,
        ray=rc,
        base=a.base,
        precision=run_precision(a, "int8"),
        device=a.device or ("cuda" if rc.gpus_per_replica > 0 else "auto"),
        detect_threshold=a.threshold,
        num_beams=a.beams,
        max_new_tokens=a.max_new_tokens,
        languages=parse_languages(a.languages),
        multiplexed=rc.multiplexed(len(registry.names())),
        origin=f"{socket.gethostname()} (where serve --ray ran)",
        local_registry=str(registry.root),
        registry_missing_ok=absent,
        **({"graphs": a.graphs} if a.graphs else {}),  # else the replicas' Transcriber default
    )
    run(spec, a.host, a.port)
    return 0


def demo_config(a) -> DemoConfig:
    """``DemoConfig`` from the flags given; logins from ``--auth``, else ``$WHISPER_LORA_DEMO_AUTH``."""
    return config_from_args(DemoConfig, a, DEMO_SKIP, auth=DemoConfig.logins(a.auth))


def run_demo(a) -> int:
    from whisper_lora.serving.demo import build_demo

    cfg = demo_config(a)  # validated before the model loads
    t = transcriber(a, max_new_tokens=a.max_new_tokens)
    build_demo(t, cfg).launch(server_name=a.host, server_port=a.port, share=False, **cfg.launch_kwargs())
    return 0
