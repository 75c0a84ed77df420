"""The Ray hand-off without a cluster: a retry never leaves a second copy of a request decoding, and a replica started
before the ingress published a registry change waits for it instead of refusing to start."""

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ray")

from ray.exceptions import ActorUnavailableError  # noqa: E402

from whisper_lora.errors import ConfigError  # noqa: E402
from whisper_lora.inference.request import Request  # noqa: E402
from whisper_lora.registry.catalog import AdapterRegistry  # noqa: E402
from whisper_lora.serving import ray_front, ray_replica  # noqa: E402
from whisper_lora.serving.config import RayConfig, ServerConfig  # noqa: E402


class _Response:
    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        async def run():
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return run().__await__()

    def cancel(self):
        self.cancelled = True


class _Decoders:
    """A Serve handle whose calls give ``outcomes`` in turn."""

    def __init__(self, *outcomes):
        self.outcomes, self.responses = list(outcomes), []

    def options(self, **_):
        return self

    def remote(self, *_):
        self.responses.append(_Response(self.outcomes.pop(0)))
        return self.responses[-1]


def test_a_retry_cancels_the_call_on_the_unreachable_replica_first():
    decoders = _Decoders(ActorUnavailableError("unreachable", None), "the answer")
    spec = SimpleNamespace(multiplexed=False, ray=RayConfig(), server=ServerConfig())
    counted = []  # the ingress counts requests in flight (it hands freed memory back when none is left)
    engine = SimpleNamespace(spec=spec, decoders=decoders, replica_failures=0, registry=None)
    engine.started, engine.finished = lambda: counted.append(1), lambda: counted.append(-1)
    pending = ray_front._RayPending(engine, Request(np.zeros(16000, np.float32), "sw"))
    assert asyncio.run(pending.result()) == "the answer"
    assert counted == [1, -1]
    first, second = decoders.responses
    assert first.cancelled and not second.cancelled  # the first copy may still run: it was told to stop
    assert engine.replica_failures == 1


def _spec(root, digest, reload=0.5):
    return ray_replica.ReplicaSpec(
        registry=str(root), digest=digest, server=ServerConfig(reload_seconds=reload), ray=RayConfig()
    )


def test_a_replica_waits_for_the_ingress_to_publish_a_registry_change(tiny_registry, monkeypatch):
    before = AdapterRegistry(tiny_registry).digest()
    stale = {**before, "sw": "an older sw"}  # what the ingress published before the disk changed
    published = {"digest": stale}
    monkeypatch.setattr(ray_replica, "current_digest", lambda spec: published["digest"])
    threading.Timer(0.6, lambda: published.update(digest=before)).start()  # the ingress looks again
    started = time.monotonic()
    assert ray_replica.visible_registry(_spec(tiny_registry, stale)) == tiny_registry
    assert 0.5 < time.monotonic() - started < 1.5
    published["digest"] = stale  # never published: refused with the fix after three reload intervals
    with pytest.raises(ConfigError, match=r"differ: sw"):
        ray_replica.visible_registry(_spec(tiny_registry, stale, reload=0.2))
