"""The serving settings, each validated in one place: ``ServerConfig`` (the HTTP API: limits, keys, batching),
``RayConfig`` (where and how many replicas on Ray Serve) and ``DemoConfig`` (the gradio page). Each field is also a
command-line flag (generated). Nothing here imports the ``serve``, ``ray`` or ``demo`` extras."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from whisper_lora.data.audio import MAX_CHANNELS, MAX_SAMPLE_RATE, AudioLimits, rate_and_channel_problems
from whisper_lora.errors import ConfigError
from whisper_lora.serving import AUTH_ENV, KEY_ENV

MULTIPLEX = ("auto", "always", "never")
MAX_UPLOAD_MB = 25.0  # OpenAI's limit on an upload
MAX_AUDIO_SECONDS = 1800.0  # the server's and the demo's longest recording by default

# ``field`` metadata that the command line reads (cli/options.py ``add_dataclass_flags``): "flag", the flag's name
# where it is not the field's; "repeat", a tuple filled one value per use of the flag; "none", what None means
# (given as 0 on the command line); "choices", the valid values.
_NO_LIMIT = {"none": "no limit"}


def _flag(name: str, repeat: bool = False) -> dict:
    return {"flag": name, "repeat": repeat}


def _fail(what: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class ServerConfig:
    """Limits, keys and batching of the HTTP server; each field is also a ``whisper-lora serve`` flag."""

    max_upload_mb: float = MAX_UPLOAD_MB  # larger uploads get 413 (OpenAI's limit is 25 MB)
    max_audio_seconds: float | None = field(default=MAX_AUDIO_SECONDS, metadata=_NO_LIMIT)  # longer recordings
    # get 413 (their length read from the header, before decoding; decoding also stops there); it also caps the
    # samples decoded (rate x channels x seconds) at this many seconds of 48 kHz 7.1
    max_sample_rate: int = MAX_SAMPLE_RATE  # uploads at a higher sample rate (Hz) get 413, before decoding
    max_channels: int = MAX_CHANNELS  # uploads with more channels get 413, before decoding
    max_batch: int = 8  # short requests decoded together
    max_wait_ms: float = 10.0  # how long the first short request waits for company
    max_queue: int = 64  # requests in flight (queued or decoding); past it 503 + Retry-After
    max_connections: int = 128  # HTTP requests in progress, counted once their body has arrived (uploads still
    # arriving are bounded by max_open_connections and the body timeout); past it 503
    request_timeout: float | None = field(default=900.0, metadata=_NO_LIMIT)  # seconds from upload to answer;
    # past it 504 and the work is cancelled
    slice_ms: float = 200.0  # a long recording keeps the model at least this long before short ones go
    reload_seconds: float | None = field(default=2.0, metadata={"none": "never"})  # look for adapters changed
    # on disk at most this often
    api_keys: tuple[str, ...] = field(default=(), repr=False, metadata=_flag("api-key", repeat=True))  # keys
    # accepted as 'Authorization: Bearer KEY', needed on every path but /health and the API docs (/docs); empty:
    # no key needed (serve reads $WHISPER_LORA_API_KEY, comma-separated, when none is given)
    cors_origins: tuple[str, ...] = field(default=(), metadata=_flag("cors-origin", repeat=True))  # browser
    # origins allowed to call the API, e.g. https://app.example.org; empty: CORS off
    keep_alive_seconds: float = 5.0  # idle keep-alive connections are closed after this
    header_timeout_seconds: float = 10.0  # a connection is closed when a request's headers are not complete this
    # long after it opened or after the request's first byte (sockets that never send a request included)
    body_timeout_seconds: float | None = field(default=20.0, metadata=_NO_LIMIT)  # a request body not arrived
    # this long after its headers, plus 1 s per body_min_rate bytes received, gets 408 and its connection closed
    body_min_rate: float = 8192.0  # bytes/s an upload must keep up (0: the whole body within body_timeout_seconds)
    max_open_connections: int = 512  # open sockets (idle, uploading or waiting for an answer); past it new ones
    # are closed at once; at least max_connections (raise the open-files limit, ulimit -n, above it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_keys", tuple(k for k in self.api_keys if k))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        problems = []
        if not self.max_upload_mb * 2**20 >= 1:
            problems.append(f"max_upload_mb={self.max_upload_mb!r} must be > 0")
        for name in ("max_batch", "max_queue", "max_connections"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 1")
        for name in ("max_audio_seconds", "request_timeout", "reload_seconds", "body_timeout_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name}={value!r} must be > 0 (or None for no limit)")
        for name in ("max_wait_ms", "slice_ms", "keep_alive_seconds"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 0")
        if not self.header_timeout_seconds > 0:
            problems.append(f"header_timeout_seconds={self.header_timeout_seconds!r} must be > 0")
        if not self.body_min_rate >= 0:
            problems.append(f"body_min_rate={self.body_min_rate!r} must be >= 0")
        if self.max_open_connections < self.max_connections:
            problems.append(
                f"max_open_connections={self.max_open_connections!r} must be >= max_connections="
                f"{self.max_connections!r} (each request in progress holds a socket)"
            )
        if any(len(k) < 8 or k.strip() != k for k in self.api_keys):
            problems.append("every API key must be at least 8 characters, without surrounding spaces")
        problems += rate_and_channel_problems(self.max_sample_rate, self.max_channels)
        _fail("server settings", problems)

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 2**20)

    @property
    def audio_limits(self) -> AudioLimits:
        """What an upload may hold (``data.audio.load_audio`` checks it)."""
        return AudioLimits(self.max_audio_seconds, self.max_sample_rate, self.max_channels)

    @staticmethod
    def keys_from_env() -> tuple[str, ...]:
        """Keys in ``$WHISPER_LORA_API_KEY`` (comma-separated)."""
        return tuple(k.strip() for k in os.environ.get(KEY_ENV, "").split(",") if k.strip())

    def public(self) -> dict:
        """The limits as ``/health`` reports them (never the keys)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_audio_seconds": self.max_audio_seconds,
            "max_sample_rate": self.max_sample_rate,
            "max_channels": self.max_channels,
            "max_queue": self.max_queue,
            "max_connections": self.max_connections,
            "request_timeout": self.request_timeout,
            "auth": bool(self.api_keys),
        }


