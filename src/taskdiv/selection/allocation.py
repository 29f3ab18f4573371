"""Spreading an annotation budget across tasks (pure numpy; no torch).

Every allocation here is a capped weighted water-filling:

    b_t = clip(lam * w_t, lo_t, hi_t),   lam chosen so that sum_t b_t = B

with hi_t = min(n_t, ceiling_t) and lo_t = min(max(floor_t, taken_t), hi_t). The three
weightings of METHOD.md are:

    uniform        w_t = 1          TaskDiversity: b_t = min(n_t, lam), a water level
    inverse        w_t = 1 / C_t    WeightedTaskDiversity: less confident tasks get more
    proportional   w_t = n_t        stratified sampling

The continuous solution is rounded to integers that sum exactly to B by the largest
remainder method; equal remainders are ordered by a seeded random permutation.
"""
from __future__ import annotations

import math

import numpy as np

from ..common.errors import TaskdivError

# A task confidence below this is treated as this, so weights stay finite.
MIN_CONFIDENCE = 1e-3


def parse_budget(text: str | int, pool_size: int) -> int:
    """'500' -> 500; '20%' -> 20% of the pool, rounded to the nearest prompt."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise TaskdivError(f"budget {raw!r} is neither a count (500) nor a percentage (20%)") from None
    if not math.isfinite(value):
        raise TaskdivError(f"budget {raw} is not a finite number")
    if percent:
        if not value > 0:
            raise TaskdivError(f"budget {raw} must be above 0%")
        if value > 100:  # as a count above the pool's size is refused
            raise TaskdivError(f"budget {raw} is more than the whole pool; at most 100%")
        return max(1, int(round(value / 100 * pool_size)))
    if value != int(value):
        raise TaskdivError(f"budget {raw} must be a whole number of prompts (or a percentage)")
    return int(value)


def check_task_limits(floor: int = 0, ceiling: int | None = None) -> None:
    """The per-task floor and ceiling (--min-per-task, --max-per-task) make sense together."""
    if floor < 0:
        raise TaskdivError(f"--min-per-task must be 0 or more, got {floor}")
    if ceiling is not None:
        if ceiling < 1:
            raise TaskdivError(f"--max-per-task must be at least 1, got {ceiling}")
        if ceiling < floor:
            raise TaskdivError(f"--max-per-task {ceiling} is below --min-per-task {floor}; "
                               f"no task can hold both")


def water_level(budget: float, weights, lo, hi) -> float:
    """The lam with sum(clip(lam * w, lo, hi)) == budget (exact, piecewise linear)."""
    w, lo, hi = (np.asarray(a, dtype=float) for a in (weights, lo, hi))
    if not lo.sum() <= budget <= hi.sum():
        raise ValueError(f"budget {budget} outside [{lo.sum()}, {hi.sum()}]")

    def total(lam):
        return np.clip(lam * w, lo, hi).sum()

    breaks = np.unique(np.concatenate([lo / w, hi / w]))
    # Largest breakpoint whose total does not exceed the budget (bisection: O(T log T)).
    left, right = 0, len(breaks) - 1
    # total(breaks[0]) is lo.sum() <= budget, except that (lo / w) * w can exceed lo by
    # an ulp (one task, w=0.021, lo=budget=24): then the answer is breaks[0].
    if total(breaks[0]) > budget:
        return float(breaks[0])
    while left < right:
        mid = (left + right + 1) // 2
        if total(breaks[mid]) <= budget:
            left = mid
        else:
            right = mid - 1
    a = breaks[left]
    if left + 1 == len(breaks) or total(a) == budget:
        return float(a)
    b = breaks[left + 1]
    # Between two breakpoints each task is fixed at lo, fixed at hi, or free (lam * w).
    at_hi = hi / w <= a
    at_lo = lo / w >= b
    free = ~(at_hi | at_lo)
    fixed = hi[at_hi].sum() + lo[at_lo].sum()
    return float((budget - fixed) / w[free].sum())


def allocate(sizes, budget: int, *, weights=None, floor: int = 0, ceilings=None, taken=None,
             seed: int = 0) -> np.ndarray:
    """Integer prompts per task, summing exactly to `budget` plus what is already taken.

    sizes     n_t, prompts per task (including already-annotated ones)
    weights   w_t > 0; None means uniform (TaskDiversity)
    floor     at least this many per task (capped by the task's size)
    ceilings  at most this many per task (scalar or per task; None for no cap)
    taken     prompts per task already annotated in earlier rounds; they count towards
              the allocation, and the result includes them (subtract to get new picks)
    """
    if ceilings is None or np.ndim(ceilings) == 0:
        check_task_limits(int(floor), None if ceilings is None else int(ceilings))
    n = np.asarray(sizes, dtype=np.int64)
    t = len(n)
    w = np.ones(t) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (t,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise TaskdivError("task weights must be finite and positive, one per task")
    taken = np.zeros(t, dtype=np.int64) if taken is None else np.asarray(taken, dtype=np.int64)
    hi = n.copy()
    if ceilings is not None:
        hi = np.minimum(hi, np.broadcast_to(np.asarray(ceilings, dtype=np.int64), (t,)))
    hi = np.maximum(hi, taken)  # what was annotated stays annotated
    lo = np.minimum(np.maximum(int(floor), taken), hi)
    total = int(budget) + int(taken.sum())
    if budget <= 0:
        raise TaskdivError(f"budget must be positive, got {budget}")
    if total > hi.sum():
        raise TaskdivError(f"budget {budget} exceeds the {int(hi.sum() - taken.sum())} prompts that can still "
                           f"be chosen (after ceilings and exclusions)")
    if lo.sum() > total:
        raise TaskdivError(f"the per-task floor of {floor} needs {int(lo.sum() - taken.sum())} prompts, "
                           f"more than the budget of {budget}")
    lam = water_level(total, w, lo, hi)
    x = np.round(np.clip(lam * w, lo, hi), 9)
    base = np.clip(np.floor(x).astype(np.int64), lo, hi)
    remaining = total - int(base.sum())
    if remaining:
        rng = np.random.default_rng(seed)
        tiebreak = rng.permutation(t)
        remainder = np.where(base < hi, x - base, -1.0)
        order = np.lexsort((tiebreak, -remainder))
        base[order[:remaining]] += 1
    assert base.sum() == total and np.all(base <= hi) and np.all(base >= lo), "allocation invariant"
    return base


def round_robin(sizes, budget: int, seed: int = 0) -> np.ndarray:
    """Reference TaskDiversity (Algorithm 1): one prompt per task in turn, skipping full tasks.

    The order of tasks within a round is a seeded permutation. O(B); for tests.
    """
    n = np.asarray(sizes, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(n))
    b = np.zeros(len(n), dtype=np.int64)
    left = int(budget)
    while left:
        progressed = False
        for t in order:
            if left and b[t] < n[t]:
                b[t] += 1
                left -= 1
                progressed = True
        if not progressed:
            raise ValueError("budget exceeds the pool")
    return b
