"""Atomic output: a file or a directory written whole or not at all, and a set of files replaced
together (`output_set`).

Everything taskdiv writes goes through `atomic_path`, `atomic_dir` or `output_set`: the content is
written to a temporary in the same directory and renamed into place, so a crash or Ctrl-C never
leaves a half-written output behind, and a failure names the output the user asked for.

A run killed outright (SIGKILL, a crash) leaves its temporaries (.NAME.XXXXXXXX.tmp), rename
backups (.NAME.PID.N.old) or staging directory (.NAME-XXXXXXXX/, `atomic_dir`'s) beside NAME;
the next write of NAME removes them (`remove_leftovers`). Its writer holds each of them with a
shared flock for as long as it lives, and the kernel lets go of it when the writer dies, so one
that no process holds is provably a dead run's.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import TaskdivError, errno_in

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: temporaries are not held (see remove_leftovers)
    fcntl = None

log = logging.getLogger(__name__)


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
    tmp = fd = None
    try:
        remove_leftovers(path.parent, re.escape(path.name))
        tmp, fd = _temporary(path)
        yield tmp
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
    finally:
        _let_go(fd)


def remove_leftovers(directory: Path, name: str, *, locked: bool = False) -> None:
    """Remove what a killed writer of the output `name` left in `directory`: its temporaries
    (.NAME.XXXXXXXX.tmp), rename backups (.NAME.PID.N.old) and staging directories
    (.NAME-XXXXXXXX/). `name` is a regular expression (`re.escape` a plain name). Only those no
    live process holds go: their writers hold them (`_temporary`, `_staging`). Without fcntl
    (Windows) nothing is held, and they go only when the caller is `locked`: it holds a lock
    under which no other process writes them (the annotation store's, a model conversion's)."""
    leftover = re.compile(rf"\.(?:{name})(?P<file>\.(?:[^.]+\.tmp|\d+\.\d+\.old))?(?(file)|-[a-z0-9_]{{8}})")
    try:
        found = [(Path(e.path), bool(m["file"])) for e in os.scandir(directory) if (m := leftover.fullmatch(e.name))]
    except FileNotFoundError:
        return
    for path, is_file in found:
        if fcntl is None:
            if locked and (path.is_file() if is_file else path.is_dir()) and not path.is_symlink():
                _remove(path)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone meanwhile, a link, or not ours to open: not provably stale
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a live writer holds it
            mode = os.fstat(fd).st_mode
            if os.path.samestat(os.fstat(fd), os.lstat(path)) and (stat.S_ISREG(mode) if is_file
                                                                    else stat.S_ISDIR(mode)):
                _remove(path)
        except OSError:  # held (BlockingIOError), renamed away meanwhile, or no flock here
            pass
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    log.info("removing %s, left by an interrupted run", path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _temporary(target: Path) -> tuple[Path, int | None]:
    """A new empty temporary beside `target`, and the descriptor that holds it (None without
    fcntl) until `_let_go`: a shared flock, which another run's `remove_leftovers` finds taken."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        if fcntl is None:
            os.close(fd)
            return Path(tmp), None
        if (held := _hold(fd, tmp)) is not None:
            return Path(tmp), held


def _hold(fd: int, path) -> int | None:
    """`fd` (open on `path`) with a shared flock, once `path` is still that file; else None and
    `fd` closed: another run's `remove_leftovers` took it between its making and the flock."""
    # Waits only while a remove_leftovers looks at it. A file system without flock (ENOLCK):
    # not held, and no remove_leftovers there can take it either.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        if os.path.samestat(os.fstat(fd), os.lstat(path)):
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


def _back_up(t: Path, backup: Path) -> int | None:
    """`t`'s content kept at `backup` (a hard link, else a copy) while a set is renamed, and the
    descriptor that holds it as `_temporary`'s are held (None where it is not held)."""
    while True:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup)
        try:
            os.link(t, backup, follow_symlinks=False)
        except OSError:  # a file system without hard links
            shutil.copy2(t, backup, follow_symlinks=False)
        if fcntl is None or backup.is_symlink():
            return None
        try:
            fd = os.open(backup, os.O_RDONLY)
        except FileNotFoundError:  # another run's remove_leftovers took it before it was held
            continue
        except OSError:  # not readable: not held, and no remove_leftovers can open it either
            return None
        if (held := _hold(fd, backup)) is not None:
            return held


def _let_go(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # releases the flock


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
    `target` (the same file inside `target`). An error whose errno is only in its message (Arrow's,
    safetensors'; `errno_in`) is said in the system's words for it."""
    text = str(e)  # before a file name is set, which changes it
    if e.errno is None:
        e.errno = errno_in(text)
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
def atomic_dir(target: str | os.PathLike, *, locked: bool = False):
    """Yield a staging directory next to `target`; on success it replaces `target`.
    A `target` that is a symbolic link to a directory is written through: the directory it
    points to is replaced and the link kept. Staging directories a killed writer of `target`
    left go first (`remove_leftovers`; `locked`: the caller holds a lock for `target`)."""
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    made = make_dirs(target.parent)
    staging = held = None
    try:
        remove_leftovers(target.parent, re.escape(target.name), locked=locked)
        staging, held = _staging(target)
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
        _let_go(held)
        if not target.exists():
            remove_empty(made)


def _staging(target: Path) -> tuple[Path, int | None]:
    """A new empty staging directory beside `target` (.NAME-XXXXXXXX), held as `_temporary`'s
    files are (a shared flock on the directory) until `_let_go`."""
    while True:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        if fcntl is None:
            return staging, None
        try:
            fd = os.open(staging, os.O_RDONLY)
        except FileNotFoundError:  # another run's remove_leftovers took it before it was held
            continue
        if (held := _hold(fd, staging)) is not None:
            return staging, held


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
    fds: list[int | None] = []
    done = False
    try:
        for t in targets:
            made += make_dirs(t.parent)
        for t in targets:
            remove_leftovers(t.parent, re.escape(t.name))
            tmp, fd = _temporary(t)
            tmps.append(tmp)
            fds.append(fd)
        yield list(tmps)
        _commit(tmps, targets)
        done = True
    except OSError as e:
        raise _naming(e, _where(e, targets), tmps) from None
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for fd in fds:
            _let_go(fd)
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
    held: list[int | None] = []
    done = 0
    try:
        for t in targets:
            backup = None
            if t.exists() or t.is_symlink():
                backup = t.parent / f".{t.name}.{os.getpid()}.{len(backups)}.old"
                held.append(_back_up(t, backup))
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
        for fd in held:
            _let_go(fd)
