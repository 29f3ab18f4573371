"""The JSONL reader of pools: a memory map of the file parsed by Arrow's multithreaded reader, a
piece of about 256 MB at a time, with the Python reader (which names the offending line) as
the fallback for anything Arrow would misread or crash on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..common.inputs import MAX_DEPTH, check_depth, check_utf8, deep_lines, iter_jsonl, valid_utf8
from .container import arrow_to_pandas


def _read_jsonl(path: Path) -> pd.DataFrame:
    # Why not pyarrow.json.read_json alone: measured 2026-12-06 on 500K rows (186 MB; 2 cores
    # shared with other jobs, best of 3) this reader takes 2.8 s and 693 MB at its peak,
    # read_json + to_pandas 2.7 s and 529 MB, pandas.read_json(lines=True) 10.4 s: it buys no
    # speed or memory over Arrow's reader. It buys what Arrow does not do: invalid UTF-8 and
    # lines nested deep enough to crash the parser refused naming the line, a line `null` (a
    # segfault in Arrow) and blank lines sent to the Python reader, which names the line,
    # strings that look like times kept as text, and each row's line number for errors.
    # Fast path: pyarrow's multithreaded reader on a memory map of the file (no copy of a
    # file of gigabytes). Anything it rejects is re-read line by line in Python, which finds
    # and names the offending line.
    table = _read_jsonl_arrow(path)
    if table is None:
        return _read_jsonl_slow(path)
    frame = arrow_to_pandas(table)
    frame["__line__"] = np.arange(1, len(frame) + 1)
    return frame


JSONL_PIECE = 1 << 28  # bytes of a JSONL file parsed at a time (pieces end at a line break)


def _read_jsonl_arrow(path: Path):
    """The file as an Arrow table if pyarrow reads it as one row per non-blank line, else None.

    The file is memory-mapped and read a piece of about 256 MB at a time: each piece is
    checked as UTF-8, its line breaks counted, parsed by Arrow's multithreaded reader, and
    then let go of, so a file of gigabytes is neither copied nor held whole in memory."""
    import mmap

    import pyarrow as pa

    with open(path, "rb") as f:
        try:
            data, mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), True
        except (OSError, ValueError):  # a file system without memory maps: read it whole
            data, mapped = f.read(), False
    try:
        whole = pa.py_buffer(data)
        tables, breaks, start, size = [], 0, 0, len(data)
        while start < size:
            end = min(start + JSONL_PIECE, size)
            if end < size:  # up to the piece's last line break (or the next one, for a longer line)
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= 0 else (data.find(b"\n", end) + 1 or size)
            piece = whole.slice(start, end - start)
            if not valid_utf8(piece):  # pyarrow lets invalid UTF-8 through
                check_utf8(path)  # names the line
            newlines, plain, bracketed = _scan_lines(piece)
            if bracketed:  # a line may nest deep enough to crash Arrow's parser: look at each such line
                for line, begin, stop in deep_lines(piece, breaks + 1):
                    check_depth(path, piece.slice(begin, stop - begin).to_pybytes(), line=line)
            if not plain and not _lines_are_objects(piece):
                return None  # a line `null` crashes Arrow's parser; the Python reader names the line
            breaks += newlines
            try:
                table = _parse_json_piece(piece)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, UnicodeDecodeError,
                    _TooDeep):
                return None
            if table.num_rows:
                tables.append(table)
            del piece
            low, high = start - start % mmap.PAGESIZE, end - end % mmap.PAGESIZE
            if high > low and mapped and hasattr(mmap, "MADV_DONTNEED"):
                data.madvise(mmap.MADV_DONTNEED, low, high - low)  # out of the resident set; the file stays
            start = end
        # pyarrow skips blank lines, which would shift the line numbers errors report: the
        # fast path's rows must be the file's lines one for one (a blank last line aside).
        tail = data[data.rfind(b"\n") + 1:]
        lines = breaks + (1 if tail.strip() else 0)
        del whole
    finally:
        try:
            if mapped:
                data.close()
        except BufferError:  # a view still held by an exception in flight: closed when collected
            pass
    if not tables:
        return None
    try:  # the pieces' inferred types, unified as one reading of the whole file would
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return table if table.num_columns and table.num_rows == lines else None


def _parse_json_piece(piece):
    """Arrow's parse of JSON lines, with JSON strings kept as strings: Arrow's type inference
    turns strings that look like times ("2024-01-05T10:00:00Z") into timestamps, which would
    rewrite ids and prompts; a piece that has such a field is parsed again with it as text."""
    import pyarrow as pa
    import pyarrow.json as pj

    options = pj.ReadOptions(block_size=1 << 24)
    table = pj.read_json(pa.BufferReader(piece), read_options=options)
    if 1 + max((_type_depth(f.type) for f in table.schema), default=0) > MAX_DEPTH:
        raise _TooDeep  # before pandas' conversion (which crashes on deep types) and _no_timestamps' recursion
    schema = pa.schema([f.with_type(_no_timestamps(f.type)) for f in table.schema])
    if schema.equals(table.schema):
        return table
    return pj.read_json(pa.BufferReader(piece), read_options=options,
                        parse_options=pj.ParseOptions(explicit_schema=schema))


def _no_timestamps(kind):
    """An Arrow type with every timestamp in it, at any depth, read as a string instead."""
    import pyarrow as pa

    if pa.types.is_timestamp(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([kind.field(i).with_type(_no_timestamps(kind.field(i).type)) for i in range(kind.num_fields)])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_no_timestamps(kind.value_type)))
    return kind


class _TooDeep(Exception):
    """A piece whose values nest deeper than MAX_DEPTH: read again by the Python reader, which names the line."""


def _type_depth(kind) -> int:
    """How deep an Arrow type nests (structs and lists), as the JSON it was read from nests;
    counted without recursion (the type may be thousands of levels deep)."""
    import pyarrow as pa

    deepest, stack = 0, [(kind, 0)]
    while stack:
        kind, depth = stack.pop()
        deepest = max(deepest, depth)
        if pa.types.is_struct(kind):
            stack += [(kind.field(i).type, depth + 1) for i in range(kind.num_fields)]
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            stack.append((kind.value_type, depth + 1))
    return deepest


# A line with this many '[' and '{' may nest deep enough to crash pyarrow's JSON parser (26: at
# about 17,000 levels); below it, the parsed table's type tells the depth (`_type_depth`).
CRASH_BRACKETS = 2000


def _scan_lines(buffer) -> tuple[int, bool, bool]:
    """(line breaks in a JSON-lines buffer, whether each line starts with '{' right away, whether a
    line may hold CRASH_BRACKETS '[' or '{').

    One pass of numpy in blocks of 1 MB that stay in the CPU's cache. A line that starts
    otherwise (blank, indented, or no object) sends the buffer to `_lines_are_objects`. The
    third answer is a bound from the brackets in each 16 KB: a line within two neighbouring
    stretches holds at most theirs, and a longer line at most those of the stretches without a
    line break it crosses and of the two at its ends. Usual data has a few hundred brackets in
    16 KB, so the exact look at each line (`inputs.deep_lines`) is rarely needed."""
    data = np.frombuffer(buffer, dtype=np.uint8)
    block, stretch = 1 << 20, 1 << 14
    newlines, plain, opens, breaks = 0, not len(data) or data[0] == 0x7B, [], []
    for s in range(0, len(data), block):
        chunk = data[s:s + block]
        is_break = chunk == 10
        newlines += int(np.count_nonzero(is_break))
        after = data[s + 1:s + 1 + len(chunk)]  # the byte after each one
        plain = plain and not (is_break[:len(after)] & (after != 0x7B)).any()
        is_open = ((chunk | 0x20) == 0x7B).view(np.uint8)  # '[' is 0x5B, '{' 0x7B
        full = len(chunk) // stretch * stretch
        for part in (slice(0, full), slice(full, len(chunk))):  # the whole stretches, and what is left
            width = min(stretch, part.stop - part.start)
            if width:
                opens.append(is_open[part].reshape(-1, width).sum(axis=1, dtype=np.uint16))  # 16 KB: fits
                breaks.append(is_break[part].reshape(-1, width).any(axis=1))
    if not opens:
        return 0, plain, False
    opens, breaks = np.concatenate(opens).astype(np.int64), np.concatenate(breaks)
    pairs = opens[:-1] + opens[1:] if len(opens) > 1 else opens
    if pairs.max() < CRASH_BRACKETS and breaks.all():
        return newlines, plain, False
    # Stretches without a line break: a line crossing them holds at most them and their two neighbours.
    run = np.cumsum(np.concatenate([[0], opens]))
    bound, i = int(pairs.max()), 0
    while i < len(opens):
        if breaks[i]:
            i += 1
            continue
        j = i
        while j < len(opens) and not breaks[j]:
            j += 1
        bound = max(bound, int(run[min(j + 1, len(opens))] - run[max(i - 1, 0)]))
        i = j
    return newlines, plain, bound >= CRASH_BRACKETS


def _lines_are_objects(buffer) -> bool:
    """Whether each non-blank line starts with '{'. Arrow's JSON reader crashes the process on a
    first line `null` (pyarrow 26: a segfault) and reads a later one as a row of nulls. Numpy looks
    at the byte after each line break, in blocks of 1 MB; the few lines that start otherwise (blank,
    indented) are looked at one by one. A byte-order mark sends the file to the Python reader too."""
    data = np.frombuffer(buffer, dtype=np.uint8)
    block = 1 << 20
    for s in range(0, len(data), block):
        starts = np.flatnonzero(data[s:s + block] == 10) + s + 1
        if s == 0:
            starts = np.concatenate([[0], starts])
        starts = starts[starts < len(data)]
        for i in starts[data[starts] != 0x7B]:
            while i < len(data) and data[i] in (0x20, 0x09, 0x0D):  # JSON's blanks
                i += 1
            if i < len(data) and data[i] not in (0x0A, 0x7B):
                return False
    return True


def _from_records(records: list[dict]) -> pd.DataFrame:
    """Records as a frame whose columns hold the JSON values as they are (pandas would make
    a column of whole numbers and nulls floats)."""
    frame = pd.DataFrame.from_records(records)
    for name in frame.columns:
        if frame[name].dtype.kind == "f" and frame[name].isna().any():
            values = [rec.get(name) for rec in records]
            if all(v is None or isinstance(v, int) for v in values):
                frame[name] = pd.Series(values, index=frame.index, dtype=object)
    return frame


def _read_jsonl_slow(path: Path) -> pd.DataFrame:
    records, lines = [], []
    for lineno, rec in iter_jsonl(path):
        records.append(rec)
        lines.append(lineno)
    frame = _from_records(records)
    frame["__line__"] = lines
    return frame
