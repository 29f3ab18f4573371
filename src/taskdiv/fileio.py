"""Atomic file output and small table readers shared by every stage.

Everything taskdiv writes goes through `atomic_path`: the content is written to a
temporary file in the same directory and renamed into place, so a crash or Ctrl-C
never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import yaml

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; concurrent first uses are not guarded
    fcntl = None

log = logging.getLogger(__name__)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the usual umask-based mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a staging directory next to `target`; on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private (0700), as mkstemp does
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl(path, records) -> int:
    """Write a DataFrame or an iterable of dicts as JSON lines; returns the line count."""
    if isinstance(records, pd.DataFrame):
        with atomic_path(path) as tmp:
            if len(records):
                records.to_json(tmp, orient="records", lines=True, force_ascii=False)
            else:
                tmp.write_text("")
        return len(records)
    with atomic_path(path) as tmp:
        return dump_jsonl(tmp, records)


def write_json(path, obj) -> None:
    write_text(path, dumps_json(obj))


def dump_jsonl(path, records) -> int:
    """Write dicts as JSON lines straight to `path` (a temporary from `atomic_path`); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(_jsonable(rec), ensure_ascii=False) + "\n")
            n += 1
    return n


def dumps_json(obj) -> str:
    """`obj` as indented JSON text (numpy values and NaN made plain), ending in a newline."""
    return json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n"


def write_yaml(path, obj) -> None:
    write_text(path, yaml.safe_dump(_jsonable(obj), sort_keys=False, allow_unicode=True))


def write_table(path, df: pd.DataFrame) -> None:
    """Write a DataFrame as CSV or Parquet, chosen by the file's suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def _jsonable(obj):
    """Convert numpy scalars/arrays and NaN into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def cache_dir(*parts: str) -> Path:
    """taskdiv's cache directory ($TASKDIV_CACHE, else $XDG_CACHE_HOME/taskdiv)."""
    root = os.environ.get("TASKDIV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "taskdiv")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
