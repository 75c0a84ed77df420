"""Sockets a hostile client opens and never finishes, against a real server process: idle sockets, headers and
bodies trickled a byte at a time, more sockets than the server holds. Each is closed within its deadline (the
header deadline of ``connections.py``, the body deadline of ``limits.Guard``) while a normal client is served; the
body deadline, the socket cap and the request count are also tested as units."""

import asyncio
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from tests.inference.test_transcriber import AUDIO
from tests.serving.test_server_limits import LONG, SHORT, _post, _reply, _wav
from whisper_lora.errors import ConfigError
from whisper_lora.serving.config import ServerConfig
from whisper_lora.serving.limits import Guard
from whisper_lora.serving.process import running

KEY = "conn-test-key-1"
HEADER_TIMEOUT = BODY_TIMEOUT = 3.0
MIN_RATE = 8000  # bytes/s
MAX_OPEN = 480
IDLE, TRICKLING = 300, 150  # the sockets of the measurement


@pytest.fixture(scope="module")
def server(tiny_dir, tiny_registry):
    args = ["serve", "--base", str(tiny_dir), "--adapters", str(tiny_registry), "--precision", "fp32"]
    args += ["--device", "cpu", "--max-new-tokens", "32", "--api-key", KEY, "--max-connections", "4"]  # LONG: seconds
    args += ["--header-timeout-seconds", str(HEADER_TIMEOUT), "--body-timeout-seconds", str(BODY_TIMEOUT)]
    args += ["--body-min-rate", str(MIN_RATE), "--max-open-connections", str(MAX_OPEN)]
    with running(args, timeout=240) as url:
        yield url


def _address(url: str) -> tuple[str, int]:
    return urlparse(url).hostname, urlparse(url).port


