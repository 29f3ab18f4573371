"""Atomic file output and the generic readers shared by every stage.

Everything taskdiv writes goes through `atomic_path`: the content is written to a
temporary file in the same directory and renamed into place, so a crash or Ctrl-C
never leaves a half-written output behind. A command that writes several files
writes them through `output_set`, so that they are replaced together or not at all,
and checks its output location first (`check_output_dir`, `check_output_file`) so
that a file in the way or a read-only directory fails before any work, naming the path.

The readers (`iter_jsonl`, `read_json_document`, `read_csv`, `read_yaml`, `check_utf8`) raise a
`DataError` that names the file and the line, so every stage reports bad input alike;
`file_sha256` identifies an input by its content. They refuse up front what a parser
would choke on (`check_input`: a special file such as /dev/zero, a file too large for its
kind; values nested deeper than `MAX_DEPTH`, a text no UTF-8 can hold, a YAML alias bomb),
so a parser's own error never reaches the user as a traceback. The pool's own sources
and their normalisation live in `data`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import yaml

from .errors import DataError, TaskdivError

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


# ----------------------------------------------------------------------------- output checks and sets


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


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl(path, records) -> int:
    """Write a DataFrame or an iterable of dicts as JSON lines; returns the line count."""
    with atomic_path(path) as tmp:
        return dump_jsonl(tmp, records)


def write_json(path, obj) -> None:
    write_text(path, dumps_json(obj))


def dump_jsonl(path, records) -> int:
    """Write a DataFrame or dicts as JSON lines straight to `path` (a temporary from
    `atomic_path` or `output_set`); returns the count."""
    if isinstance(records, pd.DataFrame):
        if len(records) and _dump_jsonl_arrow(path, records):
            return len(records)
        records = records.to_dict(orient="records")  # lists, rare control characters: one record at a time
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(_jsonable(rec), ensure_ascii=False) + "\n")
            n += 1
    return n


# Control characters other than \n, \r and \t: rare in text, and left to json.dumps.
_RARE_CONTROL = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]"
_NEEDS_ESCAPE = '["\\\\\\x00-\\x1f\\x7f]'


def _dump_jsonl_arrow(path, frame: pd.DataFrame) -> bool:
    """A frame of text, whole-number, float and boolean columns as JSON lines, built by
    Arrow string kernels (about 5x faster than pandas' to_json on 500K rows, which
    matters for selections from pools of millions). False, and nothing written, for any
    other column type or a text with rare control characters: the caller writes those
    record by record."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if frame.columns.duplicated().any():
        return False

    def lit(text):
        return pa.scalar(text, pa.large_string())

    parts = []
    for i, name in enumerate(frame.columns):
        values = frame[name]
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind in ("string", "empty"):
            text = pa.array(values.astype(object).where(values.notna(), None), type=pa.large_string()) \
                if values.dtype == object else pa.array(values).cast(pa.large_string())
            if pc.any(pc.match_substring_regex(text, _NEEDS_ESCAPE)).as_py():  # else: no pass to make
                if pc.any(pc.match_substring_regex(text, _RARE_CONTROL)).as_py():
                    return False
                for old, new in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
                    text = pc.replace_substring(text, old, new)
            text = pc.binary_join_element_wise(lit('"'), text, lit('"'), lit(""))
        elif isinstance(values.dtype, np.dtype) and values.dtype.kind in "bi":  # numpy bool/int: none missing
            text = pa.array(values.to_numpy()).cast(pa.large_string())
        elif isinstance(values.dtype, np.dtype) and values.dtype.kind == "f":
            numbers = values.to_numpy()
            if np.isinf(numbers).any():
                return False
            # Arrow's shortest round-trip text; a whole float as "3", which JSON reads back alike.
            text = pa.array(numbers, mask=np.isnan(numbers)).cast(pa.large_string())
        else:
            return False
        parts += [lit(("{" if i == 0 else ",") + json.dumps(str(name), ensure_ascii=False) + ":"),
                  pc.fill_null(text, lit("null"))]
    lines = pc.binary_join_element_wise(*parts, lit("}\n"), lit(""))
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset:lines.offset + len(lines) + 1]
    with open(path, "wb") as f:
        f.write(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])
    return True


