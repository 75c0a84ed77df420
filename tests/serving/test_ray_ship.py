"""Where the registry lives for ``serve --ray``: sent with the application (``--ship-adapters``, Ray's runtime_env
working directory), or refused with the fix when a replica cannot see it.

Three adapters with the default ``--max-loaded 8``: not multiplexed, every replica holds every adapter, so requests
that mix languages are micro-batched together as in one process.
"""

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import REPO_ADAPTERS
from tests.serving.conftest import shutdown_serve, wav_bytes
from whisper_lora.serving.process import free_port, running

pytestmark = pytest.mark.slow


def test_shipped_registry_serves_every_adapter_in_every_replica(ray_cluster, ray_clips, ray_reference, tmp_path):
    shipped = tmp_path / "adapters"
    shutil.copytree(REPO_ADAPTERS, shipped)
    args = ["serve", "--ray", "--ray-address", ray_cluster, "--ship-adapters", "--adapters", str(shipped)]
    try:
        with running(args, timeout=600) as url:
            h = httpx.get(f"{url}/health", timeout=60).json()
            assert h["multiplexed"] is False and len(h["replicas"]) == 1
            assert sorted(h["replicas"][0]["loaded_adapters"]) == ["cs", "id", "sw"]  # all held from the start
            todo = [(name, audio) for name, audio, _, _ in ray_clips]
            with ThreadPoolExecutor(len(todo)) as pool:  # every language at once: mixed micro-batches
                replies = list(
                    pool.map(
                        lambda x: httpx.post(
                            f"{url}/v1/audio/transcriptions",
                            data={"model": "auto", "response_format": "verbose_json"},
                            files={"file": ("clip.wav", wav_bytes(x[1]))},
                            timeout=300,
                        ),
                        todo,
                    )
                )
            got = {name: r.json() for (name, _), r in zip(todo, replies, strict=True)}
            for name, body in got.items():
                assert (body["text"], body["language_code"], body["adapter"], body["route"]) == ray_reference[
                    name, "auto"
                ], name
    finally:
        shutdown_serve()


def test_a_replica_that_cannot_see_the_registry_is_refused_with_the_fix(ray_cluster):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "whisper_lora.cli", "serve", "--ray", "--ray-address", ray_cluster]
        + ["--adapters", str(REPO_ADAPTERS), "--ray-adapters", "/nowhere/adapters", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]  # above it: the replicas' logs, as Ray forwards them
        assert last.startswith("whisper-lora: error: Ray Serve could not start the replicas: the replica on node")
        assert "cannot see the adapter registry /nowhere/adapters" in last and "--ship-adapters" in last, last
        assert time.monotonic() - started < 300
    finally:
        shutdown_serve()