def _upload_headers(length: int) -> bytes:
    return (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _closed(socks: list[socket.socket]) -> list[bool]:
    """Which sockets the server has closed (readable: its answer or end of file; nothing to read: still open)."""
    readable, _, _ = select.select(socks, [], [], 0)
    return [s in readable for s in socks]


def _closed_at(socks: list[socket.socket], within: float) -> list[float | None]:
    """When each socket was closed by the server (monotonic time; None: still open after ``within`` s)."""
    when: list[float | None] = [None] * len(socks)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and None in when:
        waiting = [s for s, w in zip(socks, when, strict=True) if w is None]
        readable, _, _ = select.select(waiting, [], [], 0.05)
        now = time.monotonic()
        for s in readable:
            when[socks.index(s)] = now
    return when


def test_idle_and_trickling_sockets_do_not_lock_out_a_client_and_are_closed_in_time(server):
    _post(server, SHORT, key=KEY)  # warm
    good_alone = _post(server, SHORT, key=KEY)
    assert good_alone.status_code == 200
    opened = time.monotonic()
    idle = [socket.create_connection(_address(server)) for _ in range(IDLE)]
    trickling = [socket.create_connection(_address(server)) for _ in range(TRICKLING)]
    for s in trickling:
        s.sendall(_upload_headers(100_000) + b"--b\r\n")
    stop = threading.Event()

    def trickle():  # a byte per socket every 0.2 s: 5 bytes/s, far below the minimum rate
        while not stop.wait(0.2):
            for s in trickling:
                try:
                    s.send(b"z")
                except OSError:
                    pass

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        time.sleep(0.3)
        sent = time.monotonic()
        good = _post(server, SHORT, key=KEY)
        latency = time.monotonic() - sent
        still_open = _closed(idle + trickling).count(False)
        assert good.status_code == 200, good.text  # before: 503, the trickled uploads held --max-connections
        assert good.json() == good_alone.json()
        assert still_open == IDLE + TRICKLING, f"answered after {time.monotonic() - opened:.1f} s: not while open"
        idle_closed = _closed_at(idle, HEADER_TIMEOUT + 3)
        trickle_closed = _closed_at(trickling, BODY_TIMEOUT + 3)
    finally:
        stop.set()
        feeder.join()
    assert None not in idle_closed, f"{idle_closed.count(None)} idle sockets still open"  # before: all of them
    assert None not in trickle_closed, f"{trickle_closed.count(None)} trickling sockets still open"
    idle_after = max(idle_closed) - opened
    trickle_after = max(trickle_closed) - opened
    assert HEADER_TIMEOUT - 0.5 < idle_after < HEADER_TIMEOUT + 2, idle_after
    assert BODY_TIMEOUT - 0.5 < trickle_after < BODY_TIMEOUT + 2.5, trickle_after
    reply = _reply(trickling[0])
    assert reply.startswith("HTTP/1.1 408") and "arrived too slowly" in reply, reply[:300]
    print(
        f"\n{IDLE} idle + {TRICKLING} trickling sockets open: a normal request took {latency:.2f} s "
        f"(alone before: {good_alone.elapsed.total_seconds():.2f} s); idle sockets closed after {idle_after:.1f} s, "
        f"trickled uploads answered 408 after {trickle_after:.1f} s"
    )
    for s in idle + trickling:
        s.close()


def test_headers_trickled_a_byte_at_a_time_meet_the_header_deadline(server):
    with socket.create_connection(_address(server)) as s:
        opened = time.monotonic()
        head = _upload_headers(10)
        for i in range(len(head) - 2):  # never quite complete; each byte well within the deadline
            if _closed([s])[0]:
                break
            s.send(head[i : i + 1])
            time.sleep(0.1)
        closed_after = time.monotonic() - opened
        assert _reply(s) == ""  # closed without an answer: there was no request
    assert HEADER_TIMEOUT - 0.5 < closed_after < HEADER_TIMEOUT + 1, closed_after


def test_a_slow_upload_that_keeps_the_minimum_rate_is_served(server):
    body_parts = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsw\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    clip = _wav(np.tile(AUDIO[1], 2))  # about 6 s of audio, 190 kB
    body = body_parts + clip + b"\r\n--b--\r\n"
    rate = 2 * MIN_RATE  # takes longer than BODY_TIMEOUT in all: the deadline grows with what arrives
    assert len(body) / rate > BODY_TIMEOUT
    with socket.create_connection(_address(server)) as s:
        s.sendall(_upload_headers(len(body)))
        started = time.monotonic()
        for i in range(0, len(body), rate // 10):
            s.sendall(body[i : i + rate // 10])
            time.sleep(max(0.0, started + (i + rate // 10) / rate - time.monotonic()))
        reply = _reply(s)
    assert reply.startswith("HTTP/1.1 200"), reply[:300]


def test_sockets_past_the_cap_are_closed_at_once(server):
    socks = []
    try:
        for _ in range(MAX_OPEN + 20):
            socks.append(socket.create_connection(_address(server)))
        closed = _closed_at(socks, 1.0)
        refused = [w is not None for w in closed]
        assert sum(refused) >= 20, sum(refused)  # before: none
        assert not any(refused[: MAX_OPEN - 10]), "sockets within the cap were closed"  # those open keep their place
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10  # the server sees them go; a client is served again
    while (r := _post(server, SHORT, key=KEY)).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_requests_whose_body_arrived_hold_the_limit_and_health_stays_open(server):
    with ThreadPoolExecutor(4) as pool:  # --max-connections 4: four long recordings in progress
        longs = [pool.submit(_post, server, LONG, key=KEY, timeout=httpx.Timeout(30, read=3)) for _ in range(4)]
        time.sleep(1.0)
        busy = _post(server, SHORT, key=KEY)
        assert httpx.get(f"{server}/health").status_code == 200
        for f in longs:  # answered, or given up by the client after 3 s (the server cancels the work)
            assert isinstance(f.exception(), httpx.ReadTimeout | None)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "requests in progress (limit 4)" in busy.json()["error"]["message"]
    deadline = time.monotonic() + 20
    while (r := _post(server, SHORT, key=KEY)).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.3)


def test_connection_settings_are_checked():
    with pytest.raises(ConfigError) as e:
        ServerConfig(header_timeout_seconds=0, body_timeout_seconds=-1, body_min_rate=-5, max_open_connections=64)
    text = str(e.value)
    assert "header_timeout_seconds=0 must be > 0" in text and "body_timeout_seconds=-1" in text
    assert "body_min_rate=-5 must be >= 0" in text and "max_open_connections=64 must be >= max_connections=128" in text


# ------------------------------------------------------------------ Guard as a unit: body deadline and counting


class _App:
    """An ASGI app that reads the whole body, then waits for ``release`` before answering 200."""

    def __init__(self):
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send):
        while (await receive()).get("more_body", False):
            pass
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _scope(length: int | None = 3, path: str = "/v1/audio/transcriptions") -> dict:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "method": "POST" if length else "GET", "path": path, "root_path": "", "headers": headers}


def _receiver(chunks: list[tuple[float, bytes, bool]]):
    """``receive`` that gives each (delay, body, more_body) after its delay."""
    items = iter(chunks)

    async def receive():
        delay, body, more = next(items)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": body, "more_body": more}

    return receive


def _sender(out: list):
    async def send(message):
        out.append(message)

    return send


def _status(out: list) -> int:
    return next(m["status"] for m in out if m["type"] == "http.response.start")


def test_body_deadline_grows_with_what_arrives_and_refuses_a_trickle():
    async def main():
        guard = Guard(_App(), max_body=10**6, body_timeout=0.3, body_min_rate=100)
        guard.app.release.set()
        trickle, out = [(0.1, b"z", True)] * 10 + [(0, b"", False)], []
        await guard(_scope(11), _receiver(trickle), _sender(out))  # 1 byte / 0.1 s: 10 B/s < 100 B/s
        assert _status(out) == 408 and (b"connection", b"close") in out[0]["headers"]
        steady, out = [(0.1, b"z" * 20, True)] * 6 + [(0, b"", False)], []
        await guard(_scope(120), _receiver(steady), _sender(out))  # 200 B/s for 0.6 s, past the 0.3 s allowance
        assert _status(out) == 200
        flat = Guard(guard.app, max_body=10**6, body_timeout=0.3, body_min_rate=0)  # no rate: 0.3 s in all
        out = []
        await flat(_scope(120), _receiver(steady), _sender(out))
        assert _status(out) == 408

    asyncio.run(main())


def test_uploads_count_against_the_request_limit_only_once_arrived():
    async def main():
        app = _App()
        guard = Guard(app, max_body=10**6, max_requests=1, body_timeout=5)
        uploading = asyncio.ensure_future(guard(_scope(3), _receiver([(10, b"abc", False)]), _sender([])))
        await asyncio.sleep(0.05)
        assert guard.active == 0  # an upload still arriving does not hold the limit
        out = []
        first = asyncio.ensure_future(guard(_scope(3), _receiver([(0, b"abc", False)]), _sender(out)))
        await asyncio.sleep(0.05)
        assert guard.active == 1  # arrived, in progress
        late = []
        await guard(_scope(None, "/v1/models"), _receiver([]), _sender(late))  # full: refused before its body
        assert _status(late) == 503 and (b"retry-after", b"1") in late[0]["headers"]
        app.release.set()
        await first
        assert _status(out) == 200 and guard.active == 0
        uploading.cancel()

    asyncio.run(main())


def test_an_answer_before_the_body_is_read_closes_the_connection():
    async def not_found(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    out = []
    asyncio.run(Guard(not_found, max_body=100)(_scope(50), _receiver([]), _sender(out)))
    assert (b"connection", b"close") in out[0]["headers"]  # else the unread body could trickle in forever
