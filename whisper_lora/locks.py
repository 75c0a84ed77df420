"""Exclusive locks on a file beside what they guard, released by the kernel when the holder dies (kill -9 too).

A lock is ``fcntl.flock`` on a small file that holds the holder's pid, so a refusal can say who holds it.
The file is removed on release; a holder killed before that leaves the file but not the lock, so there is
no stale lock to clear by hand. Linux and macOS (``fcntl``); across machines only where the file system
supports ``flock`` (local disks, NFSv4).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class FileLock:
    """An exclusive ``flock`` on ``path``; the file holds the holder's pid while it is held."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it when ``blocking``); False when another process holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this FileLock")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            # the last holder removes the file on release: a lock on a removed (or replaced) file guards nothing
            try:
                st, now = os.fstat(fd), os.stat(self.path)
                same = (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def holder(self) -> int | None:
        """The pid written by the process holding the lock (None when unknown, e.g. it is being taken)."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
