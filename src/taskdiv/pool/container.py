"""The pool as a table: `Pool`, one row per prompt, and the Arrow helpers that keep its
lookups fast on millions of rows (task codes, id ranks, gathers by position).

Columns:

    id        str   unique; generated (stable hash of task and prompt) when absent
    prompt    str   non-empty
    task      str   the task label (may be absent only for `--tasks auto`)
    response  str   optional reference response (stands in for the annotator)
    choices   list  optional answer options (multiple-choice evaluation)
    targets   list  optional accepted answers (evaluation)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..common.errors import TaskdivError


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


def arrow_to_pandas(table) -> pd.DataFrame:
    """An Arrow table as pandas, with whole numbers kept whole: an integer column with a
    null would otherwise become floats, and 42 the text "42.0"."""
    return table.to_pandas(integer_object_nulls=True)
