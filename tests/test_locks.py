"""File locks: a second holder is refused and told the first one's pid; a holder killed with kill -9 leaves no lock."""

import os
import signal

from tests.conftest import run_python
from whisper_lora.locks import FileLock

TRY = """
import sys
from whisper_lora.locks import FileLock
lock = FileLock(sys.argv[1])
print(lock.acquire(blocking=False), lock.holder())
"""

HOLD_AND_DIE = """
import os, signal, sys
from whisper_lora.locks import FileLock
FileLock(sys.argv[1]).acquire()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_held_lock_refuses_another_process_and_names_the_holder(tmp_path):
    path = tmp_path / "out.lock"
    with FileLock(path) as lock:
        assert lock.held and lock.holder() == os.getpid()
        r = run_python(TRY, str(path), light=True)
        assert r.stdout.split() == ["False", str(os.getpid())], r.stderr
    assert not path.exists()  # removed on release
    r = run_python(TRY, str(path), light=True)
    assert r.stdout.split()[0] == "True"


def test_a_holder_killed_with_kill_9_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "out.lock"
    r = run_python(HOLD_AND_DIE, str(path), light=True)
    assert r.returncode == -signal.SIGKILL
    assert path.exists()  # the file stays ...
    lock = FileLock(path)
    assert lock.acquire(blocking=False)  # ... but not the lock
    lock.release()


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.acquire(blocking=False)
    assert not second.acquire(blocking=False)
    first.release()
    assert second.acquire(blocking=False)
    second.release()
