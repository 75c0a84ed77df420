"""One Ray Serve replica of ``whisper-lora serve --ray``: a ``Transcriber`` over the registry and its ``Scheduler``
(micro-batches that mix adapters, long recordings interleaved), every adapter shape included (encoder LoRA too).

With a small registry every replica holds every adapter, so mixed-language micro-batches work as in one process.
With more adapters than ``max_loaded`` the adapters are multiplexed: each request carries its adapter's name
(``multiplexed_model_id``), Ray sends it to a replica that holds it, and a replica keeps at most ``max_loaded``
(Ray's LRU; an evicted adapter's weights leave the model). Imported only with the ``ray`` extra.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
import torch
from ray import serve

from whisper_lora.errors import ConfigError
from whisper_lora.inference.generation import MAX_NEW_TOKENS
from whisper_lora.inference.graphs import DEFAULT_GRAPHS, check_graphs
from whisper_lora.inference.longform import DecodeOptions
from whisper_lora.inference.request import Request, Transcription
from whisper_lora.inference.routing import RouteDecision
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.catalog import AdapterRegistry
from whisper_lora.serving.config import RayConfig, ServerConfig
from whisper_lora.serving.engine import scheduler_for

log = logging.getLogger("whisper_lora")

SHIPPED = "."  # registry path of ``--ship-adapters``: the replica's working directory (Ray's runtime_env)
HOW = (
    "every node must read the same adapters: mount one shared directory at the same path on every node "
    "(or pass --ray-adapters with the path the nodes see), or pass --ship-adapters to send the registry "
    "with the application (Ray runtime_env working_dir)"
)


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs to build its ``Transcriber``; made by the driver, validated there."""

    registry: str  # the registry as the nodes see it (``SHIPPED``: the shipped working directory)
    digest: dict[str, str]  # what the driver's registry holds (``AdapterRegistry.digest``)
    server: ServerConfig
    ray: RayConfig
    base: str | None = None
    precision: str = "int8"
    device: str = "auto"
    mode: str = "routed"
    detect_threshold: float | None = None
    num_beams: int = 1
    max_new_tokens: int = MAX_NEW_TOKENS
    graphs: str = DEFAULT_GRAPHS  # Transcriber(graphs=...): compiled decoding (inference/graphs.py)
    languages: tuple[str, ...] | None = None
    decode_options: DecodeOptions | None = None
    multiplexed: bool = False
    origin: str = "the driver"  # the machine the command ran on, for messages
    local_registry: str = ""  # the registry on the driver (``--ship-adapters`` sends it)
    registry_missing_ok: bool = False  # none named and no ./adapters on the driver: the base serves every language

    def __post_init__(self) -> None:
        problems = check_graphs(self.graphs, self.precision, self.mode, None)  # on the driver, before Ray starts
        if problems:
            raise ConfigError("invalid replica settings:\n  - " + "\n  - ".join(problems))

    def transcriber_kwargs(self) -> dict:
        kw = dict(
            precision=self.precision,
            device=self.device,
            mode=self.mode,
            # multiplexed: Ray's LRU (max_loaded) decides what leaves; the pool's own bound is only a backstop
            max_loaded=self.ray.max_loaded * (2 if self.multiplexed else 1),
            num_beams=self.num_beams,
            max_new_tokens=self.max_new_tokens,
            graphs=self.graphs,
            decode_options=self.decode_options,
            languages=list(self.languages) if self.languages else None,
        )
        if self.detect_threshold is not None:
            kw["detect_threshold"] = self.detect_threshold
        return kw


@dataclass(frozen=True)
class ReplicaInfo:
    """What a replica tells the ingress about itself (``Decoder.describe``): the contract between the two."""

    replica: str  # Ray's replica id
    node: str  # the node's address
    pid: int
    device: str  # where its model runs
    threads: int  # torch threads
    loaded_adapters: list[str]  # attached in its model, least recently used first
    multiplexed_adapters: list[str] | None  # Ray's multiplexing LRU; None when not multiplexed
    base_info: object = field(repr=False)  # ``BaseModelInfo`` of its base
    routing: dict | None = field(repr=False)  # ``Transcriber.routing()``
    stats: dict = field(default_factory=dict)  # its scheduler's counters (``Scheduler.stats``)

    def public(self) -> dict:
        """The replica's row of ``/health``."""
        row = {k: v for k, v in asdict(self).items() if k not in ("base_info", "routing", "stats")}
        return {**row, **self.stats}


def node_name() -> str:
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return os.uname().nodename


def digest_key(app_name: str) -> bytes:
    """Where the ingress keeps the registry's current digest (Ray's internal key-value store), so that a replica
    started after adapters changed on disk checks against what is served now, not what was served at start."""
    return f"whisper-lora:{app_name}:registry-digest".encode()


def current_digest(spec: ReplicaSpec) -> dict[str, str]:
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if _internal_kv_initialized():
        value = _internal_kv_get(digest_key(spec.ray.app_name))
        if value:
            return json.loads(value)
    return spec.digest


