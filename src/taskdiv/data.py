"""The pool: unlabeled prompts with task labels, loaded from any common source.

A pool is a table with one row per prompt and these columns:

    id        str   unique; generated (stable hash of task and prompt) when absent
    prompt    str   non-empty
    task      str   the task label (may be absent only for `--tasks auto`)
    response  str   optional reference response (stands in for the annotator)
    choices   list  optional answer options (multiple-choice evaluation)
    targets   list  optional accepted answers (evaluation)

Sources (`load_pool(spec)`):
    path.jsonl | path.json | path.csv | path.parquet   a file
    DIR                                                 a `datasets` save_to_disk dir
    hf:NAME?config=C&split=S&sample=N&seed=0            a Hugging Face hub dataset
    bench:PRESET_OR_TASKS?split=pool|test&...           local benchmark collections (benchmarks.py)
    mmlu:SUBJECTS  bbh:TASKS  gauntlet:TASKS            one collection (the same options)
    bigbench:PRESET_OR_TASKS?split=pool|test&...        BIG-bench, from its sdist (bigbench.py)

Field names are mapped with `FieldMap`; Alpaca (instruction/input/output) and chat
(messages or ShareGPT conversations) shapes are recognised without mapping.

    python -m taskdiv.data POOL      # prints the per-task counts
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from .errors import DataError, TaskdivError
from .fileio import (MAX_DEPTH, check_depth, check_input, check_utf8, deep_lines, iter_jsonl, read_csv,
                     read_json_document, valid_utf8)

log = logging.getLogger(__name__)

OPTIONAL_COLUMNS = ("response", "choices", "targets")


@dataclass
class FieldMap:
    """Which source fields hold the id, prompt, task and response."""

    id_field: str = field(default="id", metadata={
        "help": "Source field holding the prompt id (generated when absent)."})
    prompt_field: str = field(default="prompt", metadata={"help": "Source field holding the prompt text."})
    task_field: str = field(default="task", metadata={"help": "Source field holding the task label (Dolly: category)."})
    response_field: str = field(default="response", metadata={"help": "Source field holding the reference response."})
    prompt_template: str | None = field(default=None, metadata={
        "help": "Build the prompt from several fields, e.g. '{instruction}\\n\\n{context}' for Dolly. "
                "Empty fields and the separators around them are dropped. \\n, \\t and \\\\ are read as "
                "newline, tab and backslash, on the command line as in YAML."})

    def field_map(self) -> "FieldMap":
        """Just the field mapping of a config that extends FieldMap (PoolOptions, OracleConfig)."""
        return FieldMap(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FieldMap)})


@dataclass
class PoolOptions(FieldMap):
    """The POOL argument and its field mapping: the options of every command that reads a pool."""

    pool: str | None = field(default=None, metadata={
        "positional": True, "required": True,
        "help": "The pool: a .jsonl/.json/.csv/.parquet file, a save_to_disk directory, "
                "hf:NAME?config=C&split=S, a benchmark preset or collection (bench:many, bench:demo, "
                "mmlu:SUBJECTS, bbh:TASKS, gauntlet:TASKS; ?split=pool|test) or bigbench:TASKS (see README)."})


@dataclass
class Pool:
    """A validated table of prompts (see the module docstring for the columns).

    `id_rank`: each row's place among the sorted ids (0 for the smallest), when the loader
    has it already (it ranks the ids to check they are unique); computed on first use."""

    frame: pd.DataFrame
    source: str = ""
    id_rank: np.ndarray | None = field(default=None, repr=False, compare=False)
    codes: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)  # task_codes()

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> np.ndarray:
        return self.frame["id"].to_numpy()

    @property
    def has_tasks(self) -> bool:
        return "task" in self.frame.columns

    def task_sizes(self) -> pd.Series:
        """Number of prompts per task, indexed by task, sorted by task name."""
        return self.frame["task"].value_counts().sort_index()

    def task_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(tasks sorted by name, an int code per row indexing into them)."""
        if self.codes is None or len(self.codes[1]) != len(self.frame):
            self.codes = task_codes(self.frame["task"])
        return self.codes

    def positions(self, ids) -> np.ndarray:
        """Row position of each id (-1 where the id is not in the pool); vectorised."""
        return self._positions(ids)[0]

    def _positions(self, ids) -> tuple[np.ndarray, bool]:
        """positions(ids), and whether `ids` are exactly the pool's ids in pool order."""
        import pyarrow as pa
        import pyarrow.compute as pc

        haystack, needles = arrow_text(self.frame["id"]), arrow_text(ids)
        if haystack.type != needles.type:
            haystack, needles = haystack.cast(pa.large_string()), needles.cast(pa.large_string())
        if len(needles) == len(haystack) and pc.all(pc.equal(needles, haystack)).as_py():
            # The pool's own ids in pool order (a fully scored pool): no hash table of every id.
            return np.arange(len(haystack), dtype=np.int64), True
        return pc.index_in(needles, value_set=haystack).fill_null(-1).to_numpy().astype(np.int64), False

    def ranks(self) -> np.ndarray:
        """Each row's place among the sorted ids (0-based): an order that does not depend
        on the order of the rows."""
        if self.id_rank is None or len(self.id_rank) != len(self.frame):
            self.id_rank = id_ranks(self.frame["id"])
        return self.id_rank

    def random_keys(self, seed: int) -> np.ndarray:
        """A uniform random number in [0, 1) per row, drawn by the seed in the order of the
        sorted ids: it depends on the seed and the set of ids, not on the order of the rows,
        so a pool re-exported in another order gives the same selections."""
        ranks = self.ranks()
        return np.random.default_rng(seed).random(len(ranks))[ranks]

    def rows(self, positions, columns) -> pd.DataFrame:
        """These columns at these row positions, with a fresh index. pyarrow-backed
        columns are gathered by Arrow (6x faster than pandas' take on 10M rows)."""
        import pyarrow as pa

        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions, kind="stable")  # once for every column
        out = {}
        for name in columns:
            values = self.frame[name]
            if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
                taken = _take(pa.array(values), positions, order)
                out[name] = pd.Series(taken.to_pandas(types_mapper={
                    pa.string(): values.dtype, pa.large_string(): values.dtype}.get), copy=False)
            else:
                out[name] = values.take(positions).reset_index(drop=True)
        return pd.DataFrame(out)

    def subset(self, ids) -> "Pool":
        """The rows with these ids, in the given order."""
        pos = self.positions(ids)
        if (pos < 0).any():
            missing = [i for i, p in zip(ids, pos) if p < 0][:5]
            raise TaskdivError(f"ids not in the pool {self.source}: {missing}")
        return Pool(self.frame.iloc[pos].reset_index(drop=True), self.source)


