"""``whisper-lora serve`` (OpenAI-compatible HTTP API) and ``whisper-lora demo`` (gradio page)."""

from __future__ import annotations

from whisper_lora.cli.options import add_base, add_registry, add_routing, run_precision, transcriber
from whisper_lora.errors import ConfigError
from whisper_lora.serving import AUTH_ENV, KEY_ENV


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
    sv.add_argument(
        "--max-audio-seconds",
        type=_limit,
        default=1800.0,
        help="longest recording accepted, read from its header before decoding (default 1800; 0: no limit)",
    )
    sv.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    sv.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for company (default 10)")
    sv.add_argument(
        "--max-queue", type=int, default=64, help="requests in flight before 503 + Retry-After (default 64)"
    )
    sv.add_argument(
        "--max-connections", type=int, default=128, help="HTTP requests in progress before 503 (default 128)"
    )
    sv.add_argument(
        "--request-timeout",
        type=_limit,
        default=900.0,
        help="seconds from upload to answer before 504; the work is cancelled (default 900; 0: none)",
    )
    sv.add_argument(
        "--api-key",
        action="append",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1/ (repeatable; default ${KEY_ENV}, comma-separated)",
    )
    sv.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="browser origin allowed to call the API, e.g. https://app.example.org (repeatable; default: CORS off)",
    )
    _add_ray(sv)
    sv.set_defaults(fn=run_serve)

    dm = sub.add_parser("demo", help="gradio demo: adapter and base transcripts side by side")
    _add_server(dm, port=7860)
    dm.add_argument(
        "--auth",
        action="append",
        default=None,
        metavar="USER:PASSWORD",
        help=f"require a login (repeatable; default ${AUTH_ENV}, comma-separated; none: open)",
    )
    dm.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted (default 25 MB)")
    dm.set_defaults(fn=run_demo)


def _add_ray(p) -> None:
    g = p.add_argument_group("Ray Serve (--ray; pip install 'whisper-lora[ray]'; docs/scaling-out.md)")
    g.add_argument("--ray", action="store_true", help="serve on Ray Serve: replicas across a cluster, same API")
    g.add_argument(
        "--ray-address",
        default=None,
        help="cluster to join: auto (the one `ray start` runs here) or HOST:6379 (default: a local cluster)",
    )
    g.add_argument("--replicas", type=int, default=1, help="replicas (default 1)")
    g.add_argument("--min-replicas", type=int, default=None, help="autoscaling: fewest replicas (with --max-replicas)")
    g.add_argument("--max-replicas", type=int, default=None, help="autoscaling: most replicas (with --min-replicas)")
    g.add_argument(
        "--target-ongoing", type=float, default=4.0, help="autoscaling: requests per replica it aims at (default 4)"
    )
    g.add_argument(
        "--replica-cpus", type=float, default=1.0, help="CPUs each replica reserves, also its threads (default 1)"
    )
    g.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs each replica reserves (default 0; 1: cuda)")
    g.add_argument("--max-loaded", type=int, default=8, help="adapters one replica holds at once (default 8)")
    g.add_argument(
        "--multiplex",
        choices=("auto", "always", "never"),
        default="auto",
        help="send each request to a replica holding its adapter (auto: when adapters > --max-loaded)",
    )
    g.add_argument("--ray-adapters", default=None, metavar="DIR", help="the registry as the nodes see it")
    g.add_argument(
        "--ship-adapters", action="store_true", help="send the registry to every node (Ray runtime_env working_dir)"
    )


def _limit(text: str) -> float | None:
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value or None  # 0: no limit


def run_serve(a) -> int:
    from whisper_lora.serving.server import ServerConfig, serve

    cfg = ServerConfig(  # validated before the model loads
        max_upload_bytes=int(a.max_upload_mb * 2**20),
        max_audio_seconds=a.max_audio_seconds,
        max_batch=a.max_batch,
        max_wait_ms=a.max_wait_ms,
        max_queue=a.max_queue,
        max_connections=a.max_connections,
        request_timeout=a.request_timeout,
        api_keys=tuple(a.api_key) if a.api_key else ServerConfig.keys_from_env(),
        cors_origins=tuple(a.cors_origin),
    )
    if a.ray:
        return _run_ray(a, cfg)
    t = transcriber(a, num_beams=a.beams, max_new_tokens=a.max_new_tokens)
    serve(t, a.host, a.port, cfg)
    return 0


def _run_ray(a, cfg) -> int:
    import socket
    from pathlib import Path

    from whisper_lora.registry.catalog import AdapterRegistry
    from whisper_lora.serving.config import RayConfig

    rc = RayConfig(  # validated before Ray starts
        address=a.ray_address,
        replicas=a.replicas,
        min_replicas=a.min_replicas,
        max_replicas=a.max_replicas,
        target_ongoing_requests=a.target_ongoing,
        cpus_per_replica=a.replica_cpus,
        gpus_per_replica=a.replica_gpus,
        multiplex=a.multiplex,
        max_loaded=a.max_loaded,
        registry_path=a.ray_adapters,
        ship_adapters=a.ship_adapters,
    )
    registry = AdapterRegistry(a.adapters)  # the driver's view: what every replica must see too
    try:
        from whisper_lora.serving.ray_front import run
        from whisper_lora.serving.ray_replica import SHIPPED, ReplicaSpec
    except ImportError as e:
        raise ConfigError(f"serve --ray needs Ray Serve ({e}); install it: pip install 'whisper-lora[ray]'") from None
    languages = tuple(x.strip() for x in a.languages.split(",") if x.strip()) if a.languages else None
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
        languages=languages,
        multiplexed=rc.multiplexed(len(registry.names())),
        origin=f"{socket.gethostname()} (where serve --ray ran)",
        local_registry=str(registry.root),
    )
    run(spec, a.host, a.port)
    return 0


def run_demo(a) -> int:
    from whisper_lora.serving.demo import DemoConfig, build_demo

    cfg = DemoConfig.from_args(a.auth, a.max_upload_mb)
    t = transcriber(a, max_new_tokens=a.max_new_tokens)
    build_demo(t).launch(server_name=a.host, server_port=a.port, share=False, **cfg.launch_kwargs())
    return 0
