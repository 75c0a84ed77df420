"""A server you can put on a network, tested against real server processes: keys, limits, fairness, errors,
cancellation and adapters replaced on disk while serving."""

import io
import json
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import make_tiny_adapter
from tests.inference.test_transcriber import AUDIO
from whisper_lora.inference.transcriber import Transcriber
from whisper_lora.serving.process import running

KEYS = ("key-aaaa-1111", "key-bbbb-2222")
ORIGIN = "https://app.example.org"


def _wav(audio: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format=fmt)
    return buf.getvalue()


SHORT = _wav(AUDIO[1])
LONG = _wav(np.concatenate([AUDIO[0]] * 5))  # about 36 s: long-form, seconds of work with --max-new-tokens 32
TOO_LONG = np.concatenate([AUDIO[0]] * 7)  # about 50 s: over the 40 s limit


def _post(url, wav, model="sw", key=KEYS[0], fmt="json", filename="a.wav", timeout=120, **form):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = {"model": model, "response_format": fmt, **form}
    return httpx.post(
        f"{url}/v1/audio/transcriptions", data=data, files={"file": (filename, wav)}, headers=headers, timeout=timeout
    )


def _reply(s: socket.socket) -> str:
    """What the server answered on a raw socket, up to its closing the connection."""
    s.settimeout(10)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data.decode("latin-1")


def _no_paths(text: str, *roots) -> None:
    for root in roots:
        assert str(root) not in text, f"a server path leaked: {text[:300]}"
    assert "/tmp/" not in text and "Traceback" not in text, text[:300]


