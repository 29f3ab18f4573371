"""The generic readers shared by every stage, bounded: JSON lines, JSON documents, CSV and YAML.

They raise a `DataError` that names the file and the line, so every stage reports bad input
alike, and refuse up front what a parser would choke on (`check_input`: a special file such as
/dev/zero, a file too large for its kind; values nested deeper than `MAX_DEPTH`, a text no UTF-8
can hold, a YAML alias bomb), so a parser's own error never reaches the user as a traceback.
`file_sha256` identifies an input by its content. The pool's own sources live in `taskdiv.pool`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import warnings
from pathlib import Path

import pandas as pd
import yaml

from .errors import DataError, TaskdivError
from .formulas import unneutralise

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