def task_codes(labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(the labels sorted, an int code per row indexing into them; -1 where missing)."""
    if labels.isna().any():  # unlabelled rows: code -1, as pandas gives them
        codes, uniques = pd.factorize(labels, sort=True)
        return np.asarray(uniques, dtype=object), codes
    # Arrow's hash encoding, then its small dictionary sorted: 2x faster than pd.factorize.
    names, indices = _dictionary(arrow_text(labels))
    return _sorted_codes(names, indices)


def _dictionary(labels):
    """(the distinct labels in order of first appearance, an index per row into them) by
    Arrow's hash encoding. A chunked column (pyarrow-backed, read in blocks) is encoded chunk
    by chunk with one hash table, without first joining the chunks."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(labels)
    if not isinstance(encoded, pa.ChunkedArray):
        return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False)
    if encoded.num_chunks == 0:
        return pa.array([], pa.string()), np.zeros(0, dtype=np.int32)
    names = encoded.chunk(encoded.num_chunks - 1).dictionary  # the table grows: the last holds every label
    if any(len(chunk.dictionary) != len(names) for chunk in encoded.chunks):
        encoded = encoded.unify_dictionaries()
        names = encoded.chunk(0).dictionary
    return names, np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks])


def _sorted_codes(names, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """task_codes() from an Arrow dictionary: its names sorted, the indices mapped to them."""
    import pyarrow.compute as pc

    by_name = pc.sort_indices(names).to_numpy()
    code_of = np.empty(len(by_name), dtype=np.int64)
    code_of[by_name] = np.arange(len(by_name))
    return np.asarray(names.take(by_name).to_pylist(), dtype=object), code_of[indices]


def _take(values, positions: np.ndarray, order: np.ndarray | None = None):
    """values.take(positions) for a chunked Arrow array, chunk by chunk: Arrow's own take
    of a chunked array first joins every chunk (a copy of the whole column). `order`:
    np.argsort(positions, kind="stable"), when the caller gathers several columns."""
    import pyarrow as pa

    if not isinstance(values, pa.ChunkedArray) or values.num_chunks <= 1:
        return values.take(positions)
    order = np.argsort(positions, kind="stable") if order is None else order
    ordered = positions[order]
    ends = np.cumsum([len(c) for c in values.chunks])
    cuts = np.searchsorted(ordered, ends)
    pieces, start, begin = [], 0, 0
    for chunk, end, cut in zip(values.chunks, ends, cuts):
        if cut > start:
            pieces.append(chunk.take(ordered[start:cut] - begin))
        start, begin = cut, end
    gathered = pa.concat_arrays(pieces) if pieces else values.chunks[0].slice(0, 0)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return gathered.take(back)


def arrow_text(values):
    """Strings as an Arrow array (string or large_string): zero-copy for pyarrow-backed
    columns (pandas >= 3), which most pools are."""
    import pyarrow as pa

    if not isinstance(values, pd.Series):
        values = pd.Series(np.asarray(values, dtype=object))
    return pa.array(values.astype("str"))


def id_ranks(ids) -> np.ndarray:
    """Each id's place among the distinct ids in sorted order, 0-based (equal ids share
    one place, so the ids are unique exactly when the largest is len(ids) - 1). Arrow's
    string sort: on 10M ids about 4x faster than hashing them, which is why the
    uniqueness check ranks too."""
    import pyarrow.compute as pc

    ranks = pc.rank(arrow_text(ids), sort_keys="ascending", tiebreaker="dense").to_numpy()
    return np.subtract(ranks, 1, dtype=np.int64, casting="unsafe")


def stable_id(task: str, prompt: str) -> str:
    """A short id that depends only on the task label and the prompt text."""
    return hashlib.sha1(f"{task}\x1f{prompt}".encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


SOURCES = ("hf", "bigbench", "bench", "mmlu", "bbh", "gauntlet")


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split 'kind:name?k=v&k=v' into (kind, name, options). Paths have kind 'path'."""
    for kind in SOURCES:
        if spec.startswith(kind + ":"):
            rest = spec[len(kind) + 1:]
            name, _, query = rest.partition("?")
            return kind, name, dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    return "path", spec, {}


def pool_from_frame(raw: pd.DataFrame, fields: FieldMap | None = None, *, source: str = "DataFrame",
                    require_tasks: bool = True) -> Pool:
    """A validated pool from rows already in memory (a DataFrame, a list of dicts, a
    `datasets.Dataset`): the checks `load_pool` runs on a file, errors naming the row."""
    if len(raw) == 0:
        raise DataError("the pool is empty: no rows", file=source)
    frame, ranks, codes = _normalise(raw.reset_index(drop=True), fields or FieldMap(), source=source, where="row",
                                     require_tasks=require_tasks)
    return Pool(frame, source, id_rank=ranks, codes=codes)


def load_pool(spec: str, fields: FieldMap | None = None, *, require_tasks: bool = True) -> Pool:
    """Load and validate a pool from a file, a hub dataset or BIG-bench."""
    fields = fields or FieldMap()
    kind, name, opts = parse_spec(str(spec))
    if kind == "bigbench":
        from . import bigbench

        frame = bigbench.load_spec(name, opts)
        return Pool(frame.reset_index(drop=True), str(spec))
    if kind in ("bench", "mmlu", "bbh", "gauntlet"):
        from . import benchmarks

        return Pool(benchmarks.load_spec(kind, name, opts).reset_index(drop=True), str(spec))
    if kind == "hf":
        raw, where = _read_hub(name, opts), "row"
    else:
        raw, where = read_raw(Path(name))
    if len(raw) == 0:
        raise DataError("the pool is empty: the source has no rows", file=spec)
    frame, ranks, codes = _normalise(raw, fields, source=str(spec), where=where, require_tasks=require_tasks)
    return Pool(frame, str(spec), id_rank=ranks, codes=codes)


def read_raw(path: Path) -> tuple[pd.DataFrame, str]:
    """Read a file (or a save_to_disk directory) into a raw DataFrame.

    Returns the frame and how its rows are named in errors ('line' for JSONL, where
    the frame carries a `__line__` column with the physical line numbers).
    """
    try:
        found = path.exists()
    except OSError as e:  # a name too long for the file system, a loop of links
        raise TaskdivError(f"{path}: {e.strerror or e}") from None
    if not found:
        raise TaskdivError(
            f"{path}: no such file or directory (a hub dataset is written hf:NAME, "
            f"a benchmark preset bench:many or bench:demo)")
    if path.is_dir():
        try:
            import datasets
        except ImportError as e:
            raise TaskdivError(f"{path} is a directory; reading a saved dataset needs "
                               f"`pip install taskdiv[hf]`") from e
        return _read_saved(path, datasets), "row"
    if check_input(path).st_size == 0:
        raise DataError("the file is empty", file=path)
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".jsonl":
        return _read_jsonl(path), "line"
    if suffix == ".json":
        return _read_json(path), "record"
    if suffix == ".csv":
        return read_csv(path, dtype=str, keep_default_na=False, na_values=[]), "row"
    if suffix == ".parquet":
        return arrow_to_pandas(read_parquet(path)), "row"
    raise TaskdivError(f"{path}: unknown pool format {suffix!r} (use .jsonl, .json, .csv, .parquet, "
                       f"a save_to_disk directory, hf:NAME or bigbench:TASKS)")


def read_parquet(path: Path, columns=None):
    """A Parquet file as an Arrow table (`columns`: only those), checked in full; a damaged or
    truncated file is a DataError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=columns)
        table.validate(full=True)  # every offset in bounds, every text UTF-8: pandas trusts both
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as e:  # ArrowInvalid is a ValueError
        raise DataError(f"not a readable Parquet file ({_first_line(e)})", file=path) from None
    return table


def _read_saved(path: Path, datasets) -> pd.DataFrame:
    """A dataset written by `save_to_disk`, checked as `read_parquet` checks a file. Its Arrow files
    are memory-mapped as they are, so a damaged one could crash pandas' conversion: Arrow's full
    validation runs first."""
    import pyarrow as pa

    try:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise TaskdivError(f"{path} holds several splits ({', '.join(ds)}); "
                               f"point at one of them, e.g. {path / next(iter(ds))}")
        table = ds.with_format("arrow")[:]
        table.validate(full=True)
        return arrow_to_pandas(table)
    except FileNotFoundError as e:
        raise TaskdivError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
    # What `datasets` and Arrow raise for damaged files (a JSON file that is not, a truncated Arrow
    # file, a state.json naming files that are not there or holding the wrong types).
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            UnicodeDecodeError) as e:
        raise DataError(f"not a readable dataset saved with save_to_disk ({type(e).__name__}: {_first_line(e)})",
                        file=path) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_jsonl(path: Path) -> pd.DataFrame:
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
    16 KB, so the exact look at each line (`fileio.deep_lines`) is rarely needed."""
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


def arrow_to_pandas(table) -> pd.DataFrame:
    """An Arrow table as pandas, with whole numbers kept whole: an integer column with a
    null would otherwise become floats, and 42 the text "42.0"."""
    return table.to_pandas(integer_object_nulls=True)


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


def _read_json(path: Path) -> pd.DataFrame:
    data = read_json_document(path)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("expected a list of records, or an object holding exactly one list",
                            file=path)
        data = lists[0]
    if not isinstance(data, list):
        raise DataError("expected a list of records", file=path)
    for i, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise DataError(f"expected an object, got {type(rec).__name__}", file=path, row=i)
    return _from_records(data)


def _read_hub(name: str, opts: dict[str, str]) -> pd.DataFrame:
    """A hub dataset split; `sample=N` keeps a seeded random N rows (large collections
    such as FLAN v2 stay memory-mapped until the sample is taken)."""
    try:
        import datasets
    except ImportError as e:
        raise TaskdivError("hub datasets need `pip install taskdiv[hf]`") from e
    known = {"config", "split", "revision", "sample", "seed"}
    unknown = set(opts) - known
    if unknown:
        raise TaskdivError(f"hf:{name}: unknown option(s) {sorted(unknown)} (known: {', '.join(sorted(known))})")
    ds = datasets.load_dataset(name, opts.get("config"), split=opts.get("split", "train"),
                               revision=opts.get("revision"))
    if opts.get("sample"):
        try:
            n, seed = int(opts["sample"]), int(opts.get("seed", 0))
        except ValueError:
            raise TaskdivError(f"hf:{name}: sample and seed must be whole numbers") from None
        if n < len(ds):
            ds = ds.shuffle(seed=seed).select(range(n))
    return arrow_to_pandas(ds.with_format("arrow")[:])


# ----------------------------------------------------------------------------- normalising


def _source_fields(columns) -> list[str]:
    """A source's field names for error messages (without the line numbers taskdiv adds)."""
    return sorted(c for c in columns if c != "__line__")


