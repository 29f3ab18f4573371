"""Inter-process locks on a directory (the cache, an annotation store): a second process waits,
then finds the work done; leftovers of a killed holder are removed under the lock.

The lock is `filelock`'s on a file in the directory, LOCK_NAME (flock on Unix, LockFileEx on
Windows), which the kernel releases when the holder exits or is killed. The file stays (empty)
after a release: removing it could let a third process lock a new file while a second still
holds the old one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import filelock

log = logging.getLogger(__name__)

# Without a leading dot: a dot-file in the cache is what a killed writer leaves (`remove_stale`).
LOCK_NAME = "taskdiv.lock"


def lock_path(directory: str | os.PathLike) -> Path:
    """The file whose lock stands for `directory`'s."""
    return Path(directory) / LOCK_NAME


@contextlib.contextmanager
def locked(directory: str | os.PathLike, doing: str):
    """Hold an exclusive lock on `directory` while `doing` (e.g. "fetching BIG-bench").

    A directory where no lock file can be made (read-only) is not locked: nothing can be
    written there either, and the write that follows fails naming its own file. Under the
    lock, any staging file or directory a killed holder left behind is known to be stale
    (`remove_stale`)."""
    lock = filelock.FileLock(lock_path(directory))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            log.warning("waiting for another taskdiv process %s", doing)
            lock.acquire()
    except OSError as e:  # a read-only directory
        log.debug("%s: not locked (%s)", directory, e)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def remove_stale(directory: Path, pattern: str) -> None:
    """Delete leftovers of a killed writer (`pattern` globbed in `directory`); call under `locked`."""
    for path in directory.glob(pattern):
        log.info("removing %s, left by an interrupted run", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