@pytest.fixture(scope="module")
def registry(tiny_registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("served") / "adapters"
    shutil.copytree(tiny_registry, root)
    shutil.copytree(root / "sw", root / "id")  # a broken adapter, to see its reason without server paths
    meta = json.loads((root / "id" / "whisper_lora.json").read_text())
    meta["language"] = "klingon"
    (root / "id" / "whisper_lora.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def server(tiny_dir, registry):
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(registry), "--precision", "fp32", "--device", "cpu"]
    # 32 tokens a window: LONG then takes a few seconds on the tiny model (it loops to the cap at every temperature)
    args += ["--max-new-tokens", "32", "--max-upload-mb", "2", "--max-audio-seconds", "40", "--max-queue", "2"]
    args += ["--max-connections", "3", "--cors-origin", ORIGIN]
    env = {**os.environ, "WHISPER_LORA_API_KEY": ",".join(KEYS)}  # keys from the environment
    with running(args, timeout=240, env=env) as url:
        yield url


def test_keys_are_required_the_way_the_openai_client_sends_them(server):
    import openai

    assert httpx.get(f"{server}/health").status_code == 200  # open, for load balancers
    missing = _post(server, SHORT, key=None)
    assert missing.status_code == 401 and "no API key given" in missing.json()["error"]["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong-key-000").audio.transcriptions.create(
            model="sw", file=("a.wav", SHORT)
        )
    for key in KEYS:  # either key works
        out = openai.OpenAI(base_url=f"{server}/v1", api_key=key).audio.transcriptions.create(
            model="sw", file=("a.wav", SHORT)
        )
        assert out.text == _post(server, SHORT, key=key).json()["text"]
    assert httpx.get(f"{server}/health").json()["limits"]["auth"] is True


def test_cors_only_for_the_given_origin(server):
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(f"{server}/v1/audio/transcriptions", headers=pre)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(f"{server}/v1/audio/transcriptions", headers={**pre, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_audio_duration_is_refused_from_the_header(server):
    served = httpx.get(f"{server}/health").json()["served"]
    for fmt in ("WAV", "FLAC", "OGG"):
        r = _post(server, _wav(TOO_LONG, fmt), filename=f"long.{fmt.lower()}")
        assert r.status_code == 413, (fmt, r.text)
        assert "at most 40 s (--max-audio-seconds)" in r.json()["error"]["message"]
    # a FLAC cut after 8 kB: its header says 50 s, its frames cannot be decoded (400 if they were tried);
    # refused from the header, never decoded
    r = _post(server, _wav(TOO_LONG, "FLAC")[:8192], filename="cut.flac")
    assert r.status_code == 413 and "the audio is 49.7 s long" in r.json()["error"]["message"]
    assert httpx.get(f"{server}/health").json()["served"] == served


def test_oversized_bodies_are_refused_while_they_are_read(server):
    host, port = urlparse(server).hostname, urlparse(server).port
    with socket.create_connection((host, port), timeout=30) as s:  # Content-Length over the limit: 413 at once
        s.sendall(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {50 * 2**20}\r\n\r\n".encode()
        )
        reply = _reply(s)
    assert reply.startswith("HTTP/1.1 413") and "larger than the limit" in reply
    with socket.create_connection((host, port), timeout=30) as s:  # chunked, no length: counted as it arrives
        s.sendall(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        sent, reply = 0, ""
        chunk = b"z" * 65536
        try:
            while sent < 8 * 2**20 and not reply:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                s.settimeout(0.01)
                try:
                    reply = s.recv(65536).decode("latin-1")
                except TimeoutError:
                    pass
                s.settimeout(30)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply += _reply(s)
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert sent < 3 * 2**20, f"the server read {sent} bytes before refusing"  # limit 2 MiB + form overhead
    assert httpx.get(f"{server}/health").status_code == 200


def test_a_long_recording_does_not_hold_up_short_requests(server):
    alone = [_post(server, SHORT, model=m).json()["text"] for m in ("sw", "cs")]
    long_alone = _post(server, LONG).json()["text"]
    done = {}
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        long_future = pool.submit(_post, server, LONG)
        time.sleep(0.3)
        texts = []
        for m in ("sw", "cs", "sw", "cs"):
            texts.append(_post(server, SHORT, model=m).json()["text"])
        done["short"] = time.monotonic()
        long_text = long_future.result().json()["text"]
        done["long"] = time.monotonic()
    assert texts == alone * 2 and long_text == long_alone
    assert done["short"] < done["long"], f"short requests waited for the long one ({done}, from {started})"
    assert httpx.get(f"{server}/health").json()["long_yields"] > 0


def test_a_full_queue_answers_503_with_retry_after(server):
    with ThreadPoolExecutor(2) as pool:
        longs = [pool.submit(_post, server, LONG) for _ in range(2)]  # --max-queue 2: both in flight
        time.sleep(0.5)
        busy = _post(server, SHORT)
        assert all(f.result().status_code == 200 for f in longs)
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    assert "already queued" in busy.json()["error"]["message"]
    assert _post(server, SHORT).status_code == 200  # room again


def test_a_client_that_goes_away_cancels_its_work(server):
    before = httpx.get(f"{server}/health").json()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        _post(server, LONG, timeout=httpx.Timeout(30, read=0.8))  # gives up after 0.8 s
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/health").json()["cancelled"] == before:
        assert time.monotonic() < deadline, "the abandoned request was not cancelled"
        time.sleep(0.2)
    assert httpx.get(f"{server}/health").json()["in_flight"] == 0


def test_stalled_uploads_do_not_hold_the_connection_limit(server):
    host, port = urlparse(server).hostname, urlparse(server).port
    stalled = []
    for _ in range(4):  # --max-connections 3: more uploads that never finish (their body deadline closes them)
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n".encode()
        )
        stalled.append(s)
    try:
        time.sleep(0.5)
        assert _post(server, SHORT).status_code == 200  # requests count once their body has arrived
        assert httpx.get(f"{server}/health").status_code == 200  # (test_connections.py: the 503 past the limit)
    finally:
        for s in stalled:
            s.close()


@pytest.mark.parametrize(
    "filename", ["a." + "x" * 300, "../../etc/passwd", "name\nwith newline.wav", "ünï cødé.wav", ""]
)
def test_odd_filenames_are_fine(server, filename):
    r = _post(server, SHORT, filename=filename or "noext")
    assert r.status_code == 200, r.text
    assert r.json()["text"] == _post(server, SHORT).json()["text"]


def test_every_error_is_json_without_server_paths(server, registry, tiny_dir):
    bodies = [httpx.get(f"{server}/health").text]
    bodies.append(httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEYS[0]}"}).text)
    cases = [
        (_post(server, SHORT, model="id"), 503),  # broken adapter: its reason, no paths
        (_post(server, SHORT, model="klingon"), 404),
        (_post(server, b"not audio at all" * 10, filename="x." + "y" * 300), 400),
        (httpx.get(f"{server}/nowhere", headers={"Authorization": f"Bearer {KEYS[0]}"}), 404),
        (httpx.delete(f"{server}/health"), 405),
    ]
    for r, status in cases:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        bodies.append(r.text)
    for text in bodies:
        _no_paths(text, registry, tiny_dir, registry.parent)
    assert "broken" in bodies[-5] and "klingon" in bodies[-5]


def test_an_adapter_replaced_on_disk_is_what_decodes(server, registry, tiny_dir, tmp_path):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(SHORT)
    before = _post(server, SHORT, model="sw").json()["text"]
    auth = {"Authorization": f"Bearer {KEYS[0]}"}  # adapters and versions: for key holders only
    version = httpx.get(f"{server}/health", headers=auth).json()["adapter_versions"]["sw"]
    new = make_tiny_adapter(tiny_dir, tmp_path / "sw-new", "sw", seed=77)
    old = registry / ".sw.old"
    os.replace(registry / "sw", old)  # the way atomic_directory swaps a directory
    os.replace(new, registry / "sw")
    shutil.rmtree(old)
    expected_reg = tmp_path / "reg"
    expected_reg.mkdir()
    shutil.copytree(registry / "sw", expected_reg / "sw")
    expected = Transcriber(str(tiny_dir), expected_reg, precision="fp32", device="cpu", max_new_tokens=32)
    want = expected.transcribe(clip, "sw", adapter="sw").text
    assert want != before, "the new adapter must change the transcript for this test to mean anything"
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/health", headers=auth).json()["adapter_versions"]["sw"] == version:
        assert time.monotonic() < deadline, "/health never showed the replaced adapter"
        time.sleep(0.5)
    assert _post(server, SHORT, model="sw").json()["text"] == want


def test_a_request_past_the_timeout_gets_504_and_is_cancelled(tiny_dir, tiny_registry):
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(tiny_registry), "--precision", "fp32"]
    args += ["--device", "cpu", "--max-new-tokens", "8", "--request-timeout", "1"]
    longer = _wav(np.concatenate([AUDIO[0]] * 24))  # about 170 s: a few seconds on the tiny model
    with running(args, timeout=240) as url:
        started = time.monotonic()
        r = _post(url, longer, key=None)
        assert r.status_code == 504 and "--request-timeout" in r.json()["error"]["message"]
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 20
        while (h := httpx.get(f"{url}/health").json())["in_flight"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert h["cancelled"] == 1 and h["limits"]["auth"] is False
        assert _post(url, SHORT, key=None).status_code == 200