@dataclass(frozen=True)
class RayConfig:
    """Where ``whisper-lora serve --ray`` runs its replicas (each field also a flag); see docs/scaling-out.md."""

    address: str | None = field(default=None, metadata=_flag("ray-address"))  # cluster to join: auto (the one
    # `ray start` runs here) or HOST:6379; unset: a local cluster on this machine
    replicas: int = 1  # fixed replica count (when not autoscaling)
    min_replicas: int | None = None  # autoscaling: fewest replicas (with max_replicas; both set, or neither)
    max_replicas: int | None = None  # autoscaling: most replicas (with min_replicas)
    target_ongoing_requests: float = field(default=4.0, metadata=_flag("target-ongoing"))  # autoscaling aims
    # at this many requests per replica
    cpus_per_replica: float = field(default=1.0, metadata=_flag("replica-cpus"))  # Ray CPUs each replica
    # reserves (also its torch threads)
    gpus_per_replica: float = field(default=0.0, metadata=_flag("replica-gpus"))  # GPUs each replica reserves
    # (1: each on its own GPU, device cuda)
    multiplex: str = field(default="auto", metadata={"choices": MULTIPLEX})  # send each request to a replica
    # holding its adapter (auto: when the registry holds more adapters than max_loaded)
    max_loaded: int = 8  # adapters one replica holds at once (Ray's multiplexing LRU)
    registry_path: str | None = field(default=None, metadata=_flag("ray-adapters"))  # the registry as the
    # nodes see it (unset: the driver's, --adapters)
    ship_adapters: bool = False  # send the registry to every node (Ray runtime_env working_dir)
    retries: int = 1  # a request whose replica died is sent to another this many times, then 503
    app_name: str = "whisper-lora"  # the Ray Serve application's name

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


@dataclass(frozen=True)
class DemoConfig:
    """Who may use ``whisper-lora demo`` and how large an upload it takes."""

    auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (user, password) logins; empty: open
    max_upload_mb: float = MAX_UPLOAD_MB  # largest upload accepted
    max_audio_seconds: float | None = field(default=MAX_AUDIO_SECONDS, metadata=_NO_LIMIT)  # longer recordings
    # are refused (their length read from the header, before decoding; decoding also stops there)

    def __post_init__(self) -> None:
        problems = []
        if not self.max_upload_mb * 2**20 >= 1:
            problems.append(f"max_upload_mb={self.max_upload_mb!r} must be > 0")
        if self.max_audio_seconds is not None and not self.max_audio_seconds > 0:
            problems.append(f"max_audio_seconds={self.max_audio_seconds!r} must be > 0 (or None for no limit)")
        for user, password in self.auth:
            if not user or len(password) < 8:
                problems.append(f"demo login for user {user!r}: give USER:PASSWORD with a password of 8+ characters")
        _fail("demo settings", problems)

    @staticmethod
    def logins(given: list[str] | None) -> tuple[tuple[str, str], ...]:
        """``--auth USER:PASSWORD`` values (repeatable), else those in ``$WHISPER_LORA_DEMO_AUTH`` (comma-separated)."""
        given = given or [x for x in os.environ.get(AUTH_ENV, "").split(",") if x.strip()]
        pairs = []
        for item in given:
            user, sep, password = item.strip().partition(":")
            if not sep:
                raise ConfigError(f"--auth {item.split(':')[0]!r}...: expected USER:PASSWORD")
            pairs.append((user, password))
        return tuple(pairs)

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 2**20)

    @property
    def audio_limits(self) -> AudioLimits:
        """What a recording may hold (``data.audio.load_audio`` checks it; rate and channels: the defaults)."""
        return AudioLimits(self.max_audio_seconds)

    def launch_kwargs(self) -> dict:
        """Arguments of gradio's ``launch``."""
        kw = {"max_file_size": self.max_upload_bytes}
        if self.auth:
            kw["auth"] = list(self.auth)
        return kw
