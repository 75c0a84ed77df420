"""What the HTTP app decodes with. ``server.create_app`` takes any ``Engine``; its routes, formats, limits and
errors are the same whichever decodes:

- ``LocalEngine``: this process, a ``Scheduler`` over one ``Transcriber`` (``whisper-lora serve``);
- ``serving/ray_front.RayEngine``: Ray Serve replicas, each a ``Transcriber`` (``whisper-lora serve --ray``).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from whisper_lora.inference.request import Request, Transcription
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.registry.catalog import AdapterRegistry, BrokenAdapter
from whisper_lora.serving.config import ServerConfig
from whisper_lora.serving.scheduler import Job, Scheduler


class Unavailable(Exception):
    """No replica could answer (it died and the retries were spent, or none is running): 503 + Retry-After."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self):  # crosses process boundaries (Ray) with its own arguments
        return (type(self), (str(self), self.retry_after))


class Pending(Protocol):
    """One submitted request."""

    async def result(self) -> Transcription:
        """The transcription; raises the request's error (``Cancelled``, ``QueueFull``, ``Unavailable``, ...)."""

    def cancel(self) -> None:
        """Stop the work: the client went away or the request timed out."""


class Engine(Protocol):
    base_info: object  # ``BaseModelInfo`` of the base every replica loaded
    registry: AdapterRegistry  # what model names resolve to (its own view of the same directory)
    graphs: bool  # greedy 30 s windows decode with a static cache and a compiled step (inference/graphs.py)

    def adapters(self) -> list[str]: ...

    def broken_adapters(self) -> list[BrokenAdapter]: ...

    def routing(self) -> dict | None: ...

    def refresh(self, min_interval: float) -> None:
        """Pick up adapters changed on disk (stat calls at most every ``min_interval`` seconds)."""

    def submit(self, request: Request) -> Pending:
        """Queue one request (its audio as samples); ``QueueFull`` when this engine holds as many as it may."""

    async def status(self) -> dict:
        """What ``/health`` adds: queue counters, and replicas with their adapters."""

    def close(self) -> None: ...


class _LocalPending:
    def __init__(self, job: Job):
        self.job = job

    async def result(self) -> Transcription:
        # shield: a cancelled waiter must not cancel the job's future (the scheduler still completes it)
        return await asyncio.shield(asyncio.wrap_future(self.job.future))

    def cancel(self) -> None:
        self.job.cancel()


class LocalEngine:
    """One process: the ``Scheduler`` over one ``Transcriber``."""

    def __init__(self, transcriber: Transcriber, config: ServerConfig):
        self.transcriber = transcriber
        self.scheduler = scheduler_for(transcriber, config)

    @property
    def base_info(self):
        return self.transcriber.base_info

    @property
    def registry(self) -> AdapterRegistry:
        return self.transcriber.registry

    @property
    def graphs(self) -> bool:
        return self.transcriber.graphs

    def adapters(self) -> list[str]:
        return self.transcriber.adapters()

    def broken_adapters(self) -> list[BrokenAdapter]:
        return self.transcriber.broken_adapters()

    def routing(self) -> dict | None:
        return self.transcriber.routing()

    def refresh(self, min_interval: float) -> None:
        self.transcriber.refresh_adapters(min_interval)

    def submit(self, request: Request) -> _LocalPending:
        return _LocalPending(self.scheduler.submit(request))

    async def status(self) -> dict:
        return {"engine": "local", "loaded_adapters": self.transcriber.loaded_adapters(), **self.scheduler.stats()}

    def close(self) -> None:
        self.scheduler.close()


def scheduler_for(transcriber: Transcriber, config: ServerConfig) -> Scheduler:
    """The scheduler with the server's batching and fairness settings."""
    return Scheduler(
        transcriber,
        config.max_batch,
        config.max_wait_ms,
        config.max_queue,
        config.slice_ms,
        config.reload_seconds,
    )