def dumps_json(obj) -> str:
    """`obj` as indented JSON text (numpy values and NaN made plain), ending in a newline."""
    return json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n"


def write_yaml(path, obj) -> None:
    with atomic_path(path) as tmp:
        dump_yaml(tmp, obj)


def dump_yaml(path, obj) -> None:
    Path(path).write_text(yaml.safe_dump(_jsonable(obj), sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_table(path, df: pd.DataFrame) -> None:
    """Write a DataFrame as CSV or Parquet, chosen by the file's suffix."""
    with atomic_path(path) as tmp:
        dump_table(tmp, df, Path(path).suffix)


def dump_table(path, df: pd.DataFrame, suffix: str | None = None) -> None:
    """`df` as CSV, or Parquet when `suffix` (default: the path's own) is .parquet. A CSV is
    for spreadsheets too: its text cells are neutralised (`neutralise`)."""
    if (suffix or Path(path).suffix) == ".parquet":
        df.to_parquet(path, index=False)
    else:
        neutralise(df).to_csv(path, index=False)


# A text cell a spreadsheet would run as a formula (CSV injection): one that starts with = + - @,
# a tab or a carriage return, after any number of single quotes (so that the escape below
# is undone exactly: see `neutralise`).
_FORMULA = r"^'*[=+\-@\t\r]"


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each text cell a spreadsheet would run as a formula prefixed with a single
    quote, as OWASP recommends for CSV files ('=1+2 shows as the text =1+2). Numbers stay
    numbers (-3 is no formula). taskdiv's readers of its own CSVs take the quote off again
    (`read_csv(..., neutralised=True)`): the escape and its reverse are exact for every text,
    since only text matching ^'*[=+-@\\t\\r] gets one more quote and only text matching
    ^'+[=+-@\\t\\r] loses one."""
    out = None
    for name in df.columns[[_is_text(df[c]) for c in df.columns]] if len(df.columns) else ():
        values = df[name]
        risky = _matches(values, _FORMULA)
        if risky.any():
            out = df.copy() if out is None else out
            out[name] = values.where(~risky, "'" + values.astype(object).where(risky, ""))
    return df if out is None else out


def unneutralise(df: pd.DataFrame) -> pd.DataFrame:
    """The reverse of `neutralise`, on a CSV taskdiv wrote."""
    for name in df.columns[[_is_text(df[c]) for c in df.columns]] if len(df.columns) else ():
        values = df[name]
        quoted = _matches(values, _FORMULA.replace("'*", "'+"))
        if quoted.any():
            df[name] = values.where(~quoted, values.astype(object).where(quoted, "").str[1:])
    return df


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or isinstance(values.dtype, pd.StringDtype)


def _matches(values: pd.Series, pattern: str) -> np.ndarray:
    """Which cells are text matching `pattern`: by pandas' string methods, or cell by cell in a
    column that mixes text with other values (a CSV column of 'x' and 'false' is read as both)."""
    import numpy as np

    if isinstance(values.dtype, pd.StringDtype) or pd.api.types.infer_dtype(values, skipna=True) in ("string",
                                                                                                     "empty"):
        return values.str.match(pattern, na=False).to_numpy(bool)
    found = re.compile(pattern)
    return np.array([isinstance(v, str) and found.match(v) is not None for v in values], dtype=bool)


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
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (Path, pd.Timestamp)):
        return str(obj)
    return obj


def cache_dir(*parts: str) -> Path:
    """taskdiv's cache directory ($TASKDIV_CACHE, else $XDG_CACHE_HOME/taskdiv)."""
    root = os.environ.get("TASKDIV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "taskdiv")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root(kind: str | None = None) -> Path | None:
    """Where the local benchmark collections are (mmlu/, bbh/, gauntlet/, alpaca_eval/):
    $TASKDIV_DATA (set by `--data-dir`), else `../shared/data` beside the working directory,
    else `shared/data` beside the repository this code runs from; with `kind`, that
    collection's folder. None when there is none."""
    env = os.environ.get("TASKDIV_DATA")
    if env:
        roots = [Path(env)]
    else:
        here = Path(__file__).resolve()
        roots = [Path.cwd().parent / "shared" / "data"]
        if len(here.parents) > 3:
            roots.append(here.parents[3] / "shared" / "data")
    for root in roots:
        path = root / kind if kind else root
        if path.is_dir():
            return path
    return None


# ----------------------------------------------------------------------------- reading


# The largest file of each kind that is read whole into Python objects. A config is a few KB
# (PyYAML, pure Python, parses about 1 MB/s); a JSON document becomes about ten times its size
# in memory. Pools and tables in JSONL, CSV and Parquet have no limit: they are read by Arrow.
MAX_BYTES = {"YAML file": 1 << 20, "result file": 1 << 20, "JSON document": 1 << 30}
# How deep JSON and YAML values may nest. Real data nests a few levels (a Label Studio export
# six); past about 1,000 Python's json stops with a RecursionError, and past about 10,000
# pyarrow's JSON reader and its conversion to pandas crash the process (a segfault).
MAX_DEPTH = 100


def check_input(path, *, kind: str | None = None) -> os.stat_result:
    """Refuse, before reading a byte, an input that is no regular file (/dev/zero and /dev/urandom
    never end, a FIFO may never send anything) or one larger than `MAX_BYTES[kind]`."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TaskdivError(f"{path}: no such file") from None
    if stat.S_ISDIR(st.st_mode):
        raise TaskdivError(f"{path}: is a directory; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError("not a regular file (a device, a pipe or a socket); give a file", file=path)
    limit = MAX_BYTES.get(kind)
    if limit is not None and st.st_size > limit:
        raise DataError(f"{st.st_size:,} bytes is too large for a {kind} (at most {limit:,})", file=path)
    return st


def read_input(path, *, kind: str | None = None) -> bytes:
    """A file's bytes, after `check_input`."""
    check_input(path, kind=kind)
    return Path(path).read_bytes()


# What nesting a JSON text has, ignoring the brackets inside its strings.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth(data: bytes) -> tuple[int, int]:
    """(deepest nesting of the JSON text `data`, the offset where it first goes past MAX_DEPTH or
    -1): by counting brackets outside strings (an unterminated string's brackets count too,
    which only makes malformed JSON look deeper)."""
    import numpy as np

    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:  # the usual case: no need to look closer
        return 0, -1
    # Strings blanked out, not removed, so that offsets stay the file's.
    bare = np.frombuffer(_JSON_STRING.sub(lambda m: b"_" * len(m.group()), data), dtype=np.uint8)
    step = np.zeros(len(bare), dtype=np.int8)
    step[(bare == 0x5B) | (bare == 0x7B)] = 1
    step[(bare == 0x5D) | (bare == 0x7D)] = -1
    depth = np.cumsum(step, dtype=np.int64)
    deepest = int(depth.max(initial=0))
    return deepest, int(np.argmax(depth > MAX_DEPTH)) if deepest > MAX_DEPTH else -1


def check_depth(path, data: bytes, *, line: int | None = None) -> None:
    """A DataError naming the file and line where the JSON text `data` (a file's content, or its
    `line`) nests deeper than MAX_DEPTH."""
    deepest, at = json_depth(data)
    if deepest > MAX_DEPTH:
        raise DataError(f"values nested deeper than {MAX_DEPTH} levels", file=path,
                        line=line if line is not None else data.count(b"\n", 0, at) + 1)


def deep_lines(buffer, start_line: int = 1) -> list[tuple[int, int, int]]:
    """(line number, start, end) of the lines of a JSON-lines buffer that hold more than MAX_DEPTH
    '[' or '{': only those can nest deeper, and `check_depth` looks at them alone. One pass of
    numpy over blocks of 1 MB, so that a file of gigabytes is looked at in about a second."""
    import numpy as np

    data = np.frombuffer(buffer, dtype=np.uint8)
    block = 1 << 20
    found: list[tuple[int, int, int]] = []
    line, line_start, carry = start_line, 0, 0  # the current line, its start, its '[' and '{' so far
    for s in range(0, len(data), block):
        chunk = data[s:s + block]
        opens = np.cumsum((chunk == 0x5B) | (chunk == 0x7B), dtype=np.int64)
        breaks = np.flatnonzero(chunk == 0x0A)
        if not len(breaks):
            carry += int(opens[-1]) if len(opens) else 0
            continue
        per_line = np.diff(opens[breaks], prepend=0)
        per_line[0] += carry
        for k in np.flatnonzero(per_line > MAX_DEPTH):
            begin = line_start if k == 0 else s + int(breaks[k - 1]) + 1
            found.append((line + int(k), begin, s + int(breaks[k])))
        line += len(breaks)
        line_start = s + int(breaks[-1]) + 1
        carry = int(opens[-1] - opens[breaks[-1]])
    if carry > MAX_DEPTH:
        found.append((line, line_start, len(data)))
    return found


# A \u escape of a UTF-16 surrogate (D800-DFFF): json.loads makes a lone one a str that no
# UTF-8 can hold, and every later write of it fails (UnicodeEncodeError).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
LONE_SURROGATE = ("holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair), which is no character: "
                  "UTF-8 cannot hold it")
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                                    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def lone_surrogate(value, where: str = "") -> str | None:
    """The field (a dotted path, '' for the value itself) of the first text, key or value, in
    `value` that holds a lone surrogate; None when there is none."""
    stack = [(value, where)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return where
        elif isinstance(value, dict):
            for k, v in value.items():
                name = f"{where}.{k}" if where else str(k)
                if isinstance(k, str) and _SURROGATE.search(k):
                    return where or "(a key)"
                stack.append((v, name))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
    return None


def _check_surrogates(path, data: bytes, value, *, line: int | None = None) -> None:
    if b"\\u" not in data or not _SURROGATE_ESCAPE.search(data):  # the usual case: no escape of one at all
        return
    field = lone_surrogate(value)
    if field is None:
        return
    if line is None:
        m = _LONE_SURROGATE_ESCAPE.search(data)
        line = data.count(b"\n", 0, m.start()) + 1 if m else None
    raise DataError(LONE_SURROGATE, file=path, line=line, field=field or None)


def check_utf8(path: Path, data: bytes | None = None) -> None:
    """A DataError naming the file and line of the first byte that is not UTF-8."""
    data = read_input(path) if data is None else data
    if valid_utf8(data):
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})",
                        file=path, line=line) from None


def valid_utf8(data) -> bool:
    """Arrow's UTF-8 check of bytes (or any buffer) in place: 8x faster than decoding them, and no
    copy of a file of gigabytes. The decode that names the bad byte runs only on failure."""
    import numpy as np
    import pyarrow as pa

    whole = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int64)),
                                                          pa.py_buffer(data)])
    try:
        whole.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def iter_jsonl(path: Path):
    """(line number, object) for each non-blank line of a JSON-lines file.

    Lines are split on '\\n' only (a raw U+2028 inside a string is not a line break);
    a line that is not UTF-8, not JSON or not an object is a DataError naming it.
    """
    check_input(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is no content
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 ({raw[e.start:e.start + 1]!r} at column {e.start + 1})",
                                file=path, line=lineno) from None
            if not text.strip():
                continue
            rec = _loads(path, raw, text, line=lineno)
            if not isinstance(rec, dict):
                raise DataError(f"expected a JSON object, got {json_kind(rec)}", file=path, line=lineno)
            yield lineno, rec


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words: null, true, a number, text, a list, an object."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {int: "a number", float: "a number", str: "text", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _loads(path, raw: bytes, text: str, *, line: int | None = None):
    """json.loads of `text` (from the bytes `raw`), within MAX_DEPTH and holding no lone surrogate."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({_json_problem(e)})", file=path,
                        line=line if line is not None else e.lineno) from None
    except RecursionError:  # deeper than Python's parser goes, so deeper than MAX_DEPTH: named below
        value = _TOO_DEEP
    check_depth(path, raw, line=line)
    if value is _TOO_DEEP:  # pragma: no cover - check_depth has refused it
        raise DataError(f"values nested deeper than {MAX_DEPTH} levels", file=path, line=line)
    _check_surrogates(path, raw, value, line=line)
    return value


_TOO_DEEP = object()


def read_json_document(path: Path, *, kind: str = "JSON document"):
    """A JSON file's content, with errors that name the file and line. `kind`: its size limit
    (`MAX_BYTES`)."""
    data = read_input(path, kind=kind)
    if not data.strip():
        raise DataError("the file is empty", file=path)
    check_utf8(path, data)
    return _loads(path, data, data.decode("utf-8-sig"))  # a byte-order mark is no content


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting bounded while it scans and composes (PyYAML recurses once
    a level: 3,000 levels were a RecursionError, and its scanner takes time quadratic in the depth of
    [ and {); `read_yaml` bounds what the aliases expand to."""

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"values nested deeper than {MAX_DEPTH} levels",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"values nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# How many values a YAML file may expand to, its aliases each counted as a copy of what they
# name: an alias bomb (a list of nine aliases of a list of nine ..., nine levels deep) is a
# few hundred bytes that expand to 387 million values; taskdiv's configs hold a few hundred.
MAX_YAML_VALUES = 100_000


