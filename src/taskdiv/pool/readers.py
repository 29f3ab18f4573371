"""A pool's source as a raw table: a file (.jsonl, .json, .csv, .parquet), a `datasets`
save_to_disk directory or a hub dataset; and the ids of an --exclude file (`read_ids`), and the
pool rows it names (`excluded`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import DataError, TaskdivError
from ..common.inputs import check_input, check_utf8, read_csv, read_json_document
from .checks import id_texts
from .container import Pool, arrow_to_pandas
from .jsonl import _from_records, _read_jsonl

log = logging.getLogger(__name__)

# What --exclude reads and how, in the --help of each command that takes it (score, select).
EXCLUDE_HELP = ("A file of ids (one a line, or JSONL/CSV/Parquet with an `id` column: a selection.jsonl, an "
                "annotation store); ids not in the pool are ignored with a warning; a file naming none of the "
                "pool's prompts, or all of them, is an error.")


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


def excluded(pool: Pool, source) -> np.ndarray:
    """Which rows of `pool` are excluded (a mask): `source` is an --exclude file or, from Python,
    the ids themselves (a list). The one reading of --exclude, for `score` and `select`
    (EXCLUDE_HELP). Ids not in the pool are ignored with a warning naming them; a source naming
    none of the pool's prompts (another pool's file?) or all of them (nothing left to do) is an error."""
    is_file = isinstance(source, (str, os.PathLike))
    ids = read_ids(source) if is_file else [str(i) for i in source]
    name = exclude_name(source)
    label = str(source) if is_file else name
    ids = list(dict.fromkeys(ids))
    pos = pool.positions(ids) if ids else np.zeros(0, dtype=np.int64)
    unknown = [i for i, p in zip(ids, pos) if p < 0]
    named = f"{', '.join(map(repr, unknown[:5]))}{', ...' if len(unknown) > 5 else ''}"
    if ids and len(unknown) == len(ids):
        raise TaskdivError(f"{name}: none of its {len(ids)} id(s) is in the pool (e.g. {named}); "
                           f"is it a file of another pool?")
    if unknown:
        log.warning("%s: %d of %d excluded id(s) not in the pool, ignored: %s", label, len(unknown), len(ids), named)
    mask = np.zeros(len(pool), dtype=bool)
    mask[pos[pos >= 0]] = True
    if mask.all():
        raise TaskdivError(f"{name} names every prompt of the pool ({len(pool)}): none is left")
    return mask


def exclude_name(source) -> str:
    """How messages and records name an exclusion: `--exclude FILE`, or the Python API's list."""
    if isinstance(source, (str, os.PathLike)):
        return f"--exclude {source}"
    return f"exclude (a list of {len(source)} id(s))"


def split_exclude(exclude) -> tuple[str | None, list | None]:
    """The Python API's `exclude=`: (a file's path, None) or (None, the ids of a list)."""
    if exclude is None:
        return None, None
    if isinstance(exclude, (str, os.PathLike)):
        return str(exclude), None
    return None, list(exclude)


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
