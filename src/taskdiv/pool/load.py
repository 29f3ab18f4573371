"""The pool: unlabeled prompts with task labels, loaded from any common source.

Sources (`load_pool(spec)`):
    path.jsonl | path.json | path.csv | path.parquet   a file
    DIR                                                 a `datasets` save_to_disk dir
    hf:NAME?config=C&split=S&sample=N&seed=0            a Hugging Face hub dataset
    bench:PRESET_OR_TASKS?split=pool|test&...           local benchmark collections (pool/benchmarks.py)
    mmlu:SUBJECTS  bbh:TASKS  gauntlet:TASKS            one collection (the same options)
    bigbench:PRESET_OR_TASKS?split=pool|test&...        BIG-bench, from its sdist (pool/bigbench.py)

The columns are those of `taskdiv.pool.container`.

    python -m taskdiv.pool.load POOL      # prints the per-task counts
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import pandas as pd

from ..common.errors import DataError
from .container import Pool
from .fields import FieldMap
from .normalise import _normalise
from .readers import _read_hub, read_raw

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


def main(argv=None) -> None:  # pragma: no cover - convenience entry point
    import sys

    pool = load_pool((argv or sys.argv[1:])[0])
    print(pool.task_sizes().to_string())


if __name__ == "__main__":  # pragma: no cover
    main()
