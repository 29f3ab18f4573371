"""Output checks made before any work: a file in the way, a read-only directory or an output that
would overwrite an input fails first, naming the path (`check_output_dir`, `check_output_file`,
`check_inputs_kept`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import TaskdivError


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest parent that exists (a symbolic link counts)."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path(".")


def _probe(directory: Path, what: Path) -> None:
    """Create and remove a file in `directory`: the only test of writability that also holds for root
    without CAP_DAC_OVERRIDE, read-only mounts and ACLs."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".taskdiv-write-test-", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise TaskdivError(f"{what}: cannot write to {directory} ({e.strerror or e})") from None


def check_output_dir(out, names=(), *, what=None, inputs=(), whole: bool = False) -> Path:
    """Fail now, naming the path, if OUT cannot be (or hold) the output directory.

    Checks without creating anything: OUT is a directory or can be made one (no file in
    the way, the nearest existing parent is a writable directory), and none of the files
    `names` inside it is a directory, nor one of the command's `inputs` (`check_inputs_kept`;
    `whole`: OUT is replaced whole, so no input may lie inside it). Commands call it before
    their first real work. `what`: the output to name in errors (default OUT)."""
    out = Path(out)
    what = what or out
    check_inputs_kept([out / name for name in names], inputs, trees=[out] if whole else [])
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise TaskdivError(f"{what}: {'' if what == out else f'{out} '}exists and is not a directory; "
                               f"choose another output")
        _probe(out, what)
        for name in names:
            if (out / name).is_dir() and not (out / name).is_symlink():
                raise TaskdivError(f"{out / name}: is a directory where taskdiv writes a file; remove it "
                                   f"or choose another output directory")
        return out
    parent = nearest_existing(out.parent)
    if not parent.is_dir():
        raise TaskdivError(f"{what}: cannot create {out}: {parent} is not a directory")
    _probe(parent, what)
    return out


def check_output_file(path, *, inputs=()) -> Path:
    """As `check_output_dir`, for one output file: it is not a directory nor one of `inputs`, and its
    directory is writable."""
    path = Path(path)
    check_inputs_kept([path], inputs)
    if path.is_dir():
        raise TaskdivError(f"{path}: is a directory; give a file name")
    check_output_dir(path.parent, what=path)
    return path


def check_inputs_kept(outputs, inputs, *, trees=()) -> None:
    """Fail, naming both, when one of `outputs` (files a command writes) is one of its `inputs`, or
    an input lies inside one of `trees` (directories it replaces whole): the command would
    destroy what it reads (`select D/selection.jsonl --out D` replaced the pool by its
    selection). The same file by resolved path, and by device and inode where both exist
    (a hard link). `inputs` may hold None and specs that are no path (hf:NAME): skipped."""
    given = [Path(i) for i in inputs if i and Path(i).exists()]
    for out in map(Path, outputs):
        for i in given:
            if _same_file(out, i):
                raise TaskdivError(f"{out}: this output would replace the input {i}; choose another output")
    for tree in map(Path, trees):
        root = tree.resolve()
        for i in given:
            if i.resolve() == root or root in i.resolve().parents:
                raise TaskdivError(f"{tree}: this output directory is replaced whole, and holds the input {i}; "
                                   f"choose another output")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # `a` does not exist yet: where it would be written
        return a.resolve() == b.resolve()
