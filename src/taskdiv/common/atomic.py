"""Atomic output: a file or a directory written whole or not at all, and a set of files replaced
together (`output_set`).

Everything taskdiv writes goes through `atomic_path`, `atomic_dir` or `output_set`: the content is
written to a temporary in the same directory and renamed into place, so a crash or Ctrl-C never
leaves a half-written output behind, and a failure names the output the user asked for.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import TaskdivError


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` on success. On failure nothing is
    left: neither the temporary nor the directories made for it, and an OSError names `path` (a
    full disk's names no file, or the temporary)."""
    path = Path(path)
    made = make_dirs(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        remove_empty(made)
        if isinstance(e, OSError):
            raise _naming(e, path, [tmp]) from None
        raise


def make_dirs(directory: Path) -> list[Path]:
    """mkdir -p `directory`; the directories it made, deepest first (for `remove_empty`)."""
    directory = Path(directory)
    made = [p for p in (directory, *directory.parents) if not (p.exists() or p.is_symlink())]
    directory.mkdir(parents=True, exist_ok=True)
    return made


def remove_empty(made: list[Path]) -> None:
    """Remove the directories `make_dirs` made, deepest first, where nothing landed in them: a
    failed output (a full disk) leaves no empty folders behind."""
    for p in made:
        with contextlib.suppress(OSError):  # not empty: something else landed there
            p.rmdir()


def _naming(e: OSError, target: Path, temporaries=(), staging: Path | None = None) -> OSError:
    """`e`, naming `target` (the output a user asked for) where it names no file (a write that
    fails on a full disk) or a temporary of ours, or a file inside the `staging` directory of
    `target` (the same file inside `target`). An error of Arrow's ('Error writing bytes to file.
    Detail: [errno 28] No space left on device') is said in the system's words for its errno."""
    text = str(e)  # before a file name is set, which changes it
    if e.errno is None and (m := re.search(r"\[errno (\d+)\]", text)):
        e.errno = int(m[1])
    if e.errno is not None:  # Arrow's errors carry it with its own words around the system's
        e.strerror = os.strerror(e.errno)
    elif e.strerror is None:
        e.strerror = text
    names = {str(t) for t in temporaries if t is not None}
    if e.filename is None or str(e.filename) in names:
        e.filename = str(target)
    elif staging is not None and str(e.filename).startswith(str(staging) + os.sep):
        e.filename = str(target / Path(e.filename).relative_to(staging))
    return e


def _mode_for(path: Path) -> int:
    """The mode a rewritten file gets: the mode of the file it replaces (a shared store stays
    group-writable, a private one private), else the usual umask-based one (mkstemp makes
    files 0600)."""
    try:
        if not path.is_symlink():
            return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a staging directory next to `target`; on success it replaces `target`.
    A `target` that is a symbolic link to a directory is written through: the directory it
    points to is replaced and the link kept."""
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    made = make_dirs(target.parent)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private (0700), as mkstemp does
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError as e:
        raise _naming(e, target, [staging], staging) from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():
            remove_empty(made)


@contextlib.contextmanager
def output_set(*paths):
    """Write several files of one command as one unit: all of them, or none.

    Yields a list of temporary paths, one per target (in the target's directory). Only when the
    block has written every one of them are they renamed into place; if a rename
    fails (a directory in the way, Ctrl-C), the targets already renamed get their
    previous content back (kept as hard links until the end), so the set never mixes
    two runs. The targets are renamed in the order given: put a file that marks a
    finished output (selection.jsonl) last. A target that is a symbolic link is
    replaced, not followed (resolve it first to write through a link on purpose).
    """
    targets = [Path(p) for p in paths]
    for t in targets:
        if t.is_dir() and not t.is_symlink():
            raise TaskdivError(f"{t}: is a directory where taskdiv writes a file; remove it or choose another "
                               f"output")
    made: list[Path] = []
    tmps: list[Path] = []
    done = False
    try:
        for t in targets:
            made += make_dirs(t.parent)
        for t in targets:
            fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        yield list(tmps)
        _commit(tmps, targets)
        done = True
    except OSError as e:
        raise _naming(e, _where(e, targets), tmps) from None
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if not done:
            remove_empty(sorted(set(made), key=lambda p: len(p.parts), reverse=True))


def _where(e: OSError, targets: list[Path]) -> Path:
    """What an OSError of a set of outputs names when it names no file (a write to one of the
    temporaries failed, and which one is not known): the directory of the outputs; of several, the
    one whose file system is full (for a full disk), else the first."""
    dirs = list(dict.fromkeys(t.parent for t in targets))
    if len(dirs) > 1 and e.errno in (errno.ENOSPC, errno.EDQUOT):
        for d in dirs:
            with contextlib.suppress(OSError):
                st = os.statvfs(d)
                if st.f_bavail * st.f_frsize < 1 << 20:
                    return d
    return dirs[0]


def _commit(tmps: list[Path], targets: list[Path]) -> None:
    for tmp, t in zip(tmps, targets):
        os.chmod(tmp, _mode_for(t))
    backups: list[Path | None] = []
    done = 0
    try:
        for t in targets:
            backup = None
            if t.exists() or t.is_symlink():
                backup = t.parent / f".{t.name}.{os.getpid()}.{len(backups)}.old"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)
                try:
                    os.link(t, backup, follow_symlinks=False)
                except OSError:  # a file system without hard links
                    shutil.copy2(t, backup, follow_symlinks=False)
            backups.append(backup)
        for tmp, t in zip(tmps, targets):
            os.replace(tmp, t)
            done += 1
    except BaseException:
        for t, backup in list(zip(targets, backups))[:done]:
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, t)
                else:
                    os.unlink(t)
        raise
    finally:
        for backup in backups:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)
