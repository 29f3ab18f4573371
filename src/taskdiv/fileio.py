"""Atomic file output and the generic readers shared by every stage.

Everything taskdiv writes goes through `atomic_path`: the content is written to a
temporary file in the same directory and renamed into place, so a crash or Ctrl-C
never leaves a half-written output behind.

The readers (`iter_jsonl`, `read_json_document`, `read_csv`, `check_utf8`) raise a
`DataError` that names the file and the line, so every stage reports bad input alike;
`file_sha256` identifies an input by its content. The pool's own sources and their
normalisation live in `data`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from .errors import DataError


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


# ----------------------------------------------------------------------------- reading


def check_utf8(path: Path, data: bytes | None = None) -> None:
    """A DataError naming the file and line of the first byte that is not UTF-8."""
    data = path.read_bytes() if data is None else data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})",
                        file=path, line=line) from None


def iter_jsonl(path: Path):
    """(line number, object) for each non-blank line of a JSON-lines file.

    Lines are split on '\\n' only (a raw U+2028 inside a string is not a line break);
    a line that is not UTF-8, not JSON or not an object is a DataError naming it.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 ({raw[e.start:e.start + 1]!r} at column {e.start + 1})",
                                file=path, line=lineno) from None
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON ({e.msg} at column {e.colno})",
                                file=path, line=lineno) from None
            if not isinstance(rec, dict):
                raise DataError(f"expected a JSON object, got {type(rec).__name__}",
                                file=path, line=lineno)
            yield lineno, rec


def read_json_document(path: Path):
    """A JSON file's content, with errors that name the file and line."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError("the file is empty", file=path)
    check_utf8(path, data)
    try:
        return json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", file=path, line=e.lineno) from None


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """`pd.read_csv` with errors that name the file (and the line, for bad UTF-8)."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError("the file is empty", file=path)
    check_utf8(path, data)
    try:
        return pd.read_csv(io.BytesIO(data), **kwargs)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise DataError(f"not a readable CSV ({e})", file=path) from None


def file_sha256(spec: str) -> str:
    """The sha256 of a file's bytes; for a spec that is not a file (hf:..., bigbench:...), of its text."""
    path = Path(spec)
    if not path.is_file():
        return hashlib.sha256(spec.encode()).hexdigest()  # hub/bigbench spec: its text identifies it
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
