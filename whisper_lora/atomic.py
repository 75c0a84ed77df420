"""Atomic file and directory writes: a crash, kill -9 included, never leaves a half-written result in place.

A directory ``NAME`` is written in steps that are each one rename (``atomic_directory``):

1. the writer fills ``.NAME.tmp-X`` beside it;
2. commit: ``.NAME.tmp-X`` becomes ``.NAME.new-X`` (a ``new`` directory is complete);
3. the current ``NAME``, if any, becomes ``.NAME.old-X``;
4. ``.NAME.new-X`` becomes ``NAME``, and ``.NAME.old-X`` is deleted.

The writer holds ``.NAME.lock`` (``locks.FileLock``) throughout, so ``recover`` tells the leftovers of a dead
writer from those of a live one. A writer killed at any point leaves ``NAME`` as it was, or as written, or
missing with both beside it; ``recover`` (run by the next write, by ``validate_adapter`` and by training before it
starts) finishes a committed write and undoes an uncommitted one:

    killed                      NAME        beside it       recover() leaves NAME
    while writing (1)           previous    tmp             previous (tmp deleted)
    after the commit (2)        previous    new             new
    after moving the old (3)    missing     new, old        new
    after the swap (4)          new         old             new (old deleted)

``remove_directory`` deletes the same way (a rename to ``.NAME.del-X``, then the deletion). Files are fsynced
before the commit, and the parent directory after the commit rename and again after the swap (``atomic_write_bytes``:
after its rename), so a power cut keeps the previous or the new content too (where the file system honours fsync).
A full disk raises ``DiskFullError`` naming the directory, after the partial write is deleted.

An in-place change of a file inside ``NAME`` (metadata, a model card) holds the same lock (``target_lock``), so it
is never mixed into, or lost to, a replacement of ``NAME`` that runs at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from whisper_lora.errors import ConfigError, DiskFullError
from whisper_lora.locks import FileLock

log = logging.getLogger("whisper_lora")

# Test-only fault injection: "NAME:POINT[:N]" makes this process SIGKILL itself the N-th time (default 1) that a
# write of a directory named NAME reaches POINT, so tests can check what a crash there leaves behind
# (tests/test_atomic.py). Read once, when this module is imported; unset in normal use.
FAULT_ENV = "WHISPER_LORA_FAULT_POINT"
FAULT_POINTS = ("begun", "written", "committed", "moved-old", "swapped")  # after: tmp made, files done, steps 2-4

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|new|old|del)-(?P<id>[A-Za-z0-9_]+)$")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _parse_fault(spec: str | None) -> tuple[str, str, int] | None:
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[1] not in FAULT_POINTS or (len(parts) == 3 and not parts[2].isdigit()):
        raise ConfigError(f"{FAULT_ENV}={spec!r}: expected NAME:POINT[:N] with POINT one of {', '.join(FAULT_POINTS)}")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 1


_fault = _parse_fault(os.environ.get(FAULT_ENV))
_fault_hits = 0


def _reached(point: str, target: Path) -> None:
    global _fault_hits
    if _fault is not None and (target.name, point) == _fault[:2]:
        _fault_hits += 1
        if _fault_hits == _fault[2]:
            os.kill(os.getpid(), signal.SIGKILL)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


def disk_full_error(
    exc: BaseException, directory: str | Path, what: str, needed: int | None = None, written: int | None = None
) -> DiskFullError | None:
    """A ``DiskFullError`` naming ``directory`` when ``exc`` is a full disk or quota (``what`` was being written,
    ``needed`` or ``written`` bytes of it); None for any other exception."""
    if isinstance(exc, DiskFullError) or not isinstance(exc, OSError) or exc.errno not in _FULL_ERRNOS:
        return None
    sizes = []
    if needed is not None:
        sizes.append(f"{_size(needed)} needed")
    if written is not None:
        sizes.append(f"{_size(written)} written before it filled")
    with contextlib.suppress(OSError):
        sizes.append(f"{_size(shutil.disk_usage(directory).free)} free")
    return DiskFullError(
        f"no space left in {directory} ({os.strerror(exc.errno)}) while writing {what}: {', '.join(sizes)}; "
        "nothing partial was left behind: free some space (or write elsewhere) and run again"
    )


def _tree_size(directory: Path) -> int:
    total = 0
    for f in directory.rglob("*"):
        with contextlib.suppress(OSError):
            total += f.stat().st_size if f.is_file() else 0
    return total


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _leftovers(target: Path) -> dict[str, list[Path]]:
    """The ``tmp``/``new``/``old``/``del`` directories of writes of ``target``, by kind."""
    found: dict[str, list[Path]] = {"tmp": [], "new": [], "old": [], "del": []}
    with contextlib.suppress(FileNotFoundError):
        for p in target.parent.iterdir():
            m = _LEFTOVER.match(p.name)
            if m and m["name"] == target.name:
                found[m["kind"]].append(p)
    return found


def _newest(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: p.stat().st_mtime_ns)


@contextlib.contextmanager
def _writer_lock(target: Path) -> Iterator[None]:
    lock = FileLock(_lock_path(target))
    if not lock.acquire(blocking=False):
        log.info("waiting for process %s, which is writing %s", lock.holder() or "(unknown)", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(new: Path, target: Path) -> None:
    """Steps 3 and 4: ``new`` (complete) replaces ``target``."""
    old = None
    if os.path.lexists(target):
        old = new.with_name(f".{target.name}.old-{new.name.rsplit('-', 1)[1]}")
        os.replace(target, old)
        _reached("moved-old", target)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        shutil.rmtree(new, ignore_errors=True)  # the write failed: it must not be finished later
        raise
    _reached("swapped", target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _recover_locked(target: Path) -> bool:
    """``recover`` for a caller holding the target's lock."""
    left = _leftovers(target)
    found = any(left.values())
    if left["new"]:
        new = _newest(left["new"])
        left["new"].remove(new)
        log.warning("finishing the interrupted write of %s (its new content %s was complete)", target, new.name)
        _swap_in(new, target)
    elif not os.path.lexists(target) and left["old"]:
        old = _newest(left["old"])
        left["old"].remove(old)
        log.warning("restoring %s from %s, left by an interrupted write", target, old.name)
        os.replace(old, target)
    for p in itertools.chain(*left.values()):
        shutil.rmtree(p, ignore_errors=True)
    return found


