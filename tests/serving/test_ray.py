"""``whisper-lora serve --ray``: two replicas on a local Ray cluster, the shipped adapters multiplexed (``--max-loaded
2`` for three adapters, so each request travels to a replica holding its adapter; ``model=auto`` is routed first).

Answers through the ingress (this command's own HTTP server) equal one in-process ``Transcriber``'s on the same clips (synthetic sw and id, real
Czech for the encoder-adapted ``cs``, real English for the base), the ``openai`` client works, ``/health`` lists the
replicas and their adapters, and a replica killed under load costs no hang: every answer is the right one or a clear
503, and the service comes back to two replicas.

Where the registry lives is tested first, with services of their own: sent with the application (``--ship-adapters``,
Ray's runtime_env working directory; three adapters under the default ``--max-loaded 8``, so not multiplexed: every
replica holds every adapter and mixed languages share micro-batches), or refused with the fix when a replica cannot
see it. The ``service`` fixture starts after them (tests run in file order).
"""

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import REPO_ADAPTERS
from tests.serving.conftest import kill_replica, shutdown_serve, wav_bytes
from whisper_lora.serving.process import free_port, running

pytestmark = pytest.mark.slow
KEY = "ray-test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


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


RAY_TIMEOUTS = 10.0  # header and body deadlines of the Ray service below, in seconds


