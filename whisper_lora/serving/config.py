"""The serving settings, each validated in one place: ``ServerConfig`` (the HTTP API: limits, keys, batching) and
``RayConfig`` (where and how many replicas on Ray Serve). Nothing here imports the ``serve`` or ``ray`` extras."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from whisper_lora.errors import ConfigError
from whisper_lora.serving import KEY_ENV

MULTIPLEX = ("auto", "always", "never")


def _fail(what: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class ServerConfig:
    """Limits, keys and batching of the HTTP server (``whisper-lora serve`` flags in brackets)."""

    max_upload_bytes: int = 25 * 2**20  # [--max-upload-mb] larger uploads get 413 (OpenAI's limit is 25 MB)
    max_audio_seconds: float | None = 1800.0  # [--max-audio-seconds] longer recordings get 413; None: no limit
    max_batch: int = 8  # [--max-batch] short requests decoded together
    max_wait_ms: float = 10.0  # [--max-wait-ms] how long the first short request waits for company
    max_queue: int = 64  # [--max-queue] requests in flight (queued or decoding); past it 503 + Retry-After
    max_connections: int = 128  # [--max-connections] HTTP requests in progress (uploads included); past it 503
    request_timeout: float | None = 900.0  # [--request-timeout] seconds from upload to answer; past it 504
    slice_ms: float = 200.0  # a long recording keeps the model at least this long before short ones go
    quantum_ms: float = 2000.0  # long recordings take turns this often
    reload_seconds: float | None = 2.0  # look for adapters changed on disk at most this often; None: never
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # [--api-key] empty: no key needed
    cors_origins: tuple[str, ...] = ()  # [--cors-origin] browser origins allowed; empty: CORS off
    keep_alive_seconds: float = 5.0  # idle keep-alive connections are closed after this

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", tuple(k for k in self.api_keys if k))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        problems = []
        for name in ("max_upload_bytes", "max_batch", "max_queue", "max_connections"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 1")
        for name in ("max_audio_seconds", "request_timeout", "reload_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name}={value!r} must be > 0 (or None for no limit)")
        for name in ("max_wait_ms", "slice_ms", "quantum_ms", "keep_alive_seconds"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 0")
        if any(len(k) < 8 or k.strip() != k for k in self.api_keys):
            problems.append("every API key must be at least 8 characters, without surrounding spaces")
        _fail("server settings", problems)

    @staticmethod
    def keys_from_env() -> tuple[str, ...]:
        """Keys in ``$WHISPER_LORA_API_KEY`` (comma-separated)."""
        return tuple(k.strip() for k in os.environ.get(KEY_ENV, "").split(",") if k.strip())

    def public(self) -> dict:
        """The limits as ``/health`` reports them (never the keys)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_audio_seconds": self.max_audio_seconds,
            "max_queue": self.max_queue,
            "max_connections": self.max_connections,
            "request_timeout": self.request_timeout,
            "auth": bool(self.api_keys),
        }


@dataclass(frozen=True)
class RayConfig:
    """Where ``whisper-lora serve --ray`` runs its replicas (flags in brackets); see docs/scaling-out.md."""

    address: str | None = (
        None  # [--ray-address] None: a local cluster on this machine; "auto": the one `ray start` runs
    )
    replicas: int = 1  # [--replicas] fixed replica count (when not autoscaling)
    min_replicas: int | None = None  # [--min-replicas] autoscaling bounds: both set, or neither
    max_replicas: int | None = None  # [--max-replicas]
    target_ongoing_requests: float = 4.0  # [--target-ongoing] autoscaling aims at this many requests per replica
    cpus_per_replica: float = 1.0  # [--replica-cpus] Ray CPUs each replica reserves (also its torch threads)
    gpus_per_replica: float = 0.0  # [--replica-gpus] 1: each replica on its own GPU (device cuda)
    multiplex: str = "auto"  # [--multiplex] auto: when the registry holds more adapters than --max-loaded
    max_loaded: int = 8  # [--max-loaded] adapters one replica holds at once (Ray's multiplexing LRU)
    registry_path: str | None = None  # [--ray-adapters] the registry as the nodes see it (default: --adapters)
    ship_adapters: bool = False  # [--ship-adapters] send the registry to every node (runtime_env working_dir)
    retries: int = 1  # a request whose replica died is sent to another this many times, then 503
    app_name: str = "whisper-lora"

    def __post_init__(self) -> None:
        problems = []
        for name in ("replicas", "max_loaded"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            problems.append("autoscaling needs both min_replicas and max_replicas (or neither)")
        elif self.min_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas >= 1:
            problems.append(
                f"min_replicas={self.min_replicas!r}, max_replicas={self.max_replicas!r}: "
                "need 0 <= min_replicas <= max_replicas, max_replicas >= 1"
            )
        if self.min_replicas is not None and self.replicas != 1:
            problems.append(f"replicas={self.replicas!r} with autoscaling: give min/max replicas, or replicas alone")
        if not self.target_ongoing_requests > 0:
            problems.append(f"target_ongoing_requests={self.target_ongoing_requests!r} must be > 0")
        if not self.cpus_per_replica > 0:
            problems.append(f"cpus_per_replica={self.cpus_per_replica!r} must be > 0")
        if not self.gpus_per_replica >= 0:
            problems.append(f"gpus_per_replica={self.gpus_per_replica!r} must be >= 0")
        if self.multiplex not in MULTIPLEX:
            problems.append(f"multiplex={self.multiplex!r}; valid: {', '.join(MULTIPLEX)}")
        if self.retries < 0:
            problems.append(f"retries={self.retries!r} must be >= 0")
        if self.ship_adapters and self.registry_path:
            problems.append("ship_adapters sends the registry to the nodes: registry_path (a shared path) is not used")
        _fail("Ray settings", problems)

    @property
    def autoscaling(self) -> dict | None:
        """Ray Serve's ``autoscaling_config``, or None for a fixed replica count."""
        if self.min_replicas is None:
            return None
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }

    def multiplexed(self, n_adapters: int) -> bool:
        """Whether requests carry their adapter to a replica that holds it (else every replica holds every one)."""
        return self.multiplex == "always" or (self.multiplex == "auto" and n_adapters > self.max_loaded)

    @property
    def threads(self) -> int:
        """torch threads of one replica."""
        return max(1, round(self.cpus_per_replica))
