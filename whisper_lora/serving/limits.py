"""What the server refuses before it spends work: oversized bodies, overlong audio, missing keys.

- ``Guard``: an ASGI middleware that refuses, before reading the body, requests over the concurrency
  limit (503), without a valid key (401), or with a ``Content-Length`` over the limit (413), and counts
  the bytes of a body without one (chunked) as they arrive, stopping at the limit;
- ``audio_seconds``: a recording's duration from its container header (wav, flac, ogg/vorbis,
  ogg/opus, mp3: libsndfile reads only the header), so ``--max-audio-seconds`` is checked before
  the audio is decoded;
- ``api_key_ok``: ``Authorization: Bearer <key>``, as the official ``openai`` client sends it, compared
  in constant time against the server's keys;
- ``public``: an error message with absolute paths cut to their last part (paths go to the log only).
"""

from __future__ import annotations

import hmac
import io
import json
import re
from collections.abc import Sequence

from starlette.exceptions import HTTPException

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"(),;:]+/)+([^\s'\"(),;:/]*)")


def public(message: str) -> str:
    """``message`` without absolute paths: ``/srv/adapters/cs/x.json`` becomes ``x.json``."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<path>", message)


def error_body(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> bytes:
    """The OpenAI-style error document every failure answers with."""
    return json.dumps({"error": {"message": public(message), "type": kind, "param": param, "code": status}}).encode()


class BodyTooLarge(HTTPException):
    """The request body passed ``limit`` bytes (an HTTP error, so FastAPI's body parsing passes it on as 413)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes (--max-upload-mb)")
        self.limit = limit

    def __str__(self) -> str:
        return self.detail


class Guard:
    """ASGI middleware in front of the API: request concurrency, API keys and body size, each refused with an
    OpenAI-style JSON error before the body is read.

    - more than ``max_requests`` requests in progress: 503 with ``Retry-After``;
    - ``keys`` set and a path under ``/v1/`` without ``Authorization: Bearer <key>``: 401 (``/health`` is open);
    - ``Content-Length`` over ``max_body``: 413 at once; a body without one (chunked) is counted as it
      arrives and refused the moment it passes the limit.
    """

    def __init__(self, app, max_body: int, keys: Sequence[str] = (), max_requests: int | None = None):
        self.app, self.max_body, self.keys, self.max_requests = app, max_body, tuple(keys), max_requests
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.keys and scope.get("path", "").startswith("/v1/") and scope.get("method") != "OPTIONS":
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not api_key_ok(auth, self.keys):
                why = "no API key given" if not auth else "the API key is not valid"
                message = f"{why}: send 'Authorization: Bearer <key>' with a key of this server (--api-key)"
                return await _answer(
                    send, 401, message, kind="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")]
                )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await _answer(send, 413, str(BodyTooLarge(self.max_body)), "file")
        counted = scope.get("path") != "/health"  # health checks are answered even when the server is full
        if counted and self.max_requests is not None and self.active >= self.max_requests:
            message = f"the server is busy: {self.active} requests in progress (limit {self.max_requests}); retry soon"
            return await _answer(send, 503, message, kind="server_busy", headers=[(b"retry-after", b"1")])
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.active += counted
        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as e:
            if not started:
                await _answer(send, 413, str(e), "file")
        finally:
            self.active -= counted


async def _answer(
    send, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", headers=()
) -> None:
    body = error_body(status, message, param, kind)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def audio_seconds(data: bytes) -> float | None:
    """Duration of an encoded recording from its header; None when libsndfile cannot read the container
    (the caller then measures the decoded signal instead)."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any container libsndfile does not know
        return None
    if not info.samplerate or info.frames <= 0:
        return None
    return info.frames / info.samplerate


def api_key_ok(authorization: str | None, keys: Sequence[str]) -> bool:
    """True when ``Authorization: Bearer <key>`` carries one of ``keys`` (constant-time comparison)."""
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    token_b = token.strip().encode()
    return any(hmac.compare_digest(token_b, k.encode()) for k in keys)
