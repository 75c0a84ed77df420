"""Hand memory freed by finished work back to the operating system, so a server's resident size follows its load.

glibc keeps what Python, numpy and torch free (an upload's decoded samples, a batch's activations) in its heap for
reuse; after a burst of large uploads a server's resident memory stays near its peak although nothing uses it, and a
container limit counts it. ``malloc_trim`` returns those free pages. The scheduler (``Scheduler``) and the Ray ingress
(``ray_front``) call a ``Releaser`` when they run out of work: at most every ``MIN_INTERVAL`` seconds, each call costing
milliseconds. Where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time

MIN_INTERVAL = 1.0  # seconds between two releases


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc's ``malloc_trim(0)``); False where that is not available."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class Releaser:
    """``release_free_memory`` at most every ``interval`` seconds, from any thread (a call while another one runs
    returns at once); ``count``: how many times it ran."""

    def __init__(self, interval: float = MIN_INTERVAL):
        self.interval, self.count = interval, 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        try:
            now = time.monotonic()
            if self._last is not None and now - self._last < self.interval:
                return False
            self._last = now
            done = release_free_memory()
            self.count += done
            return done
        finally:
            self._lock.release()