def _detect_shape(columns, fields: FieldMap) -> str:
    if fields.prompt_template or fields.prompt_field in columns:
        return "mapped"
    if "instruction" in columns and "output" in columns:
        return "alpaca"
    if "messages" in columns or "conversations" in columns:
        return "chat"
    return "mapped"


def normalise(raw: pd.DataFrame, fields: FieldMap, *, source: str, where: str = "row",
              require_tasks: bool = True) -> pd.DataFrame:
    """Map a raw source table onto the pool columns and validate every row."""
    return _normalise(raw, fields, source=source, where=where, require_tasks=require_tasks)[0]


def _normalise(raw: pd.DataFrame, fields: FieldMap, *, source: str, where: str,
               require_tasks: bool) -> tuple[pd.DataFrame, np.ndarray | None, tuple | None]:
    """normalise(), the ranks of the ids (Pool.id_rank) that the uniqueness check of given
    ids computes on the way (None for generated ids), and the task codes (Pool.codes).

    The ids are ranked in a second thread (Arrow's sort lets go of the GIL) while this one
    checks the prompts and tasks: on 2 cores and 10M prompts, about a second saved."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskdiv-ids") as helper:
        ranking = None
        ids = raw[fields.id_field] if fields.id_field in raw.columns else None
        if ids is not None and not ids.isna().any() \
                and pd.api.types.infer_dtype(ids, skipna=True) in ("string", "empty", *_NUMBER_KINDS):
            ranking = helper.submit(id_ranks, ids.astype(str))  # other values are refused by _normalise_rows
        return _normalise_rows(raw, fields, source, where, require_tasks, ranking)


def _normalise_rows(raw, fields, source, where, require_tasks, ranking):
    cols = set(raw.columns)
    # The line (JSONL) or row number of the i-th row, for errors.
    numbers = raw["__line__"].to_numpy() if "__line__" in cols else None

    def lines(i):
        return int(numbers[i]) if numbers is not None else int(i) + 1

    loc = "line" if where == "line" else "row"

    def err(message, i, fld):
        return DataError(message, file=source, field=fld, **{loc: lines(i)})

    shape = _detect_shape(cols, fields)
    out = pd.DataFrame(index=raw.index)
    response = None
    if shape == "alpaca":
        prompt = _render_template(raw, "{instruction}\n\n{input}" if "input" in cols else "{instruction}", err,
                                  source)
        response = raw["output"]
        _check_types(response, "output", err, what="response", numbers=True)
        log.info("%s: recognised the Alpaca shape (instruction/input/output)", source)
    elif shape == "chat":
        key = "messages" if "messages" in cols else "conversations"
        prompt, response = _first_turns(raw[key], key, err)
        log.info("%s: recognised the chat shape (%s)", source, key)
    elif fields.prompt_template:
        prompt = _render_template(raw, fields.prompt_template, err, source)
    else:
        if fields.prompt_field not in cols:
            raise DataError(f"no prompt field {fields.prompt_field!r}; the source has "
                            f"{_source_fields(cols)} "
                            f"(map it with --prompt-field or --prompt-template)", file=source)
        prompt = raw[fields.prompt_field]
    prompt_name = fields.prompt_field if shape == "mapped" and not fields.prompt_template else "prompt"
    if shape == "chat":
        prompt_name = key  # the first user turn's content
    out["prompt"] = _check_text(prompt, prompt_name, err, what="prompt", numbers=False)

    codes = None
    if fields.task_field in cols:
        # Stripped: " t " and "t" are one task (a label's blanks are an export accident).
        out["task"], codes = _task_labels(raw[fields.task_field], fields.task_field, err, required=require_tasks)
    elif require_tasks:
        raise DataError(f"no task field {fields.task_field!r}; map it with --task-field, "
                        f"or use --tasks auto to cluster prompts into tasks", file=source)

    defaults = FieldMap()
    for name, given, default in (("--id-field", fields.id_field, defaults.id_field),
                                 ("--response-field", fields.response_field, defaults.response_field)):
        if given != default and given not in cols:  # asked for by name: not silently generated or dropped
            raise DataError(f"no field {given!r} ({name}); the source has "
                            f"{_source_fields(cols)}", file=source)
    if response is None and fields.response_field in cols:
        response = raw[fields.response_field]
        # A list (several references) or a bool would become text by accident.
        _check_types(response, fields.response_field, err, what="response", numbers=True)
    if response is not None and response.dtype != object and pd.api.types.is_string_dtype(response.dtype) \
            and not response.isna().any():
        out["response"] = response  # already text, none missing: no per-row copy of millions of strings
    elif response is not None:
        values = response.to_numpy(dtype=object).copy()
        missing = pd.isna(values)
        values[missing] = None
        values[~missing] = [str(v) for v in values[~missing]]
        out["response"] = pd.Series(values, index=out.index, dtype=object)
    if "response" in out.columns:
        blank = _blank(out["response"].fillna("")) & out["response"].notna().to_numpy()
        if blank.any():  # an empty cell (CSV) or "" is no reference response
            out["response"] = out["response"].astype(object).where(~blank, None)
    for extra in ("choices", "targets"):
        if extra in cols:
            out[extra] = raw[extra]

    if fields.id_field in cols:
        ids = raw[fields.id_field]
        _check_types(ids, fields.id_field, err, what="id", numbers=True)  # a list or bytes is no id
        missing = ids.isna().to_numpy()
        if not missing.any():  # an empty CSV cell, or "", is no id either
            missing = _blank(ids.astype(str))
        if missing.any():
            raise err("missing id", int(np.argmax(missing)), fields.id_field)
        out["id"] = ids.astype(str)
        if codes is None and "task" in out.columns:
            codes = task_codes(out["task"])  # while the ids are ranked
        # Started by _normalise for every column of text or numbers without a missing id.
        ranks = ranking.result() if ranking is not None else id_ranks(out["id"])
        _check_unique(out["id"], ranks, lambda message, i: err(message, i, fields.id_field), loc, lines)
    else:
        out["id"], ranks = _generate_ids(out.get("task"), out["prompt"], source), None
    order = ["id", "prompt"] + [c for c in ("task",) + OPTIONAL_COLUMNS if c in out.columns]
    return out[order].reset_index(drop=True), ranks, codes


def _check_unique(ids: pd.Series, ranks: np.ndarray, err, loc: str, lines) -> None:
    """Refuse repeated ids: repeats share their rank (id_ranks)."""
    if len(ranks) < 2 or ranks.max() == len(ranks) - 1:
        return
    dup = ids.duplicated(keep=False).to_numpy()  # the error path: name the first repeat in row order
    first = ids.iloc[int(np.argmax(dup))]
    rows = np.flatnonzero((ids == first).to_numpy())
    raise err(f"duplicate id {first!r} (also at {loc} {lines(rows[1])}; "
              f"{int(ids.duplicated().sum())} duplicate id(s) in all)", int(rows[0]))


def _check_text(values: pd.Series, name: str, err, *, what: str, required: bool = True, numbers: bool,
                strip: bool = False) -> pd.Series:
    """Strings (leading/trailing blanks kept unless `strip`); null or blank values are errors,
    and so are values of another type (a list, a bool, an object), except numbers where
    `numbers` allows them (they become their text)."""
    _check_types(values, name, err, what=what, numbers=numbers)
    if values.dtype != object and not pd.api.types.is_string_dtype(values):
        values = values.astype(object)
    text = (values.where(values.notna(), "") if values.isna().any() else values).astype(str)
    if strip:
        text = text.str.strip()
    bad = _blank(text)  # null (now ""), empty or blank
    if bad.any() and required:
        i = int(np.argmax(bad))
        raise err(f"missing or empty {what} ({int(bad.sum())} such row(s) in all)", i, name)
    return text.where(~bad, None) if bad.any() else text


def _task_labels(values: pd.Series, name: str, err, *, required: bool) -> tuple[pd.Series, tuple | None]:
    """The task labels as _check_text(strip=True) makes them, and their task_codes().

    The usual column (Arrow text, none missing) is hash-encoded first, and the strip and
    blank checks then look at each distinct label once instead of every row: 100K labels
    instead of 10M rows. A label that is blank or that the strip would change sends the
    column the way of every other (codes None: computed later from the stripped labels)."""
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow" and not values.isna().any():
        names, indices = _dictionary(arrow_text(values))
        labels = pd.Series(names.to_pylist(), dtype=values.dtype)
        if not _blank(labels).any() and (labels.str.strip().str.len() == labels.str.len()).all():
            return values, _sorted_codes(names, indices)
    return _check_text(values, name, err, what="task label", required=required, numbers=True, strip=True), None


def _blank(text: pd.Series) -> np.ndarray:
    """Which texts are empty or only whitespace: Arrow kernels that stop at the first
    non-blank character (15x faster on 10M prompts than stripping every text)."""
    import pyarrow.compute as pc

    arr = arrow_text(text)
    return pc.or_(pc.equal(pc.binary_length(arr), 0), pc.utf8_is_space(arr)).to_numpy(zero_copy_only=False)


_NUMBER_KINDS = ("integer", "floating", "mixed-integer-float", "decimal")


def _check_types(values: pd.Series, name: str, err, *, what: str, numbers: bool) -> None:
    """Refuse values that would only become text by accident: lists, bools, objects."""
    kind = pd.api.types.infer_dtype(values, skipna=True)  # one pass in C for the usual all-text column
    if kind in ("string", "empty") or (numbers and kind in _NUMBER_KINDS):
        return
    for i, v in enumerate(values):
        if v is None or isinstance(v, str) or (isinstance(v, float) and v != v):
            continue
        if numbers and isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            continue
        accepted = "text or a number" if numbers else "text"
        raise err(f"{what} is {_kind(v)}; accepted: {accepted}", i, name)


def _kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"the boolean {str(bool(value)).lower()}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"the number {value}"
    return f"a {type(value).__name__}"


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def template_escapes(template: str) -> str:
    """A template's \\n, \\t and \\\\ as newline, tab and backslash; other backslashes stay.

    A shell passes '{a}\\n\\n{b}' with a literal backslash-n: read like this, the
    command line gives what the README shows, and a YAML template (whose double-quoted
    strings have already turned \\n into a newline) reads the same."""
    return re.sub(r"\\[nt\\]", lambda m: _ESCAPES[m.group()], template)


def _render_template(raw: pd.DataFrame, template: str, err, source: str | None = None) -> pd.Series:
    # Split the template into literal separators and fields, and drop a field together
    # with the separator before it when the field is empty (Dolly's empty context).
    template = template_escapes(template)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"--prompt-template {template!r} is not a valid template ({e})") from None
    names = [f for _, f, _, _ in parts if f is not None]
    if "" in names:
        raise DataError(f"--prompt-template {template!r}: every {{}} must name a field, e.g. {{instruction}}")
    missing = [n for n in names if n not in raw.columns]
    if missing:
        raise DataError(f"prompt template uses field(s) {missing} that the source lacks "
                        f"(it has {_source_fields(raw.columns)})", file=source)
    for n in names:
        _check_types(raw[n], n, err, what=f"template field {n!r}", numbers=True)
    columns = {n: raw[n].where(raw[n].notna(), "").astype(str) for n in names}
    result = []
    for i in range(len(raw)):
        pieces = []
        for literal, fname, spec, conv in parts:
            if fname is None:
                pieces.append(literal)
                continue
            value = columns[fname].iat[i]
            if value.strip():
                try:
                    pieces.append(literal + format(value, spec or ""))
                except (ValueError, TypeError) as e:
                    raise err(f"--prompt-template cannot format this field with {{{fname}:{spec}}} ({e})",
                              i, fname) from None
        result.append("".join(pieces).strip())
    return pd.Series(result, index=raw.index, dtype=object)


def _first_turns(conversations: pd.Series, key: str, err) -> tuple[pd.Series, pd.Series]:
    user_roles, assistant_roles = {"user", "human"}, {"assistant", "gpt", "bot", "model"}
    prompts, responses = [], []
    for i, conv in enumerate(conversations):
        prompt = response = None
        if not isinstance(conv, (list, tuple, np.ndarray)):  # missing (NaN/None), text, number, object
            raise err(f"expected a list of turns, got {_describe(conv)}", i, key)
        for turn in conv:
            if not isinstance(turn, dict):
                raise err("a turn is not an object", i, key)
            # Not .get(a, .get(b)): in a file mixing the OpenAI and ShareGPT shapes, Arrow gives
            # every turn both keys, the absent one as null.
            role = turn.get("role") if turn.get("role") is not None else turn.get("from")
            content = turn.get("content") if turn.get("content") is not None else turn.get("value")
            content = _turn_text(content, i, key, err)
            if prompt is None and role in user_roles:
                prompt = content
            elif prompt is not None and role in assistant_roles:
                response = content
                break
        prompts.append(prompt)
        responses.append(response)
    return (pd.Series(prompts, index=conversations.index, dtype=object),
            pd.Series(responses, index=conversations.index, dtype=object))


def _turn_text(content, i: int, key: str, err):
    """A turn's text: a string, or the text parts of OpenAI's list of content parts
    ([{"type": "text", "text": ...}]); anything else is an error naming the row."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, (list, tuple, np.ndarray)) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    raise err(f"a turn's content is {_kind(content)}; accepted: text, or a list of text parts", i, key)


