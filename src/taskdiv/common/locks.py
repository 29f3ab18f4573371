"""Inter-process locks on a directory (the cache, an annotation store): a second process waits,
then finds the work done; leftovers of a killed holder are removed under the lock.

On POSIX the lock is an fcntl.flock on the directory itself: it writes nothing (a refused run
leaves no trace) and the kernel releases it when the holder is killed. Where there is no fcntl
(Windows) it is `filelock`'s lock on a file in the directory, LOCK_NAME (LockFileEx, also
released by the system), since a directory cannot be locked there.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the filelock path below
    fcntl = None

log = logging.getLogger(__name__)

# The lock file where there is no fcntl. A dot-file, as staging files are, but no `remove_stale`
# pattern (.NAME.*.tmp, .NAME-*, ...) matches it.
LOCK_NAME = ".taskdiv.lock"


def locked(directory: str | os.PathLike, doing: str) -> contextlib.AbstractContextManager:
    """Hold an exclusive lock on `directory` while `doing` (e.g. "fetching BIG-bench").

    A second process logs "waiting for another taskdiv process DOING" and waits, then finds
    the work done. Under the lock, any staging file or directory a killed holder left behind
    is known to be stale (`remove_stale`). fcntl is looked up at each call (tests force the
    filelock path by setting this module's fcntl to None)."""
    return _flocked(directory, doing) if fcntl is not None else _file_locked(Path(directory), doing)


@contextlib.contextmanager
def _flocked(directory: str | os.PathLike, doing: str | None):
    """An flock on the directory itself: taking it writes nothing. `doing` None: no waiting,
    False is yielded when another process holds it (`claimed`)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = True
        except BlockingIOError:
            mine = doing is not None
            if mine:
                log.warning("waiting for another taskdiv process %s", doing)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield mine
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _file_locked(directory: Path, doing: str | None):
    """filelock's lock on directory/LOCK_NAME (`doing` as `_flocked`'s). A directory where the
    lock file cannot be made (read-only) is not locked: nothing can be written there either,
    and the write that follows fails naming its own file."""
    import filelock

    lock, mine = filelock.FileLock(directory / LOCK_NAME), True
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            mine = doing is not None
            if mine:
                log.warning("waiting for another taskdiv process %s", doing)
                lock.acquire()
    except OSError as e:
        log.debug("%s: not locked (%s)", directory, e)
        lock = None
    try:
        yield mine
    finally:
        if lock is not None and mine:
            lock.release()


def claimed(directory: str | os.PathLike) -> contextlib.AbstractContextManager:
    """Take `locked`'s lock on `directory` if no other process holds it, without waiting:
    yields True while holding it, False (holding nothing) when another process does. For
    work that processes share out among themselves (an experiment's runs): a process takes
    what is free and leaves the rest."""
    return _flocked(directory, None) if fcntl is not None else _file_locked(Path(directory), None)


def remove_stale(directory: Path, pattern: str) -> None:
    """Delete leftovers of a killed writer (`pattern` globbed in `directory`); call under `locked`."""
    for path in directory.glob(pattern):
        log.info("removing %s, left by an interrupted run", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
