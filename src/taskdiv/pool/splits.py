"""The one split rule of every built-in pool source: a held-out test part and a pool part per task.

Each task's items are ordered by a seeded hash of their *split key*: what the model sees and
the answer it is taught (the formatted prompt and the response, joined by \\x1f). The first
`test` of them are the test part, never more than half the task; identical items share a
hash and always land on the same side. An item held out by one task is dropped from the pool
part of every other task loaded with it (collections hold copies of items). Then `pool_frac`
shrinks each task's pool part (keeping the natural skew of task sizes) and `max_pool` caps it.

The rule depends only on the items and the options, never on the order of the files or of
the other tasks loaded with them: `bigbench:`, `mmlu:`, `bbh:`, `gauntlet:` and `bench:` share
it, and so does `taskdiv pool split` on a user's own pool.

Options (`SOURCE:NAMES?key=value&...`):
    split     pool (default) | test | all
    test      test part per task: a fraction (<1) or a whole count (default 0.2; at most half)
    pool_frac keep this fraction (0, 1] of each task's pool part (default 1), before max_pool
    max_pool  cap (>= 1) on the pool part per task (default: none)
    seed      seed of the split (default 0)
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..common.errors import TaskdivError

SPLITS = ("pool", "test", "all")
OPTIONS = ("split", "test", "max_pool", "pool_frac", "seed")


def hash_int(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "little")


def split_key(prompt: str, response: str) -> str:
    """What the model sees and the answer it is taught: an item that differs only in its wrong
    choices, or sits in two tasks, is still the same item."""
    return f"{prompt}\x1f{response}"


@dataclass(frozen=True)
class SplitOptions:
    split: str = "pool"
    test: float = 0.2
    max_pool: int | None = None
    pool_frac: float = 1.0
    seed: int = 0

    def __post_init__(self):
        """Refuse values that would silently give another split than asked for."""
        if self.split not in SPLITS:
            raise TaskdivError(f"split must be pool, test or all, not {self.split!r}")
        test = self.test
        if not (math.isfinite(test) and test >= 0 and (test < 1 or test == int(test))):
            raise TaskdivError(f"test={test} must be a fraction in [0, 1) or a whole count of examples")
        if self.max_pool is not None and self.max_pool < 1:
            raise TaskdivError(f"max_pool={self.max_pool} must be at least 1 (leave it out for no cap)")
        if not 0 < self.pool_frac <= 1:
            raise TaskdivError(f"pool_frac={self.pool_frac} must be in (0, 1]")
        if not 0 <= self.seed < 2 ** 32:
            raise TaskdivError(f"seed={self.seed} must be a whole number from 0 to 2^32 - 1")

    @classmethod
    def from_spec(cls, where: str, opts: dict[str, str], extra: tuple[str, ...] = ()) -> "SplitOptions":
        """The split options of a spec's query (`extra`: the source's own options, ignored here)."""
        unknown = set(opts) - set(OPTIONS) - set(extra)
        if unknown:
            raise TaskdivError(f"{where}: unknown option(s) {sorted(unknown)} (known: {sorted({*OPTIONS, *extra})})")
        try:
            return cls(split=opts.get("split", "pool"), test=float(opts.get("test", 0.2)),
                       max_pool=int(opts["max_pool"]) if opts.get("max_pool") else None,
                       pool_frac=float(opts.get("pool_frac", 1.0)), seed=int(opts.get("seed", 0)))
        except ValueError as e:
            raise TaskdivError(f"{where}: bad option value ({e})") from e
        except TaskdivError as e:
            raise TaskdivError(f"{where}: {e}") from e


def split_task(frame: pd.DataFrame, *, test: float = 0.2, max_pool: int | None = None,
               pool_frac: float = 1.0, seed: int = 0, exclude: set | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool part, test part) of one task's rows (a `_key` column holds the split keys); see
    the module docstring. `exclude`: keys held out by other tasks, dropped from the pool part."""
    n = len(frame)
    keys = [hash_int(f"split:{seed}:{k}") for k in frame["_key"]]
    order = np.argsort(np.asarray(keys, dtype=np.uint64), kind="stable")
    n_test = int(test) if test >= 1 else int(round(test * n))
    n_test = min(n_test, n // 2)
    # Identical items share a hash, so they sit next to each other: move the cut to a
    # boundary of their run so that no item is on both sides; forward if that keeps the
    # test part at most half the task, else back.
    sorted_keys = np.asarray(keys, dtype=np.uint64)[order]
    if 0 < n_test < n and sorted_keys[n_test] == sorted_keys[n_test - 1]:
        forward, back = n_test, n_test
        while forward < n and sorted_keys[forward] == sorted_keys[forward - 1]:
            forward += 1
        while back > 0 and sorted_keys[back] == sorted_keys[back - 1]:
            back -= 1
        n_test = forward if forward <= n // 2 else back
    return cap_pool(frame.iloc[order[n_test:]], exclude=exclude, max_pool=max_pool, pool_frac=pool_frac), \
        frame.iloc[order[:n_test]]


def cap_pool(pool_part: pd.DataFrame, *, exclude: set | None = None, max_pool: int | None = None,
             pool_frac: float = 1.0) -> pd.DataFrame:
    """A task's pool part (in split order) without the `exclude` keys, then shrunk by
    pool_frac and capped at max_pool."""
    if exclude:  # items of other tasks' test parts: never in a pool
        # A set lookup per key: pandas' isin converts a set of every held-out key per task.
        pool_part = pool_part[[key not in exclude for key in pool_part["_key"]]]
    if pool_frac < 1:
        pool_part = pool_part.iloc[:max(1, int(round(pool_frac * len(pool_part))))]
    if max_pool is not None:
        pool_part = pool_part.iloc[:max_pool]
    return pool_part


def split_tasks(frames: dict[str, pd.DataFrame], options: SplitOptions, *, where: str) -> pd.DataFrame:
    """The rows of `options.split` over all tasks (each frame one task's rows with `_key`),
    without `_key`; `choices` is dropped when no row has any."""
    parts = []
    for pool_part, test_part in _task_parts(frames, options):
        if options.split in ("pool", "all"):
            parts.append(pool_part)
        if options.split in ("test", "all"):
            parts.append(test_part)
    return _joined(parts, options.split, where)


def split_pool_and_test(frames: dict[str, pd.DataFrame], options: SplitOptions, *,
                        where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """split_tasks' pool split and test split of `frames` (options.split aside), from one split."""
    pairs = _task_parts(frames, dataclasses.replace(options, split="all"))
    return (_joined([pool_part for pool_part, _ in pairs], "pool", where),
            _joined([test_part for _, test_part in pairs], "test", where))


def _task_parts(frames: dict[str, pd.DataFrame], o: SplitOptions) -> list[tuple[pd.DataFrame | None, pd.DataFrame]]:
    """(pool part, test part) of each task with rows: the pool part (None for split=test) without
    the items any task holds out, then shrunk and capped."""
    splits = [split_task(frame, test=o.test, seed=o.seed) for frame in frames.values() if len(frame)]
    held_out = {key for _, test_part in splits for key in test_part["_key"]}
    return [(cap_pool(pool_part, exclude=held_out, max_pool=o.max_pool, pool_frac=o.pool_frac)
             if o.split in ("pool", "all") else None, test_part) for pool_part, test_part in splits]


def _joined(parts: list[pd.DataFrame], split: str, where: str) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        raise TaskdivError(f"{where}: no examples in the {split} split")
    out = pd.concat(parts, ignore_index=True).drop(columns="_key")
    if "choices" in out and out["choices"].isna().all():
        out = out.drop(columns="choices")
    return out
