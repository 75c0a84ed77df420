"""``whisper-lora serve --ray``: the OpenAI-compatible app (``server.create_app``), served by this process on the
same uvicorn and socket limits as ``serve``, over a Ray Serve application whose ``Decoder`` replicas
(``ray_replica.py``) decode. Ray's HTTP proxy is not used: it has no header deadline and no cap on open sockets.

- ``RayEngine`` is the app's ``Engine``: it sends each request to a replica (with its adapter's name when adapters
  are multiplexed; ``model=auto`` is routed first, on any replica, so the adapter is known before the replica is
  chosen), retries on another replica when one dies, and answers 503 when none can.
- ``build_app`` binds the replicas; ``deploy`` runs them and returns their handle; ``run`` joins or starts a
  cluster, deploys, and serves HTTP here until stopped.
Imported only with the ``ray`` extra (``pip install 'whisper-lora[ray]'``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from whisper_lora.data.audio import N_SAMPLES
from whisper_lora.errors import ConfigError
from whisper_lora.inference.graphs import graphs_on
from whisper_lora.inference.plan import adapter_name, needs_routing
from whisper_lora.inference.request import Request, Transcription
from whisper_lora.registry.catalog import AdapterRegistry, BrokenAdapter
from whisper_lora.serving.engine import Unavailable
from whisper_lora.serving.memory import Releaser
from whisper_lora.serving.ray_replica import Decoder, ReplicaInfo, ReplicaSpec, publish_digest
from whisper_lora.serving.scheduler import Cancelled, QueueFull

log = logging.getLogger("whisper_lora")

DESCRIBE_TIMEOUT = 10.0  # seconds /health waits for the replicas' answers
DESCRIBE_CACHE = 2.0  # seconds the replicas' answers serve /health before they are asked again (one broadcast)
RELEASE_AFTER = 0.5  # seconds after the last answer before the ingress hands freed memory back (``memory.py``)


class _RayPending:
    def __init__(self, engine: RayEngine, request: Request):
        self.engine, self.request = engine, request
        self._response = None
        self._cancelled = False

    async def result(self) -> Transcription:
        request, name = self.request, None
        self.engine.started()
        try:
            if self.engine.spec.multiplexed and request.adapter is not None:  # the adapter picks the replica
                if needs_routing(request):  # routing first, on any replica
                    decision = await self._call("route", None, request.audio[:N_SAMPLES])
                    request = replace(request, decision=decision)
                name = adapter_name(self.engine.registry, request)
            return await self._call("transcribe", name, request)
        finally:
            self.engine.finished()

    async def _call(self, method: str, adapter: str | None, *args):
        e = self.engine
        attempts = e.spec.ray.retries + 1
        for attempt in range(attempts):
            if self._cancelled:
                raise Cancelled()
            handle = e.decoders.options(method_name=method)
            if adapter:
                handle = handle.options(multiplexed_model_id=adapter)
            self._response = handle.remote(*args)
            try:
                return await self._response
            except (ActorDiedError, ActorUnavailableError) as err:
                e.replica_failures += 1
                # an unreachable replica may still be decoding it: cancel that before another replica decodes it too
                self._response.cancel()
                log.warning("a replica failed during %s (attempt %d of %d): %s", method, attempt + 1, attempts, err)
            except RayTaskError as err:  # the replica raised: the request gets the replica's own error
                cause = getattr(err, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            except BackPressureError:  # every replica's queue is full (--max-queue each)
                raise QueueFull(e.spec.server.max_queue, 5) from None
            except DeploymentUnavailableError:
                raise Unavailable("no replica is running; Ray is starting one, retry shortly") from None
        raise Unavailable(
            f"the replica serving this request stopped ({attempts} attempt(s)); Ray is restarting it, retry shortly"
        )

    def cancel(self) -> None:
        self._cancelled = True
        if self._response is not None:
            self._response.cancel()


class RayEngine:
    """The ``Engine`` of the ingress: the replicas decode; this holds a view of the same registry."""

    def __init__(self, decoders, spec: ReplicaSpec, root, info: dict):
        self.decoders, self.spec = decoders, spec
        self.base_info, self._routing = info.base_info, info.routing
        self.registry = AdapterRegistry(root, self.base_info, missing_ok=spec.registry_missing_ok)
        self.graphs = graphs_on(spec.graphs)  # every replica's Transcriber was built with it
        self.replica_failures = 0
        self._in_flight = 0  # requests being answered (``started``, ``finished``; on the event loop only)
        self._release_memory = Releaser()
        self._looked = time.monotonic()
        self._described: tuple[float, list] | None = None  # (when, the replicas' answers to describe)
        self._describing: asyncio.Future | None = None  # the broadcast under way, shared by /health calls

    def adapters(self) -> list[str]:
        return self.registry.names()

    def broken_adapters(self) -> list[BrokenAdapter]:
        return self.registry.broken()

    def routing(self) -> dict | None:
        return self._routing

    def refresh(self, min_interval: float) -> None:
        if time.monotonic() - self._looked < min_interval:
            return
        self._looked = time.monotonic()
        if self.registry.changed():  # the replicas' schedulers pick the change up themselves
            self.registry.refresh()
            publish_digest(self.spec, self.registry.digest())  # replicas started from now on check against it
            log.info("adapter registry changed on disk: now serving %s", ", ".join(self.adapters()) or "none")

    def submit(self, request: Request) -> _RayPending:
        return _RayPending(self, request)

    def started(self) -> None:
        self._in_flight += 1

    def finished(self) -> None:
        """One request is answered; when none is left, the memory their uploads took goes back to the system once their
        handlers have let go of the samples (``memory.Releaser``, at most once a second)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            asyncio.get_running_loop().call_later(RELEASE_AFTER, self._release_if_idle)

    def _release_if_idle(self) -> None:
        if self._in_flight == 0:  # still nothing in flight: trim on a worker thread, not on the event loop
            asyncio.get_running_loop().run_in_executor(None, self._release_memory)

    async def _descriptions(self) -> list:
        """The replicas' answers to ``describe``: at most one broadcast every ``DESCRIBE_CACHE`` s, shared by the
        /health calls that arrive while it is under way, each waiting at most ``DESCRIBE_TIMEOUT`` s."""
        if self._described is not None and time.monotonic() - self._described[0] < DESCRIBE_CACHE:
            return self._described[1]
        if self._describing is None:
            self._describing = asyncio.ensure_future(self._broadcast())
        return await asyncio.shield(self._describing)  # a caller that goes away leaves it to the others

    async def _broadcast(self) -> list:
        try:
            answers = await self.decoders.broadcast("describe").results_async(
                timeout_s=DESCRIBE_TIMEOUT, return_exceptions=True
            )
        except Exception as e:  # noqa: BLE001 - no replica, or none answered in time: report it, do not fail
            log.warning("replicas did not describe themselves: %s", e)
            answers = []
        self._described, self._describing = (time.monotonic(), answers), None
        return answers

    async def status(self) -> dict:
        answers = await self._descriptions()
        described = [a for a in answers if isinstance(a, ReplicaInfo)]
        if described:
            self._routing = described[0].routing
        replicas = [a.public() for a in described]
        rc = self.spec.ray
        wanted = max(rc.min_replicas, 1) if rc.autoscaling else rc.replicas
        return {
            "engine": "ray",
            "degraded": len(replicas) < wanted,
            "replicas": replicas,
            "replicas_wanted": rc.autoscaling or rc.replicas,
            "replicas_unanswered": len(answers) - len(replicas),
            "multiplexed": self.spec.multiplexed,
            "max_loaded": self.spec.ray.max_loaded,
            "replica_failures": self.replica_failures,
            "in_flight": sum(r["in_flight"] for r in replicas),
            "served": sum(r["served"] for r in replicas),
            "ingress_memory_releases": self._release_memory.count,
        }

    def close(self) -> None:
        pass


