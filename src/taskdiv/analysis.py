"""The statistics behind `taskdiv report`: paired tests, the annotation saving, coverage.

Pure numpy/scipy on the experiment's tables (no torch):
    paired_tests(diffs)              mean, 95% t-interval, exact sign and permutation p-values
    random_budget_to_match(...)      the random budget whose accuracy a strategy's matches,
                                     with a seed-bootstrap interval (the paper's headline:
                                     "the same accuracy with X% fewer annotations")
    coverage(allocations)            tasks left with no / fewer than 5 training examples
    accuracy_by_kind(...)            macro accuracy over the tasks of each kind
    task_kinds(test_pool)            yes/no (two choices), multiple choice, generative
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

KINDS = ("yes/no", "multiple choice", "generative")
# Exact sign-flip permutation test up to this many pairs (2^16 assignments); Monte Carlo above.
EXACT_PERMUTATION_MAX = 16


def sign_test(diffs) -> float:
    """Exact two-sided sign test of a zero median difference (ties dropped); NaN without pairs."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    if len(d) == 0:
        return float("nan")
    return float(stats.binomtest(int((d > 0).sum()), len(d), 0.5).pvalue)


def permutation_test(diffs, *, n_resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided paired permutation test: the share of sign flips of the differences whose
    mean is at least as far from zero as the observed one (exact for up to 16 pairs)."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan")
    observed = abs(d.mean())
    if len(d) <= EXACT_PERMUTATION_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_resamples, len(d)))
    means = np.abs((signs * d).mean(axis=1))
    # A small tolerance: flips that give the same mean up to rounding count as "as extreme".
    return float((means >= observed - 1e-12).mean())


def random_budget_to_match(target_acc, random_acc: dict[int, np.ndarray]) -> float:
    """The random budget at which random selection's mean accuracy reaches `target_acc`:
    the first measured budget whose mean reaches it, interpolated linearly in log budget
    from the budget before. -inf if the smallest measured budget already matches (random
    matches it there or below: nothing was measured below), inf if no measured budget does."""
    budgets = sorted(random_acc)
    means = [float(np.nanmean(random_acc[b])) for b in budgets]
    for i, (b, m) in enumerate(zip(budgets, means)):
        if m >= target_acc:
            if i == 0:
                return float("-inf")
            b0, m0 = budgets[i - 1], means[i - 1]
            frac = (target_acc - m0) / (m - m0)
            return float(math.exp(math.log(b0) + frac * (math.log(b) - math.log(b0))))
    return float("inf")


def saving_vs_random(strategy_acc, budget: int, random_acc: dict[int, np.ndarray], *,
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """The random budget matching a strategy's mean accuracy at `budget`, and the saving
    1 - budget / that, with 95% intervals from resampling the seeds of every cell.

    The matching budget and its bounds are -inf where random matches at or below its
    smallest measured budget and inf where it matches at none; the saving is then NaN,
    except that an unmatched upper end bounds it by 100%."""
    strategy_acc = np.asarray(strategy_acc, dtype=float)
    strategy_acc = strategy_acc[~np.isnan(strategy_acc)]
    random_acc = {b: np.asarray(v, dtype=float)[~np.isnan(np.asarray(v, dtype=float))]
                  for b, v in random_acc.items()}
    random_acc = {b: v for b, v in random_acc.items() if len(v)}
    if not len(strategy_acc) or not random_acc:
        return {"match": float("nan"), "low": float("nan"), "high": float("nan"),
                "saving": float("nan"), "saving_low": float("nan"), "saving_high": float("nan")}
    point = random_budget_to_match(strategy_acc.mean(), random_acc)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        target = rng.choice(strategy_acc, len(strategy_acc)).mean()
        boots[i] = random_budget_to_match(target, {b: rng.choice(v, len(v)) for b, v in random_acc.items()})
    # Order statistics, not interpolation: the draws may be +-inf (matched below or above
    # the measured budgets).
    low, high = np.quantile(boots, 0.025, method="lower"), np.quantile(boots, 0.975, method="higher")

    def saving(match):
        return 1 - budget / match if np.isfinite(match) else float("nan")

    # The saving grows with the matching budget; an unmatched end (inf) bounds it by 100%.
    return {"match": point, "low": float(low), "high": float(high), "saving": saving(point),
            "saving_low": saving(low), "saving_high": 1.0 if not np.isfinite(high) else saving(high)}


def coverage(allocations: pd.DataFrame, few: int = 5) -> pd.DataFrame:
    """Per strategy and budget, the mean over seeds of the number of tasks given no training
    example and fewer than `few` (of the tasks the pool has)."""
    per_run = allocations.groupby(["strategy", "budget_n", "seed", "run"]).agg(
        tasks=("task", "size"), zero=("allocated", lambda a: int((a == 0).sum())),
        under=("allocated", lambda a: int((a < few).sum())))
    out = per_run.groupby(["strategy", "budget_n"]).agg(tasks=("tasks", "max"), zero=("zero", "mean"),
                                                         under=("under", "mean"), runs=("zero", "size"))
    return out.reset_index()


def task_kinds(test_frame: pd.DataFrame) -> pd.DataFrame:
    """task -> kind from a test pool's rows: two choices are yes/no, more are multiple
    choice, none is generative (a task mixing them takes its most common kind)."""
    if "choices" in test_frame.columns:
        counts = test_frame["choices"].map(lambda c: len(c) if isinstance(c, (list, tuple, np.ndarray)) else 0)
    else:
        counts = pd.Series(0, index=test_frame.index)
    kind = np.where(counts == 0, "generative", np.where(counts == 2, "yes/no", "multiple choice"))
    table = pd.DataFrame({"task": test_frame["task"].to_numpy(), "kind": kind})
    return table.groupby("task")["kind"].agg(lambda k: k.mode().iloc[0]).reset_index()


def accuracy_by_kind(per_task: pd.DataFrame, results: pd.DataFrame, kinds: pd.DataFrame) -> pd.DataFrame:
    """strategy x budget x kind: the macro accuracy over the tasks of the kind, mean over seeds."""
    merged = per_task.merge(kinds, on="task").merge(results[["run", "strategy", "budget_n", "seed"]], on="run")
    per_run = merged.groupby(["strategy", "budget_n", "run", "kind"])["accuracy"].mean().reset_index()
    table = per_run.groupby(["strategy", "budget_n", "kind"])["accuracy"].mean().unstack("kind")
    n_tasks = kinds["kind"].value_counts()
    table = table[[k for k in KINDS if k in table.columns]]
    table.columns = [f"{k} ({int(n_tasks.get(k, 0))})" for k in table.columns]
    return table.reset_index()