def _describe(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "nothing (the field is missing or null)"
    return type(value).__name__


def _generate_ids(tasks: pd.Series | None, prompts: pd.Series, source: str) -> list[str]:
    task_values = tasks.fillna("").tolist() if tasks is not None else [""] * len(prompts)
    ids, seen = [], {}
    for t, p in zip(task_values, prompts.tolist()):
        base = stable_id(t, p)
        n = seen.get(base, 0)
        seen[base] = n + 1
        # A repeated (task, prompt) pair keeps a stable, unique id: its occurrence number.
        ids.append(base if n == 0 else f"{base}-{n}")
    repeats = sum(n - 1 for n in seen.values())
    if repeats:
        log.warning("%s: %d prompt(s) repeat an earlier prompt of the same task; "
                    "they get ids with an occurrence suffix", source, repeats)
    return ids


# ----------------------------------------------------------------------------- helpers


def read_ids(path) -> list[str]:
    """Ids from a file: JSONL/CSV/Parquet with an `id` column, or one id per line."""
    path = Path(path)
    if not path.exists():
        raise TaskdivError(f"{path}: no such file")
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        raw, where = read_raw(path)
        if "id" not in raw.columns:
            raise DataError("no 'id' column", file=path)
        lines = raw["__line__"].to_numpy() if "__line__" in raw.columns else np.arange(1, len(raw) + 1)
        return id_texts(raw["id"], lambda message, i, field: DataError(
            message, file=path, field=field, **{"line" if where == "line" else "row": int(lines[i])})).tolist()
    check_utf8(path)
    return [s.strip() for s in path.read_text(encoding="utf-8-sig").splitlines() if s.strip()]


def id_texts(ids: pd.Series, err) -> pd.Series:
    """A column of ids (of an --exclude or scores file) as text; a missing or blank id, or one that is
    no text or number (a list, bytes, a boolean), is the error `err(message, row position, field)`."""
    _check_types(ids, "id", err, what="id", numbers=True)
    missing = ids.isna().to_numpy()
    if not missing.any():
        missing = _blank(ids.astype(str))
    if missing.any():
        raise err("missing id", int(np.argmax(missing)), "id")
    return ids.astype(str)


def read_scores(path, pool: Pool, scores: "ScoreFile | None" = None) -> np.ndarray:
    """Per-prompt confidence in [0, 1] (higher = more confident), aligned with the
    pool's rows; NaN where a prompt has no score.

    The file is CSV or Parquet with columns `id` and `confidence`. Ids not in the
    pool, duplicates and values outside [0, 1] are errors. `scores`: the file as
    read_score_file read it already (`taskdiv select` reads it while it loads the pool).
    """
    return align_scores(scores if scores is not None else read_score_file(path), pool)


@dataclass
class ScoreFile:
    path: Path
    ids: pd.Series
    confidence: np.ndarray


def read_score_file(path) -> ScoreFile:
    """The ids and confidences of a scores file, each confidence checked to lie in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        path = path / "scores.csv"
    if not path.exists():
        raise TaskdivError(f"{path}: no such scores file")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        check_input(path)
        # Only the two columns used: a scores.parquet from `taskdiv score` also holds the generated text.
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(f"not a readable Parquet file ({_first_line(e)})", file=path) from None
        raw = read_parquet(path, columns=[c for c in ("id", "confidence") if c in names] or None).to_pandas()
    elif path.suffix == ".csv":
        raw = read_csv(path, dtype={"id": str}, neutralised=True)
    else:
        raise TaskdivError(f"{path}: scores must be .csv or .parquet")
    for col in ("id", "confidence"):
        if col not in raw.columns:
            raise DataError(f"no {col!r} column (columns: {list(raw.columns)})", file=path)
    return score_table(raw, path)


def score_table(raw: pd.DataFrame, path) -> ScoreFile:
    """The ids and confidences of a table of scores (a file's, or a DataFrame handed to the
    Python API), each confidence checked to lie in [0, 1]; `path` names it in errors."""
    for col in ("id", "confidence"):
        if col not in raw.columns:
            raise DataError(f"no {col!r} column (columns: {list(raw.columns)})", file=path)

    def err(message, i, field):
        return DataError(message, file=path, row=i + 1, field=field)

    _check_types(raw["confidence"], "confidence", err, what="confidence", numbers=True)  # a list, bytes, a boolean
    ids = id_texts(raw["id"], err).reset_index(drop=True)
    conf = pd.to_numeric(raw["confidence"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(conf) | (conf < 0) | (conf > 1)
    if bad.any():
        i = int(np.argmax(bad))
        value = raw["confidence"].iloc[i]
        value = value.item() if isinstance(value, np.generic) else value  # nan, not np.float64(nan)
        raise DataError(f"confidence {value!r} is not a number in [0, 1] "
                        f"({int(bad.sum())} such row(s))", file=path, row=i + 1, field="confidence")
    return ScoreFile(Path(str(path)), ids, conf)


def align_scores(scores: ScoreFile, pool: Pool) -> np.ndarray:
    """read_scores() of a file read already: the confidences in pool row order."""
    path, ids, conf = scores.path, scores.ids, scores.confidence
    pos, same = pool._positions(ids)
    if same:  # the pool's ids in its order (a score of the whole pool): already aligned, no repeats
        return conf.copy()  # writable, whatever the reader handed back
    # Duplicates from the positions (an integer count) rather than a second hash of every id;
    # the same unknown id twice is reported as unknown below.
    if np.bincount(pos[pos >= 0], minlength=1).max(initial=0) > 1:
        i = int(np.argmax(ids.duplicated().to_numpy()))
        raise DataError(f"duplicate id {ids.iloc[i]!r}", file=path, row=i + 1, field="id")
    unknown = pos < 0
    if unknown.any():
        examples = ", ".join(repr(x) for x in ids[unknown].head(3))
        raise DataError(f"{int(unknown.sum())} of {len(ids)} scored id(s) are not in the pool "
                        f"{pool.source} (e.g. {examples}); were the scores made for another pool?",
                        file=path, field="id")
    aligned = np.full(len(pool), np.nan)
    aligned[pos] = conf
    return aligned


def main(argv=None) -> None:  # pragma: no cover - convenience entry point
    import sys

    pool = load_pool((argv or sys.argv[1:])[0])
    print(pool.task_sizes().to_string())


if __name__ == "__main__":  # pragma: no cover
    main()