def build_app(spec: ReplicaSpec):
    """The Ray Serve application: the ``Decoder`` replicas (the ingress is this process: ``run``)."""
    rc = spec.ray
    actor = {"num_cpus": rc.cpus_per_replica, "num_gpus": rc.gpus_per_replica}
    scaling = {"autoscaling_config": rc.autoscaling} if rc.autoscaling else {"num_replicas": rc.replicas}
    decoder = serve.deployment(
        Decoder,
        name="Decoder",
        ray_actor_options=actor,
        max_ongoing_requests=2 * spec.server.max_batch,  # enough for full micro-batches
        max_queued_requests=spec.server.max_queue,  # past it: 503 + Retry-After
        max_constructor_retry_count=3,
        health_check_period_s=5,
        **scaling,
    )
    keyless = replace(spec, server=replace(spec.server, api_keys=()))  # only the ingress checks keys
    return decoder.bind(keyless)


_FAILED = re.compile(r"(?:ConfigError|AdapterError|WhisperLoraError): (.+)")


def deploy(spec: ReplicaSpec):
    """Deploy the replicas on the cluster this process is connected to (``ray.init`` first; with
    ``ship_adapters``, with ``runtime_env={"working_dir": <registry>}``: Serve gives the replicas the job's working
    directory) and return their ``DeploymentHandle``. No Ray HTTP proxy is started for them: the replicas are reached
    through the handle only. Raises ``ConfigError`` with the replicas' own message when they cannot start."""
    if spec.ray.ship_adapters and not (ray.get_runtime_context().runtime_env or {}).get("working_dir"):
        raise ConfigError(
            "ship_adapters sends the registry as the job's working directory: connect with "
            f"ray.init(runtime_env={{'working_dir': {spec.local_registry!r}}}) before deploying"
        )
    publish_digest(spec, spec.digest)  # what this deployment serves (a previous one may have left another)
    serve.start(proxy_location="Disabled")  # a cluster whose Serve already runs keeps its own proxies
    try:
        return serve.run(build_app(spec), name=spec.ray.app_name, route_prefix=None, blocking=False)
    except Exception as e:  # a replica's constructor error is in the deployments' status messages
        report = str(e)
        try:
            app = serve.status().applications.get(spec.ray.app_name)
            if app is not None:
                report += "\n" + app.message + "\n" + "\n".join(d.message for d in app.deployments.values())
            serve.delete(spec.ray.app_name)  # no failed application left behind on the cluster
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("could not read or delete the failed application %s", spec.ray.app_name)
        found = _FAILED.search(report)
        if found:
            raise ConfigError(f"Ray Serve could not start the replicas: {found.group(1).strip()}") from None
        raise