def recover(target: str | Path) -> bool:
    """Finish or undo an interrupted write of ``target`` (table in the module docstring) and delete what it left.

    Cheap when nothing is left over (one directory listing). Does nothing while a live writer holds the target's
    lock (it cleans up after itself) or where the lock cannot be created (a read-only directory: logged).
    Returns whether a dead writer's leftovers were handled.
    """
    target = Path(target)
    lock_file = _lock_path(target)
    stale_lock_file = lock_file.exists()  # a writer killed before it removed its lock file
    if not any(_leftovers(target).values()) and not stale_lock_file:
        return False
    lock = FileLock(lock_file)
    try:
        if not lock.acquire(blocking=False):
            return False
    except OSError as e:
        log.warning("cannot recover the interrupted write of %s: %s", target, e)
        return False
    try:
        return _recover_locked(target) or stale_lock_file
    finally:
        lock.release()


def recover_all(directory: str | Path) -> list[str]:
    """``recover`` every target in ``directory`` that interrupted writes left something beside (a registry root:
    an adapter killed between its two renames is not there to be validated); returns their names."""
    names = set()
    with contextlib.suppress(FileNotFoundError):
        for p in Path(directory).iterdir():
            m = _LEFTOVER.match(p.name)
            if m:
                names.add(m["name"])
    return sorted(n for n in names if recover(Path(directory) / n))


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` (module docstring).

    The previous content of ``target`` stays in place until the new one is complete; an exception in the body
    deletes the temporary and leaves ``target`` untouched. Writers of one target take turns.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(target):
        _recover_locked(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only; a finished result is not private
        try:
            _reached("begun", target)
            yield tmp
            for f in tmp.rglob("*"):  # some writers create owner-only files; results follow the umask
                os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
                _fsync(f)
            _fsync(tmp)
        except BaseException as e:
            written = _tree_size(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            full = disk_full_error(e, target.parent, target.name, written=written)
            if full is not None:
                raise full from e
            raise
        _reached("written", target)
        new = tmp.with_name(f".{target.name}.new-{tmp.name.rsplit('-', 1)[1]}")
        os.replace(tmp, new)  # the commit: from here on the write is finished, now or by the next recover()
        _fsync(target.parent)  # the commit itself survives a power cut
        _reached("committed", target)
        _swap_in(new, target)


@contextlib.contextmanager
def target_lock(target: str | Path) -> Iterator[Path]:
    """Hold the lock every writer of ``target`` takes (``atomic_directory``, ``remove_directory``), after finishing
    or undoing an interrupted write: a read-modify-write of files inside ``target`` sees one version of it, and a
    replacement waits for it to finish. Yields ``target``."""
    target = Path(target)
    with _writer_lock(target):
        _recover_locked(target)
        yield target


def remove_directory(target: str | Path) -> None:
    """Delete ``target`` and any leftovers of its writes; renamed away first, so it is there whole or gone."""
    target = Path(target)
    if not os.path.lexists(target) and not any(_leftovers(target).values()):
        return
    with _writer_lock(target):
        if os.path.lexists(target):
            os.replace(target, target.with_name(f".{target.name}.del-{uuid.uuid4().hex[:12]}"))
        for p in itertools.chain(*_leftovers(target).values()):
            shutil.rmtree(p, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename (fsynced first when ``durable``).

    A failed write deletes the temporary; a full disk raises ``DiskFullError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shared files from other users
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)  # the rename itself survives a power cut
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = disk_full_error(e, path.parent, path.name, needed=len(data))
        if full is not None:
            raise full from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write_bytes(path, text.encode("utf-8"))
