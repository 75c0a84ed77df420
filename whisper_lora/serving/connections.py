"""What a socket may cost before it is a request: a deadline for a request's headers and a cap on open sockets.

uvicorn closes a keep-alive connection left idle after a response (``timeout_keep_alive``), but not one that never
sends a request, nor one that sends its headers a byte at a time: both stay open for good. Its
``limit_concurrency`` does not help: it answers 503 to *requests* once that many sockets are open, so idle sockets
lock good clients out. ``protocol(header_timeout, max_open)`` is uvicorn's h11 protocol with two additions:

- a timer armed when a connection opens, and when a new request's first bytes arrive on a kept-alive one, and
  cancelled once that request's headers are complete: past ``header_timeout`` the connection is closed (without an
  answer: there is no request to answer);
- a connection accepted while ``max_open`` are open is closed at once (those open keep their place: the timeouts
  bound them).

Request bodies are timed where the application reads them (``limits.Guard``: 408). Imported by ``server.serve``
only (it needs uvicorn, the ``serve`` extra).
"""

from __future__ import annotations

import logging
import resource
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("whisper_lora")

FILES_BESIDES_SOCKETS = 256  # open files a server needs besides its sockets (model, registry, logs, libraries)
WARN_EVERY = 10.0  # seconds between two warnings that new connections are refused


def protocol(header_timeout: float, max_open: int | None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and a cap on open sockets (pass it as ``http=``)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout, "max_open": max_open})


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` that closes connections whose request headers are late, and refuses sockets past a cap."""

    header_timeout: float = 10.0
    max_open: int | None = None
    _header_timer = None
    _warned = 0.0  # when the last refusal was logged (class-wide: one server per process)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.max_open is not None and len(self.connections) > self.max_open:
            if time.monotonic() - GuardedH11Protocol._warned > WARN_EVERY:
                GuardedH11Protocol._warned = time.monotonic()
                log.warning("%d connections open (--max-open-connections): new ones are closed", self.max_open)
            transport.close()
            return
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Arm the timer while a request's headers are awaited (h11: the client is IDLE); once armed it is not
        pushed back by more bytes, so headers sent a byte at a time meet the same deadline."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.debug("closing a connection whose request headers took over %g s", self.header_timeout)
            self.transport.close()


def ensure_open_files(max_open: int) -> None:
    """Raise this process's open-files limit (``ulimit -n``) to hold ``max_open`` sockets, within the hard limit;
    warn when it cannot (accepting then fails with 'too many open files' before the cap is reached)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_open + FILES_BESIDES_SOCKETS
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        except (ValueError, OSError):
            raised = soft
        if raised < need:
            log.warning(
                "the open-files limit (%d) is below --max-open-connections %d + %d: raise it (ulimit -n) or lower "
                "--max-open-connections",
                raised,
                max_open,
                FILES_BESIDES_SOCKETS,
            )