def ingress(decoders, spec: ReplicaSpec) -> RayEngine:
    """The ``Engine`` of this process's HTTP app over the deployed replicas (``deploy``'s handle). It reads the
    driver's registry (the replicas checked theirs against its digest)."""
    info = decoders.options(method_name="describe").remote().result()
    return RayEngine(decoders, spec, Path(spec.local_registry), info)


def _refresh_every(engine: RayEngine, seconds: float, stop: threading.Event) -> None:
    """Model names follow the disk without waiting for /health; a change is published to the replicas."""
    while not stop.wait(seconds):
        try:
            engine.refresh(seconds)
        except Exception:  # noqa: BLE001 - a failed look at the disk is logged; the next one may succeed
            log.exception("re-reading the adapter registry failed")


def run(spec: ReplicaSpec, host: str, port: int) -> None:
    """``whisper-lora serve --ray``: connect (``--ray-address``) or start a local cluster, deploy the replicas, and
    serve the HTTP app here, on ``serve``'s uvicorn with its socket limits (header deadline, open-socket cap,
    keep-alive: ``connections.py``), until Ctrl-C or SIGTERM; then delete the application."""
    from whisper_lora.serving.server import serve as serve_http

    if not ray.is_initialized():  # --ship-adapters: the registry is uploaded as the job's working directory
        env = {"working_dir": spec.local_registry} if spec.ray.ship_adapters else None
        ray.init(address=spec.ray.address, runtime_env=env, logging_level=logging.WARNING)
    decoders = deploy(spec)
    stop = threading.Event()
    try:
        engine = ingress(decoders, spec)
        if spec.server.reload_seconds is not None:
            args = (engine, spec.server.reload_seconds, stop)
            threading.Thread(target=_refresh_every, args=args, name="registry-watch", daemon=True).start()
        log.warning(
            "whisper-lora on Ray Serve: http://%s:%d/v1/audio/transcriptions (%s)",
            host,
            port,
            f"{spec.ray.autoscaling} replicas" if spec.ray.autoscaling else f"{spec.ray.replicas} replica(s)",
        )
        serve_http(engine, host, port, spec.server)
    finally:
        stop.set()
        serve.delete(spec.ray.app_name)
