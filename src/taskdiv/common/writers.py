"""Serialisers: JSON, JSON lines, YAML, CSV and Parquet, each written atomically (`write_*`) or
straight into a temporary that `atomic_path`/`output_set` handed out (`dump_*`); numpy values and
NaN become plain JSON values.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from .atomic import atomic_path
from .formulas import neutralise


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
    Arrow string kernels, which matters for selections from pools of millions. False, and
    nothing written, for any other column type or a text with rare control characters: the
    caller writes those record by record."""
    # Why by hand: measured 2026-12-06 (500K rows of a selection: id, task, a 250-character
    # prompt, strategy, seed, rank, confidence; 186 MB; 2 cores shared with other jobs, best of
    # 3): these kernels 1.6 s, pandas' DataFrame.to_json(lines=True) 4.7 s, json.dumps per
    # record 25 s. pyarrow has no JSON writer.
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