class TestTheIngressLimitsHoldOnRay:
    """``serve --ray`` serves HTTP from its own process on ``serve``'s uvicorn (Ray's proxy has no header deadline
    and no socket cap): the socket tests of ``test_connections.py`` and the bad-input suite of ``test_abuse.py``,
    run against a Ray service of the tiny model with the same settings. Before: idle and trickling sockets stayed
    open, sockets past the cap were accepted. Class-scoped: it leaves the cluster's CPUs to ``service``."""

    @pytest.fixture(scope="class")
    def tiny_service(self, ray_cluster, tiny_dir, tiny_registry):
        from tests.serving import test_abuse
        from tests.serving import test_connections as tc

        args = ["serve", "--ray", "--ray-address", ray_cluster, "--replicas", "1", "--base", str(tiny_dir)]
        args += ["--adapters", str(tiny_registry), "--precision", "fp32", "--max-new-tokens", "8"]
        args += ["--api-key", tc.KEY, "--api-key", test_abuse.KEY, "--max-audio-seconds", "600"]
        args += ["--max-connections", "4", "--header-timeout-seconds", str(RAY_TIMEOUTS)]
        args += ["--body-timeout-seconds", str(RAY_TIMEOUTS), "--body-min-rate", str(tc.MIN_RATE)]
        args += ["--max-open-connections", str(tc.MAX_OPEN)]
        # the socket tests read their deadlines from their module: longer ones here, since a request through a
        # replica on a loaded 2-core machine may take seconds, and the sockets must still be open when it is served
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tc, "HEADER_TIMEOUT", RAY_TIMEOUTS)
            mp.setattr(tc, "BODY_TIMEOUT", RAY_TIMEOUTS)
            try:
                with running(args, timeout=600) as url:
                    yield url
            finally:
                shutdown_serve()

    def test_idle_and_trickling_sockets_are_closed_in_time_while_a_client_is_served(self, tiny_service):
        from tests.serving import test_connections as tc

        tc.test_idle_and_trickling_sockets_do_not_lock_out_a_client_and_are_closed_in_time(tiny_service)
        tc.test_headers_trickled_a_byte_at_a_time_meet_the_header_deadline(tiny_service)
        tc.test_sockets_past_the_cap_are_closed_at_once(tiny_service)

    def test_hostile_uploads_get_json_4xx_fast_and_the_ingress_stays_right_and_small(self, tiny_service):
        from tests.serving import test_abuse

        test_abuse.test_hostile_uploads_get_json_4xx_fast_and_the_server_stays_right_and_small(tiny_service)
        test_abuse.test_silence_and_speech_at_odd_but_real_rates_are_served(tiny_service)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A copy of the shipped registry on a path every replica sees (this machine's disk)."""
    root = tmp_path_factory.mktemp("shared") / "adapters"
    shutil.copytree(REPO_ADAPTERS, root)
    return root


@pytest.fixture(scope="module")
def service(ray_cluster, ray_reference, registry):  # the reference first: it loads a model of its own, then frees it
    args = ["serve", "--ray", "--ray-address", ray_cluster, "--replicas", "2", "--max-loaded", "2"]
    args += ["--adapters", str(registry)]
    env = {**os.environ, "WHISPER_LORA_API_KEY": KEY}  # the server's keys hold on Ray too (checked by the ingress)
    try:
        with running(args, timeout=600, env=env) as url:
            yield url
    finally:
        shutdown_serve()


def _post(url, audio, model, timeout=300, key=KEY):
    return httpx.post(
        f"{url}/v1/audio/transcriptions",
        data={"model": model, "response_format": "verbose_json"},
        files={"file": ("clip.wav", wav_bytes(audio))},
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=timeout,
    )


def _answer(r) -> tuple:
    body = r.json()
    return (body["text"], body["language_code"], body["adapter"], body["route"])


def _requests(clips):
    """Every clip with ``model=auto`` and with its own adapter: (clip name, model, audio)."""
    out = [(name, "auto", audio) for name, audio, _, _ in clips]
    return out + [(name, adapter, audio) for name, audio, _, adapter in clips if adapter]


def test_answers_equal_the_transcriber_including_the_encoder_adapter(service, ray_clips, ray_reference):
    todo = _requests(ray_clips)
    with ThreadPoolExecutor(6) as pool:  # concurrent: micro-batches on both replicas, adapters moving between them
        replies = list(pool.map(lambda x: _post(service, x[2], x[1]), todo))
    assert [r.status_code for r in replies] == [200] * len(todo), [r.text[:200] for r in replies]
    got = {(name, model): _answer(r) for (name, model, _), r in zip(todo, replies, strict=True)}
    assert got == {k: ray_reference[k] for k in got}
    assert got["cs0", "auto"][2] == "cs" and got["cs0", "auto"][3] == "router"  # real Czech routed to cs
    assert got["en0", "auto"][2] is None  # English: no adapter, the untouched base


def test_the_openai_client_works(service, ray_clips, ray_reference):
    from openai import OpenAI

    client = OpenAI(base_url=f"{service}/v1", api_key=KEY, max_retries=0)
    name, audio, lang, adapter = next(c for c in ray_clips if c[3] == "cs")
    reply = client.audio.transcriptions.create(
        model=adapter, file=("cs.wav", wav_bytes(audio)), language=lang, response_format="verbose_json"
    )
    assert reply.text == ray_reference[name, adapter][0] and reply.language == "czech"
    assert "cs" in {m.id for m in client.models.list().data}


def test_health_lists_replicas_and_their_adapters(service, ray_clips):
    refused = _post(service, ray_clips[0][1], "sw", key=None)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    garbage = httpx.post(  # bad input through Ray: the same clear 4xx as one process
        f"{service}/v1/audio/transcriptions",
        data={"model": "sw"},
        files={"file": ("notes.wav", b"not audio at all")},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert garbage.status_code == 400 and "could not decode 'notes.wav'" in garbage.json()["error"]["message"]
    unknown = _post(service, ray_clips[0][1], "klingon-xx")
    assert unknown.status_code == 404 and "valid models:" in unknown.json()["error"]["message"]
    deadline = time.monotonic() + 180  # run alone, this test may find the second replica still starting
    while len((h := httpx.get(f"{service}/health", headers=AUTH, timeout=60).json())["replicas"]) < 2:
        assert time.monotonic() < deadline, h
        time.sleep(1)
    anonymous = [httpx.get(f"{service}/health", timeout=60) for _ in range(20)]  # one broadcast every 2 s at most
    for r in anonymous:  # nodes, pids, devices and adapters: for key holders only
        assert r.status_code == 200 and r.json()["status"] == h["status"]
        assert set(r.json()) <= {"status", "limits", "in_flight", "served", "replica_failures"}, r.json()
    assert h["limits"]["auth"] is True
    assert h["engine"] == "ray" and h["status"] == "ok" and h["multiplexed"] is True and h["max_loaded"] == 2, h
    releases = lambda: httpx.get(f"{service}/health", headers=AUTH, timeout=60).json()["ingress_memory_releases"]  # noqa: E731
    before = releases()
    time.sleep(1.1)  # past the release interval of the requests before
    assert _post(service, ray_clips[0][1], "sw").status_code == 200
    deadline = time.monotonic() + 10  # once nothing is in flight the ingress hands the freed memory back
    while releases() <= before:
        assert time.monotonic() < deadline, "the ingress never released freed memory"
        time.sleep(0.5)
    assert len(h["replicas"]) == 2 and len({r["replica"] for r in h["replicas"]}) == 2
    assert sorted(h["adapters"]) == ["cs", "id", "sw"]
    for r in h["replicas"]:  # each holds at most max_loaded adapters, and says which
        assert len(r["loaded_adapters"]) <= 2 and set(r["multiplexed_adapters"]) <= {"cs", "id", "sw"}
    assert sum(r["served"] for r in h["replicas"]) >= 1


def _busy_replica(url: str) -> str:
    """A replica with requests in flight."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replicas = httpx.get(f"{url}/health", headers=AUTH, timeout=60).json()["replicas"]
        busy = [r["replica"] for r in replicas if r["in_flight"] > 0]
        if busy:
            return busy[0]
        time.sleep(0.2)
    raise AssertionError("no replica ever had a request in flight")


def test_a_replica_killed_under_load_gives_right_answers_or_503_and_recovers(
    service, registry, ray_clips, ray_reference
):
    # the registry changed on disk since the start (an edited model card): the replacement replica must accept what
    # is served now, not refuse it for differing from what the command saw when it started
    with open(registry / "sw" / "README.md", "a", encoding="utf-8") as f:
        f.write("\nEdited while serving.\n")
    # no wait for the ingress to publish the change (it looks every 2 s): a replica started before it does looks again
    todo = _requests(ray_clips)[:8]
    started = time.monotonic()
    with ThreadPoolExecutor(len(todo)) as pool:
        futures = [pool.submit(_post, service, audio, model, 240) for _, model, audio in todo]
        busy = _busy_replica(service)
        killed = kill_replica(busy)
        replies = [f.result() for f in futures]  # a hang would raise httpx's timeout here
    assert time.monotonic() - started < 240
    right = 0
    for (name, model, _), r in zip(todo, replies, strict=True):
        if r.status_code == 200:
            assert _answer(r) == ray_reference[name, model], (killed, name, model)
            right += 1
        else:  # the only other answer allowed: a clear, retryable 503
            assert r.status_code == 503 and r.headers["retry-after"], r.text[:300]
            assert r.json()["error"]["code"] == "server_unavailable"
    assert right >= len(todo) // 2
    h = httpx.get(f"{service}/health", timeout=60).json()  # a counter: no key needed
    assert h["replica_failures"] >= 1  # the kill hit requests in flight: they were retried or refused, not lost
    deadline = time.monotonic() + 180  # Serve's controller starts a new replica
    while time.monotonic() < deadline:
        h = httpx.get(f"{service}/health", headers=AUTH, timeout=60).json()
        if len(h["replicas"]) == 2 and h["status"] == "ok" and busy not in {r["replica"] for r in h["replicas"]}:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the service did not come back to 2 replicas: {h.get('replicas')}")
    name, model, audio = todo[0]
    assert _answer(_post(service, audio, model)) == ray_reference[name, model]
