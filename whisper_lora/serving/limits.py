"""What the server refuses before it spends work: oversized or slow bodies, overlong audio, missing keys.

- ``Guard``: an ASGI middleware that refuses, before reading the body, requests over the concurrency
  limit (503), without a valid key (401: every path but ``OPEN_PATHS``), or with a ``Content-Length`` over the
  limit (413), counts the bytes of a body without one (chunked) as they arrive, stopping at the limit, and
  answers 408 to a body that arrives too slowly (``connections.py`` times the headers before it);
- ``api_key_ok``: ``Authorization: Bearer <key>``, as the official ``openai`` client sends it, compared
  in constant time against the server's keys;
- ``public``: an error message with absolute paths cut to their last part (paths go to the log only).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Sequence

from starlette.exceptions import HTTPException

# paths answered without a key: the health check (its public part, ``server._health``) and the API's own
# documentation; every other path, API routes and unknown ones alike, needs a key when the server has keys
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

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


class _Refused(Exception):
    """Raised from ``receive`` while the application reads a body; ``Guard`` answers it (no exception handler of
    the application catches it: it is no HTTP error)."""

    def __init__(self, status: int, message: str, kind: str, headers=()):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, list(headers)


def route_path(scope) -> str:
    """The request's path within the application: without the prefix it is mounted under (``root_path``: a
    ``Mount``, or uvicorn's ``--root-path`` behind a proxy), which ASGI servers leave in ``scope["path"]``."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class Guard:
    """ASGI middleware in front of the API: keys, body size, body rate and request concurrency, each refused with an
    OpenAI-style JSON error (and the connection closed) without waiting for the rest of the body.

    - ``keys`` set: every path but ``OPEN_PATHS`` (relative to where the app is mounted) needs
      ``Authorization: Bearer <key>``, else 401;
    - ``Content-Length`` over ``max_body``: 413 at once; a body without one (chunked) is counted as it
      arrives and refused the moment it passes the limit;
    - a body still arriving ``body_timeout`` s after the headers, plus 1 s per ``body_min_rate`` bytes received,
      gets 408 (slow uploads and bodies trickled a byte at a time);
    - more than ``max_requests`` requests in progress: 503 with ``Retry-After``. A request counts once its body
      has arrived (uploads still arriving are bounded by the body deadline and the server's socket cap, so sockets
      that trickle bodies cannot fill it); a request that finds the server full is refused before its body is read.
      ``/health`` never counts.
    """

    def __init__(
        self,
        app,
        max_body: int,
        keys: Sequence[str] = (),
        max_requests: int | None = None,
        body_timeout: float | None = None,
        body_min_rate: float = 0.0,
    ):
        self.app, self.max_body, self.keys, self.max_requests = app, max_body, tuple(keys), max_requests
        self.body_timeout, self.body_min_rate = body_timeout, body_min_rate
        self.active = 0

    def _busy(self) -> _Refused | None:
        if self.max_requests is None or self.active < self.max_requests:
            return None
        message = f"the server is busy: {self.active} requests in progress (limit {self.max_requests}); retry soon"
        return _Refused(503, message, "server_busy", [(b"retry-after", b"1")])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = route_path(scope)
        if self.keys and path not in OPEN_PATHS and scope.get("method") != "OPTIONS":
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
        counted = path != "/health"  # health checks are answered even when the server is full
        if counted and (busy := self._busy()):
            return await _answer(send, busy.status, busy.message, kind=busy.kind, headers=busy.headers)
        has_body = b"transfer-encoding" in headers or declared not in (None, b"0")
        started = time.monotonic()
        seen, admitted, body_done, responded = 0, False, not has_body, False

        def admit() -> None:
            nonlocal admitted
            if counted:
                if busy := self._busy():
                    raise busy
                self.active += 1
                admitted = True

        async def guarded_receive():
            nonlocal seen, body_done
            if body_done:  # disconnect checks while the request is worked on
                return await receive()
            if self.body_timeout is None:
                message = await receive()
            else:
                extra = seen / self.body_min_rate if self.body_min_rate > 0 else 0.0
                left = started + self.body_timeout + extra - time.monotonic()
                try:
                    message = await asyncio.wait_for(receive(), max(left, 0.0))
                except TimeoutError:
                    raise _Refused(408, _too_slow(seen, time.monotonic() - started, self), "timeout") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
                if not message.get("more_body", False):
                    body_done = True
                    admit()
            return message

        async def tracked_send(message):
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
                if not body_done:  # answered before reading the body: close rather than read the rest later
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            if body_done:
                admit()
            await self.app(scope, guarded_receive, tracked_send)
        except (BodyTooLarge, _Refused) as e:
            if not responded:
                if isinstance(e, BodyTooLarge):
                    await _answer(send, 413, str(e), "file")
                else:
                    await _answer(send, e.status, e.message, kind=e.kind, headers=e.headers)
        finally:
            self.active -= admitted


def _too_slow(seen: int, seconds: float, guard: Guard) -> str:
    rate = f", plus 1 s per {guard.body_min_rate:g} bytes received" if guard.body_min_rate > 0 else ""
    return (
        f"the request body arrived too slowly: {seen} bytes in {seconds:.1f} s (allowed: "
        f"{guard.body_timeout:g} s{rate}; --body-timeout-seconds, --body-min-rate)"
    )


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


def api_key_ok(authorization: str | None, keys: Sequence[str]) -> bool:
    """True when ``Authorization: Bearer <key>`` carries one of ``keys`` (constant-time comparison)."""
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    token_b = token.strip().encode()
    return any(hmac.compare_digest(token_b, k.encode()) for k in keys)
