"""Inter-process locks on a directory (the cache, an annotation store): a second process waits,
then finds the work done; leftovers of a killed holder are removed under the lock.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; concurrent first uses are not guarded
    fcntl = None

log = logging.getLogger(__name__)


@contextlib.contextmanager
def locked(directory: str | os.PathLike, doing: str):
    """Hold an exclusive lock on `directory` while `doing` (e.g. "fetching BIG-bench").

    The lock is an flock on the directory itself, so taking it writes nothing, and the
    kernel releases it when the holder exits or is killed: a second process waits,
    then finds the work done. Under the lock, any staging file or directory a killed
    holder left behind is known to be stale (`remove_stale`).
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another taskdiv process %s", doing)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale(directory: Path, pattern: str) -> None:
    """Delete leftovers of a killed writer (`pattern` globbed in `directory`); call under `locked`."""
    for path in directory.glob(pattern):
        log.info("removing %s, left by an interrupted run", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
