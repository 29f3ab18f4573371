"""The directory lock's filelock path (what Windows, without fcntl, takes), forced on this
machine by setting `taskdiv.common.locks.fcntl` to None. The flock path is tested through its
users (test_annotation's concurrent imports, test_fetch's concurrent fetches); `claimed` (take
it or leave it) on both paths here."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# One holder: takes the lock with fcntl gone, says so by a file, and leaves when told by a file.
HOLDER = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    from taskdiv.common import locks

    if len(sys.argv) < 4 or sys.argv[3] != "flock":
        locks.fcntl = None  # the Windows path
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    directory, name = Path(sys.argv[1]), sys.argv[2]
    events = directory / "events"
    with locks.locked(directory, "as " + name):
        with events.open("a") as f:
            f.write("enter " + name + "\\n")
        (directory / (name + ".inside")).touch()
        deadline = time.monotonic() + 120
        while not (directory / (name + ".release")).exists():
            assert time.monotonic() < deadline, name + " was never released"
            time.sleep(0.01)
        with events.open("a") as f:
            f.write("leave " + name + "\\n")
""")


def _holder(directory: Path, name: str, how: str = "filelock") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), name, how], env=env,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `path` exists (a handshake, not a timing assumption; the timeout only ends a hung test)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the holder exited ({proc.returncode}): {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def test_without_fcntl_two_processes_take_turns_and_the_second_says_it_waits(tmp_path):
    first = _holder(tmp_path, "first")
    second = None
    try:
        _wait_for(tmp_path / "first.inside", first)
        second = _holder(tmp_path, "second")
        # The second logs the warning once it found the lock taken, then blocks in acquire.
        assert second.stderr.readline().strip() == "waiting for another taskdiv process as second"
        assert not (tmp_path / "second.inside").exists()  # still outside while the first holds it
        (tmp_path / "first.release").touch()
        assert first.wait(120) == 0
        _wait_for(tmp_path / "second.inside", second)
        (tmp_path / "second.release").touch()
        assert second.wait(120) == 0, second.stderr.read()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    # The critical sections never overlapped: each left before the next one entered.
    assert (tmp_path / "events").read_text().splitlines() == ["enter first", "leave first",
                                                             "enter second", "leave second"]
    assert (tmp_path / ".taskdiv.lock").exists()  # the lock's file, not the directory, is locked


def test_without_fcntl_a_lock_is_taken_without_waiting_when_free(tmp_path, monkeypatch, caplog):
    from taskdiv.common import locks

    monkeypatch.setattr(locks, "fcntl", None)
    for _ in range(2):  # released on leaving: the second take does not wait either
        with locks.locked(tmp_path, "probing"):
            assert (tmp_path / locks.LOCK_NAME).exists()
    assert "waiting" not in caplog.text


def test_without_fcntl_a_refused_first_import_leaves_nothing_behind(tmp_path, monkeypatch):
    """store_lock on a store directory that does not exist yet removes what it made, the lock's
    file included, when nothing landed there."""
    from taskdiv.annotate.store import store_lock
    from taskdiv.common import locks

    monkeypatch.setattr(locks, "fcntl", None)
    parent = tmp_path / "project"
    parent.mkdir()
    directory = parent / "runs" / "ann"
    with pytest.raises(RuntimeError):
        with store_lock(directory, "importing"):
            assert (directory / locks.LOCK_NAME).exists()
            raise RuntimeError("refused")
    assert not (parent / "runs").exists()


@pytest.mark.parametrize("how", ["flock", "filelock"])
def test_claimed_leaves_a_lock_another_process_holds_and_takes_a_free_one(tmp_path, monkeypatch, how):
    from taskdiv.common import locks

    if how == "filelock":
        monkeypatch.setattr(locks, "fcntl", None)
    holder = _holder(tmp_path, "holder", how)
    try:
        _wait_for(tmp_path / "holder.inside", holder)
        started = time.monotonic()
        with locks.claimed(tmp_path) as mine:
            assert mine is False  # at once: no waiting for the holder
        assert time.monotonic() - started < 10 and holder.poll() is None
        (tmp_path / "holder.release").touch()
        assert holder.wait(120) == 0, holder.stderr.read()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with locks.claimed(tmp_path) as mine:
        assert mine is True
        with locks.claimed(tmp_path) as again:  # held: another claim, even from this process, is refused
            assert again is False
    with locks.claimed(tmp_path) as mine:  # released on leaving
        assert mine is True