def read_yaml(path):
    """A YAML file's content (None when it holds none), read by PyYAML's safe loader within
    bounds: at most `MAX_BYTES['YAML file']`, UTF-8, nested at most MAX_DEPTH levels, expanding
    (aliases counted as copies) to at most MAX_YAML_VALUES values, and no alias to a value that
    holds it. Errors name the file and line."""
    path = Path(path)
    data = read_input(path, kind="YAML file")
    check_utf8(path, data)
    loader = None
    try:
        loader = _BoundedLoader(data.decode("utf-8-sig"))  # refuses characters YAML does not allow (NUL)
        node = loader.get_single_node()
        if node is None:
            return None
        _yaml_size(node, path)
        value = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise DataError(f"invalid YAML ({e.problem or e.context})", file=path,
                        line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as e:
        raise DataError(f"invalid YAML ({e.reason}: {chr(e.character)!r} is not allowed)", file=path,
                        line=data.count(b"\n", 0, len(data.decode("utf-8-sig")[:e.position].encode())) + 1) from None
    except yaml.YAMLError as e:
        raise DataError(f"invalid YAML ({e})", file=path) from None
    except (ValueError, OverflowError) as e:  # a scalar PyYAML matched but cannot make: 2026-13-45, 10**5000
        raise DataError(f"invalid YAML ({e})", file=path) from None
    finally:
        if loader is not None:
            loader.dispose()
    field = lone_surrogate(value)
    if field is not None:
        raise DataError(LONE_SURROGATE, file=path, field=field or None)
    return value


def _yaml_size(root, path) -> None:
    """Refuse a YAML document that expands to more than MAX_YAML_VALUES values or deeper than
    MAX_DEPTH levels (aliases expanded), or whose alias names a value that holds it; each node
    is looked at once (its size and height remembered), so a bomb is refused in microseconds."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)
    active: set[int] = set()

    def visit(node, depth):
        key = id(node)
        if key in sizes:
            size, height = sizes[key]
        elif key in active:
            raise DataError("an alias names a value that holds it", file=path, line=node.start_mark.line + 1)
        else:
            active.add(key)
            children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) \
                else node.value if isinstance(node, yaml.SequenceNode) else []
            if children and depth + 1 > MAX_DEPTH:
                raise DataError(f"nests deeper than {MAX_DEPTH} levels (its aliases expanded); write the values "
                                f"out", file=path, line=node.start_mark.line + 1)
            size, height = 1, 0
            for child in children:
                s, h = visit(child, depth + 1)
                size, height = size + s, max(height, h + 1)
            active.discard(key)
            sizes[key] = size, height
        if size > MAX_YAML_VALUES or depth + height > MAX_DEPTH:
            what = (f"expands to more than {MAX_YAML_VALUES:,} values (its aliases counted as copies)"
                    if size > MAX_YAML_VALUES else f"nests deeper than {MAX_DEPTH} levels (its aliases expanded)")
            raise DataError(f"{what}; write the values out", file=path, line=node.start_mark.line + 1)
        return size, height

    visit(root, 0)


def _json_problem(e: json.JSONDecodeError) -> str:
    """'Expecting value at column 3'; json's own 'Unterminated string starting at' takes no second 'at'."""
    return f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"


def read_csv(path: Path, *, neutralised: bool = False, **kwargs) -> pd.DataFrame:
    """`pd.read_csv` with errors that name the file (and the line, for bad UTF-8).
    `neutralised`: a CSV taskdiv wrote (`dump_table`); its formula escapes are undone.

    With a header row, a column named twice and a row wider than the header are errors naming
    the line: pandas renamed the second column (`prompt.1`) and took a wider first row's
    leading fields for an index, shifting every column of the file."""
    data = read_input(path)
    if not data.strip():
        raise DataError("the file is empty", file=path)
    check_utf8(path, data)
    header = None
    if kwargs.get("header", "infer") == "infer" and "names" not in kwargs:
        header = _csv_header(path, data)
        kwargs.setdefault("index_col", False)  # no index inferred from a wider first row
    try:
        with warnings.catch_warnings():
            # pandas' only word for a first row wider than the header (index_col=False drops its extra fields)
            warnings.filterwarnings("error", "Length of header or names does not match", pd.errors.ParserWarning)
            frame = pd.read_csv(io.BytesIO(data), **kwargs)
        return unneutralise(frame) if neutralised else frame
    except pd.errors.ParserWarning:
        raise _wide_row(path, data, header) from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m and header is not None:
            raise _wide_row(path, data, header) from None
        raise DataError(f"not a readable CSV ({e})", file=path, line=int(m[2]) if m else None) from None


def _csv_header(path: Path, data: bytes) -> list[str]:
    """The header row's names; a name given twice is a DataError."""
    import csv

    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="") as text:
        names = next((row for row in csv.reader(text) if row), [])  # pandas skips blank lines
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"the header names column {name!r} twice; rename or drop one", file=path, line=1,
                            field=name)
        seen.add(name)
    return names