def publish_digest(spec: ReplicaSpec, digest: dict[str, str]) -> None:
    from ray.experimental.internal_kv import _internal_kv_initialized, _internal_kv_put

    if _internal_kv_initialized():
        _internal_kv_put(digest_key(spec.ray.app_name), json.dumps(digest), overwrite=True)


def visible_registry(spec: ReplicaSpec, wait: float | None = None) -> Path:
    """The registry directory as this process sees it, refused with the fix when it is missing or differs from what
    is served now (``current_digest``).

    The ingress publishes what is served now at most ``reload_seconds`` after the disk changed, so a replica started in
    between (a crash, the autoscaler) reads a newer disk than the published digest: a difference is looked at again
    until ``wait`` seconds have passed (default: three reload intervals) before it is refused."""
    path = Path(os.getcwd()) if spec.registry == SHIPPED else Path(spec.registry)
    where = f"the replica on node {node_name()}"
    if not path.is_dir() and not spec.registry_missing_ok:
        raise ConfigError(f"{where} cannot see the adapter registry {path}; {HOW}")
    reload = spec.server.reload_seconds
    wait = (3 * reload if reload is not None else 0.0) if wait is None else wait
    deadline = time.monotonic() + wait
    while True:
        digest, expected = AdapterRegistry(path, missing_ok=spec.registry_missing_ok).digest(), current_digest(spec)
        if digest == expected:
            return path
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.05, wait / 10)))
    differ = sorted(n for n in set(digest) | set(expected) if digest.get(n) != expected.get(n))
    raise ConfigError(
        f"{where} reads different adapters at {path} than {spec.origin} (differ: {', '.join(differ)}); {HOW}"
    )


class _Resident:
    """An adapter Ray's multiplexing counts as loaded on this replica; Ray calls ``__del__`` when it evicts it."""

    def __init__(self, replica: Decoder, name: str):
        self.replica, self.name, self.unloaded = replica, name, False

    def __del__(self):  # Ray's eviction, then the garbage collector: only the first one unloads
        if not self.unloaded:
            self.unloaded = True
            self.replica.resident.discard(self.name)
            self.replica.transcriber.unload(self.name)


def _multiplexer(replica: Decoder, max_loaded: int):
    """The replica's ``@serve.multiplexed`` loader (a function per replica: its LRU size is a runtime setting)."""

    @serve.multiplexed(max_num_models_per_replica=max_loaded)
    async def load(name: str) -> _Resident:
        replica.resident.add(name)  # attached by its first decode, in the scheduler's turn (never blocks here)
        return _Resident(replica, name)

    return load


class Decoder:
    """The replica: ``describe``, ``route`` and ``transcribe``, called by the ingress (``ray_front.RayEngine``, in the ``serve --ray`` process)."""

    def __init__(self, spec: ReplicaSpec):
        torch.set_num_threads(spec.ray.threads)
        root = visible_registry(spec)  # before the model loads: a node that cannot see the registry fails fast
        self.spec = spec
        registry = AdapterRegistry(root, missing_ok=spec.registry_missing_ok)
        self.transcriber = Transcriber(spec.base, registry, **spec.transcriber_kwargs())
        self.scheduler = scheduler_for(self.transcriber, spec.server)
        self.resident: set[str] = set()
        self._load = _multiplexer(self, spec.ray.max_loaded) if spec.multiplexed else None
        if not spec.multiplexed:  # a small registry: every adapter in every replica, mixed batches as in one process
            for name in self.transcriber.adapters()[: spec.ray.max_loaded]:
                self.transcriber.swap(name)
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - constructed outside Serve (tests)
            self.replica_id = f"pid-{os.getpid()}"
        self.node = node_name()
        log.info("replica %s on %s ready: %r", self.replica_id, self.node, self.transcriber)

    async def describe(self) -> ReplicaInfo:
        t = self.transcriber
        return ReplicaInfo(
            replica=self.replica_id,
            node=self.node,
            pid=os.getpid(),
            device=str(t.model.device),
            threads=torch.get_num_threads(),
            loaded_adapters=t.loaded_adapters(),
            multiplexed_adapters=sorted(self.resident) if self.spec.multiplexed else None,
            base_info=t.base_info,
            routing=t.routing(),
            stats=self.scheduler.stats(),
        )

    async def route(self, audio) -> RouteDecision:
        return await self._wait(self.scheduler.submit_route(audio))  # takes turns with long recordings

    async def transcribe(self, request: Request) -> Transcription:
        name = serve.get_multiplexed_model_id()
        if name and self._load is not None:
            await self._load(name)  # Ray's LRU: evicts the least recently used adapter past max_loaded
        return await self._wait(self.scheduler.submit(request))

    @staticmethod
    async def _wait(job):
        try:
            return await asyncio.shield(asyncio.wrap_future(job.future))
        except asyncio.CancelledError:  # the ingress cancelled the request (client gone, timeout)
            job.cancel()
            raise

    def check_health(self) -> None:
        """Ray's health check: the scheduler's worker must be alive."""
        if not self.scheduler.healthy():
            raise RuntimeError("the scheduler's worker thread died")
