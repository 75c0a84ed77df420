"""Keys wherever the app is mounted, and a ``/health`` that tells a caller without a key only what any load balancer
needs: real server processes (``whisper-lora serve``, and ``create_app`` embedded under a prefix by a program of
its own), then the health document and the Ray ingress's description cache as units."""

import asyncio
import json
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from starlette.testclient import TestClient

from tests.serving.test_server_limits import SHORT, _post
from whisper_lora.serving.config import RayConfig, ServerConfig
from whisper_lora.serving.process import running
from whisper_lora.serving.server import PUBLIC_COUNTERS, create_app

KEY = "health-test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}

# create_app embedded the two ways an application is served under a prefix: mounted in a larger app
# (``app.mount("/asr", ...)``), or behind a proxy that strips the prefix (uvicorn's ``root_path``)
EMBED = """
import sys
import uvicorn
from fastapi import FastAPI
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.serving.config import ServerConfig
from whisper_lora.serving.server import create_app

base, adapters, how, key, _, port = sys.argv[1:]
t = Transcriber(base, adapters, precision="fp32", device="cpu", max_new_tokens=8)
asr = create_app(t, ServerConfig(api_keys=(key,)))
if how == "mount":
    app = FastAPI()
    app.mount("/asr", asr)
    uvicorn.run(app, host="127.0.0.1", port=int(port))
else:
    uvicorn.run(asr, host="127.0.0.1", port=int(port), root_path="/asr")
"""


@pytest.mark.parametrize("how", ["mount", "root_path"])
def test_the_key_is_needed_under_a_prefix(tiny_dir, tiny_registry, how):
    program = [sys.executable, "-c", EMBED]
    prefix = "/asr" if how == "mount" else ""  # behind a proxy the request arrives without the prefix
    args = [str(tiny_dir), str(tiny_registry), how, KEY]
    with running(args, ready_path=f"{prefix}/health", timeout=240, program=program) as url:
        base = url + prefix
        # before: the key check looked at the raw path, /asr/v1/... passed without a key
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert _post(base, SHORT, key=None).status_code == 401
        assert _post(base, SHORT, key="wrong-key-123").status_code == 401
        assert httpx.get(f"{base}/nowhere").status_code == 401  # every path but the open ones
        assert httpx.get(f"{base}/v1/models", headers=AUTH).status_code == 200
        assert _post(base, SHORT, key=KEY).status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/openapi.json").status_code == 200  # the API's own documentation stays open


@pytest.fixture(scope="module")
def server(tiny_dir, tiny_registry):
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(tiny_registry), "--precision", "fp32"]
    args += ["--device", "cpu", "--max-new-tokens", "8", "--api-key", KEY]
    with running(args, timeout=240) as url:
        yield url


def test_health_without_a_key_tells_only_status_limits_and_counters(server, tiny_registry):
    assert _post(server, SHORT, key=KEY).status_code == 200
    anonymous = httpx.get(f"{server}/health").json()
    assert set(anonymous) <= {"status", "limits", *PUBLIC_COUNTERS}, anonymous  # before: adapters, routing...
    assert anonymous["status"] == "ok" and anonymous["served"] == 1 and anonymous["limits"]["auth"] is True
    assert httpx.get(f"{server}/health", headers={"Authorization": "Bearer wrong-key-123"}).json() == anonymous
    full = httpx.get(f"{server}/health", headers=AUTH).json()
    assert {"adapters", "adapter_versions", "routing", "loaded_adapters", "base"} <= set(full)
    assert sorted(full["adapters"]) == ["ary", "cs", "sw"] and full["served"] == 1
    assert str(tiny_registry) not in json.dumps(full)


# ------------------------------------------------------------------ the health document as a unit


def _engine(routing: dict, status: dict):
    """An ``Engine`` (serving/engine.py) that reports ``routing`` and ``status``."""
    info = SimpleNamespace(name="whisper-base", precision="int8")
    entry = SimpleNamespace(name="cs", version="v1")
    return SimpleNamespace(
        base_info=info,
        graphs=False,
        registry=SimpleNamespace(entries=lambda: [entry]),
        adapters=lambda: ["cs"],
        broken_adapters=lambda: [],
        routing=lambda: routing,
        refresh=lambda _: None,
        status=lambda: _coroutine(dict(status)),
        close=lambda: None,
    )


async def _coroutine(value):
    return value


def test_every_text_in_health_is_without_server_paths():
    routing = {"adapters": {"cs": {"route": "whisper-lid", "reason": "/srv/asr/adapters/cs/p.safetensors is damaged"}}}
    replicas = [{"replica": "r1", "error": "cannot read /home/ops/adapters/sw/whisper_lora.json"}]
    engine = _engine(routing, {"engine": "ray", "replicas": replicas, "in_flight": 0, "served": 3})
    with TestClient(create_app(engine, ServerConfig(api_keys=(KEY,)))) as client:
        full = client.get("/health", headers=AUTH).json()
        anonymous = client.get("/health").json()
    text = json.dumps(full)
    assert "/srv/" not in text and "/home/" not in text, text  # before: the routing reason kept its path
    assert full["routing"]["adapters"]["cs"]["reason"] == "p.safetensors is damaged"
    assert full["replicas"][0]["error"] == "cannot read whisper_lora.json"
    assert full["graphs"] is False  # says whether decoding is compiled (inference/graphs.py)
    assert anonymous == {"status": "ok", "limits": ServerConfig(api_keys=(KEY,)).public(), "in_flight": 0, "served": 3}


def test_without_keys_health_is_the_full_document():
    engine = _engine(None, {"engine": "local", "in_flight": 0})
    with TestClient(create_app(engine, ServerConfig())) as client:
        assert client.get("/health").json()["adapters"] == ["cs"]


def test_ray_health_asks_the_replicas_once_for_many_calls(tmp_path, monkeypatch):
    from whisper_lora.serving import ray_front
    from whisper_lora.serving.ray_replica import ReplicaInfo, ReplicaSpec

    base = SimpleNamespace(name="b", precision="fp32")
    info = ReplicaInfo("r1", "10.0.0.7", 4242, "cpu", 1, [], None, base, None, {"in_flight": 0, "served": 0})

    class Decoders:  # the Decoder deployment's handle: counts the broadcasts
        broadcasts = 0

        def broadcast(self, method):
            assert method == "describe"
            Decoders.broadcasts += 1
            return SimpleNamespace(results_async=self._answers)

        async def _answers(self, timeout_s, return_exceptions):
            assert timeout_s == ray_front.DESCRIBE_TIMEOUT  # the wait is bounded
            await asyncio.sleep(0.2)
            return [info]

    monkeypatch.setattr(ray_front, "DESCRIBE_CACHE", 0.5)
    spec = ReplicaSpec(registry=str(tmp_path), digest={}, server=ServerConfig(), ray=RayConfig())
    engine = ray_front.RayEngine(Decoders(), spec, tmp_path, info)

    async def main():
        first = await asyncio.gather(*(engine.status() for _ in range(50)))
        assert Decoders.broadcasts == 1  # before: 50
        assert all(s["replicas"][0]["node"] == "10.0.0.7" for s in first)
        await engine.status()  # within DESCRIBE_CACHE: the same answers
        assert Decoders.broadcasts == 1
        time.sleep(0.6)
        await asyncio.gather(*(engine.status() for _ in range(10)))
        assert Decoders.broadcasts == 2

    asyncio.run(main())
