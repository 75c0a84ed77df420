"""Atomic writes survive kill -9 at every step: the target is the old or the new content once recovered, and
nothing is left beside it. The children that get killed import only atomic.py (``light``), ~0.1 s each. Every rename
is followed by an fsync of its directory, so a power cut keeps it too."""

import errno
import json
import os
import signal

import pytest

from tests.conftest import fill_disk_halfway, run_python
from whisper_lora.atomic import (
    FAULT_ENV,
    FAULT_POINTS,
    atomic_directory,
    atomic_write_bytes,
    recover,
    recover_all,
    remove_directory,
)
from whisper_lora.errors import DiskFullError

OLD = {"a.txt": "old a", "b.txt": "old b"}
NEW = {"a.txt": "new a", "c.txt": "new c", "d.txt": "new d"}

# writes NEW into argv[1]; with argv[2] == "mid" it is killed after its first file
WRITER = """
import json, os, signal, sys
from pathlib import Path
from whisper_lora.atomic import atomic_directory
with atomic_directory(Path(sys.argv[1])) as tmp:
    for i, (name, text) in enumerate(json.loads(sys.argv[3]).items()):
        (tmp / name).write_text(text)
        if sys.argv[2] == "mid":
            os.kill(os.getpid(), signal.SIGKILL)
"""


def _fill(directory, files):
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _content(directory):
    return {p.name: p.read_text() for p in directory.iterdir()} if directory.exists() else None


def _kinds(parent, name):
    """The kinds of leftovers of writes of ``name`` in ``parent`` (tmp, new, old, lock)."""
    out = set()
    for p in parent.iterdir():
        if p.name == f".{name}.lock":
            out.add("lock")
        elif p.name.startswith(f".{name}."):
            out.add(p.name[len(name) + 2 :].split("-")[0])
    return out


def _killed_writer(target, point):
    env = {} if point == "mid" else {FAULT_ENV: f"{target.name}:{point}"}
    r = run_python(WRITER, str(target), point, json.dumps(NEW), env=env, light=True)
    assert r.returncode == -signal.SIGKILL, r.stderr


# point -> (what is at the target right after the kill, leftovers beside it, the target once recovered)
AFTER_KILL = {
    "begun": (OLD, {"tmp", "lock"}, OLD),
    "mid": (OLD, {"tmp", "lock"}, OLD),
    "written": (OLD, {"tmp", "lock"}, OLD),
    "committed": (OLD, {"new", "lock"}, NEW),
    "moved-old": (None, {"new", "old", "lock"}, NEW),
    "swapped": (NEW, {"old", "lock"}, NEW),
}


def test_every_fault_point_is_tested():
    assert set(AFTER_KILL) == {*FAULT_POINTS, "mid"}


@pytest.mark.parametrize("point", list(AFTER_KILL))
def test_kill_9_at_any_point_of_a_write_leaves_the_old_or_the_new_directory(tmp_path, point):
    target = tmp_path / "sw"
    _fill(target, OLD)
    _killed_writer(target, point)
    at_kill, leftovers, recovered = AFTER_KILL[point]
    assert _content(target) == at_kill and _kinds(tmp_path, "sw") == leftovers  # the table in atomic.py
    assert recover(target)
    assert _content(target) == recovered
    assert [p.name for p in tmp_path.iterdir()] == ["sw"]  # leftovers and the stale lock file are gone
    assert not recover(target)  # nothing left to do


@pytest.mark.parametrize(("point", "recovered"), [("written", None), ("committed", NEW), ("swapped", NEW)])
def test_a_killed_first_write_leaves_nothing_or_the_new_directory(tmp_path, point, recovered):
    target = tmp_path / "sw"
    _killed_writer(target, point)
    recover(target)
    assert _content(target) == recovered
    assert [p.name for p in tmp_path.iterdir()] == (["sw"] if recovered else [])


