"""`select --scores`: a scores file (CSV or Parquet: `id`, `confidence`) read, checked and
aligned with the pool's rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import DataError, TaskdivError
from ..common.inputs import check_input, read_csv
from ..pool.checks import _check_types, id_texts
from ..pool.container import Pool
from ..pool.readers import _first_line, read_parquet


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