def _wide_row(path: Path, data: bytes, header: list[str]) -> DataError:
    """The error for the first row with more fields than the header (an unquoted comma in a value?)."""
    import csv

    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text)
        rows = (row for row in reader if row)
        next(rows, None)
        for row_no, fields in enumerate(rows, 1):
            if len(fields) > len(header):
                return DataError(f"{len(fields)} fields, the header has {len(header)} ({', '.join(header)}); "
                                 f"quote a value that holds a comma", file=path, line=reader.line_num, row=row_no)
    return DataError("a row has more fields than the header", file=path)


def file_sha256(spec: str) -> str:
    """The sha256 of a file's bytes; of a directory's files (a `save_to_disk` dataset: their
    paths and bytes, in sorted order); for a spec that is neither (hf:..., bigbench:...), of
    its text."""
    path = Path(spec)
    h = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(file.relative_to(path)).encode() + b"\0")
            _hash_file(h, file)
            h.update(b"\0")
        return h.hexdigest()
    if not path.is_file():
        return hashlib.sha256(spec.encode()).hexdigest()  # hub/bigbench spec: its text identifies it
    _hash_file(h, path)
    return h.hexdigest()


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


# ----------------------------------------------------------------------------- resumable files


def read_partial(partial: Path, key: str) -> dict[str, dict]:
    """The records of a resumable file ({"key": ...} and then one record with an "id" per
    line) written by a previous run with the same key, up to the first damaged line.

    A header that cannot be read counts as another key: the file is started afresh.
    """
    if not partial.exists():
        return {}
    lines = partial.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            break  # a line cut off by the interruption
        if not isinstance(rec, dict):
            break
        records.append(rec)
    if not records or records[0].get("key") != key:
        return {}
    return {rec["id"]: rec for rec in records[1:] if "id" in rec}


def append_partial(sink, recs, done, progress) -> None:
    """Append records to a partial file (one JSON line each, flushed), note them in `done`
    ({id: record}) and advance `progress`."""
    sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    sink.flush()
    for r in recs:
        done[r["id"]] = r
    progress.update(len(recs))


# ----------------------------------------------------------------------------- locks


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