def test_the_next_write_recovers_first(tmp_path):
    target = tmp_path / "sw"
    _fill(target, OLD)
    _killed_writer(target, "moved-old")
    with atomic_directory(target) as tmp:
        assert _content(target) == NEW  # the interrupted write was finished before this one began
        (tmp / "e.txt").write_text("e")
    assert _content(target) == {"e.txt": "e"}
    assert [p.name for p in tmp_path.iterdir()] == ["sw"]


def test_recover_all_restores_every_target_of_a_directory(tmp_path):
    for name in ("sw", "cs"):
        _fill(tmp_path / name, OLD)
        _killed_writer(tmp_path / name, "moved-old")
    _fill(tmp_path / "id", OLD)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["id"]  # two went missing
    assert recover_all(tmp_path) == ["cs", "sw"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cs", "id", "sw"] and _content(tmp_path / "sw") == NEW


def test_a_live_writers_files_are_left_alone(tmp_path):
    target = tmp_path / "sw"
    _fill(target, OLD)
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        assert not recover(target)  # the writer holds the target's lock: its temporary is not a leftover
        assert tmp.is_dir() and _content(target) == OLD
    assert _content(target) == {"a.txt": "half"}


def test_a_bad_fault_spec_names_the_valid_points():
    r = run_python("import whisper_lora.atomic", env={FAULT_ENV: "sw:nowhere"}, light=True)
    assert r.returncode != 0 and "begun, written, committed, moved-old, swapped" in r.stderr


def test_remove_directory_takes_the_leftovers_too(tmp_path):
    target = tmp_path / "sw"
    _fill(target, OLD)
    _fill(tmp_path / ".sw.tmp-abc", NEW)
    _fill(tmp_path / "other", OLD)
    remove_directory(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    remove_directory(target)  # nothing there: nothing to do


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_a_directory_says_where_and_leaves_nothing(tmp_path):
    target = tmp_path / "sw"
    _fill(target, OLD)
    with pytest.raises(DiskFullError, match=f"no space left in {tmp_path} .* while writing sw: 5 bytes written"):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("12345")
            _full_disk()
    assert _content(target) == OLD and [p.name for p in tmp_path.iterdir()] == ["sw"]


def test_a_full_disk_while_writing_a_file_leaves_no_partial_file(tmp_path, monkeypatch):
    fill_disk_halfway(monkeypatch)
    with pytest.raises(DiskFullError, match="while writing entry.npy: 1000 bytes needed"):
        atomic_write_bytes(tmp_path / "entry.npy", b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def _record_syncs_and_renames(monkeypatch, directory) -> list[str]:
    """From now on: ``os.replace`` calls as ``rename NEW_NAME`` and fsyncs of ``directory`` as ``sync dir``."""
    events, real_fsync, real_replace = [], os.fsync, os.replace
    inode = os.stat(directory).st_ino

    def fsync(fd):
        if os.fstat(fd).st_ino == inode:
            events.append("sync dir")
        return real_fsync(fd)

    def replace(src, dst):
        events.append(f"rename {os.path.basename(dst)}")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_the_commit_rename_is_synced_before_the_swap(tmp_path, monkeypatch):
    """A power cut after the commit must find the committed ``new`` directory: the parent is fsynced right after
    the rename that commits, before the old content is moved away, and again after the swap."""
    target = tmp_path / "t"
    _fill(target, OLD)
    events = _record_syncs_and_renames(monkeypatch, tmp_path)
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("new a")
    renames = [e for e in events if e.startswith("rename")]
    assert [r.split("-")[0] for r in renames] == ["rename .t.new", "rename .t.old", "rename t"]
    commit, moved, swapped = (events.index(r) for r in renames)
    assert "sync dir" in events[commit + 1 : moved] and "sync dir" in events[swapped + 1 :], events


def test_an_atomic_file_write_syncs_its_directory(tmp_path, monkeypatch):
    events = _record_syncs_and_renames(monkeypatch, tmp_path)
    atomic_write_bytes(tmp_path / "f.json", b"{}")
    assert events == ["rename f.json", "sync dir"]
    events.clear()
    atomic_write_bytes(tmp_path / "cache.bin", b"x", durable=False)  # a cache entry: no fsync at all
    assert events == ["rename cache.bin"]
