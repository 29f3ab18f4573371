"""The statistics behind `taskdiv report`: paired tests, the annotation saving, coverage.

Pure numpy/scipy on the experiment's tables (no torch):
    mean_ci(values)                  mean and 95% t-interval (every cell of the report's tables)
    difference_stats(diffs)          mean, 95% t-interval, exact sign and permutation p-values
    random_budget_to_match(...)      the random budget whose accuracy a strategy's matches,
                                     with a seed-bootstrap interval (the paper's headline:
                                     "the same accuracy with X% fewer annotations")
    coverage(allocations)            tasks left with no / fewer than 5 training examples
    task_gains, confidence_gain,     each task's gain over the base model, against its confidence
    rank_correlation                 (Spearman's rho with a bootstrap interval)
    examples_vs_none(...)            within a kind: do tasks that got examples gain more?
    accuracy_by_kind(...)            macro accuracy over the tasks of each kind
    task_kinds(test_pool)            yes/no (two choices), multiple choice, generative
    answer_positions(items)          the option position a run's model favours on multiple choice
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

KINDS = ("yes/no", "multiple choice", "generative")
# Exact sign-flip permutation test up to this many pairs (2^16 assignments); Monte Carlo above.
EXACT_PERMUTATION_MAX = 16


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval (NaN half-width for a single value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, np.nan, np.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def _bracket(budgets: list[int], match: float) -> list[int]:
    """The measured budgets on either side of a matching budget (one at an end)."""
    if not np.isfinite(match):
        return [budgets[0] if match < 0 else budgets[-1]]
    above = next(i for i, b in enumerate(budgets) if b >= match)
    return budgets[max(above - 1, 0):above + 1] if budgets[above] > match else [budgets[above]]


def sign_test(diffs) -> float:
    """Exact two-sided sign test of a zero median difference (ties dropped); NaN without pairs."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    if len(d) == 0:
        return float("nan")
    return float(stats.binomtest(int((d > 0).sum()), len(d), 0.5).pvalue)


def permutation_test(diffs, *, n_resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip) test of a zero mean difference: exact for up
    to 16 pairs (every one of the 2^n sign assignments), Monte Carlo above (`scipy.stats.
    permutation_test`, permutation_type='samples' flips each pair's sign)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan")
    if len(d) == 1:  # both signs give the same |mean|: every assignment is as extreme
        return 1.0
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                    n_resamples=2 ** len(d) if len(d) <= EXACT_PERMUTATION_MAX else n_resamples,
                                    rng=np.random.default_rng(seed))
    return float(result.pvalue)


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


def examples_by_kind(allocations: pd.DataFrame, kinds: pd.DataFrame) -> pd.DataFrame:
    """strategy x budget x kind: the training examples a run gave the tasks of the kind, mean
    over seeds (columns named by kind alone; runs without an allocation are not in it)."""
    merged = allocations.merge(kinds, on="task")
    per_run = merged.groupby(["strategy", "budget_n", "run", "kind"])["allocated"].sum().reset_index()
    table = per_run.groupby(["strategy", "budget_n", "kind"])["allocated"].mean().unstack("kind")
    return table[[k for k in KINDS if k in table.columns]].reset_index()


def task_gains(per_task: pd.DataFrame, results: pd.DataFrame, allocations: pd.DataFrame) -> pd.DataFrame:
    """run, strategy, budget_n, seed, task, allocated, gain: each trained run's per-task
    accuracy minus the base model's on that task (runs without an allocation are left out)."""
    base_runs = results.loc[results["strategy"] == "base", "run"]
    base = per_task[per_task["run"].isin(base_runs)].groupby("task")["accuracy"].mean()
    if not len(base) or not len(allocations):
        return pd.DataFrame(columns=["run", "strategy", "budget_n", "seed", "task", "allocated", "gain"])
    rows = per_task.merge(allocations[["run", "strategy", "budget_n", "seed", "task", "allocated"]],
                          on=["run", "task"])
    rows["gain"] = rows["accuracy"] - rows["task"].map(base).astype(float)  # no rows: map keeps the tasks' text type
    return rows[["run", "strategy", "budget_n", "seed", "task", "allocated", "gain"]].dropna(subset=["gain"])


def rank_correlation(x, y, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Spearman's rho of x and y with a 95% percentile interval from resampling the pairs, and
    its two-sided p-value (scipy); n: the number of pairs."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "n": n}
    result = stats.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            draws.append(stats.spearmanr(x[i], y[i]).statistic)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (math.nan, math.nan)
    return {"rho": float(result.statistic), "ci_low": float(low), "ci_high": float(high),
            "p": float(result.pvalue), "n": n}


def confidence_gain(gains: pd.DataFrame, confidence: pd.Series) -> pd.DataFrame:
    """Per task: its confidence C_t and its mean gain over the base model in the runs where it
    got at least one example (the premise of weighted-task-diversity: low C_t, high gain)."""
    got = gains[gains["allocated"] > 0]
    table = got.groupby("task").agg(gain=("gain", "mean"), runs=("run", "nunique")).reset_index()
    table["confidence"] = table["task"].map(confidence)
    return table.dropna(subset=["confidence"])


def examples_vs_none(gains: pd.DataFrame, kinds: pd.DataFrame, strategy: str = "random") -> pd.DataFrame:
    """Within each kind of task, in `strategy`'s runs: the mean gain of the tasks that got
    examples minus that of the tasks that got none, per run, then its mean over runs with a
    95% t-interval (budget by budget). Tests the method's mechanism directly: does a task's
    own example matter, or does what is learnt carry over within a kind?"""
    rows = gains[gains["strategy"] == strategy].merge(kinds, on="task")
    out = []
    for (budget, kind), group in rows.groupby(["budget_n", "kind"]):
        diffs, with_n, without_n = [], [], []
        for _, run in group.groupby("run"):
            got, none = run.loc[run["allocated"] > 0, "gain"], run.loc[run["allocated"] == 0, "gain"]
            if len(got) and len(none):
                diffs.append(got.mean() - none.mean())
                with_n.append(len(got))
                without_n.append(len(none))
        if diffs:
            out.append({"budget_n": int(budget), "kind": kind, **difference_stats(np.array(diffs)),
                        "tasks_with": float(np.mean(with_n)), "tasks_without": float(np.mean(without_n))})
    return pd.DataFrame(out)


def difference_stats(diffs) -> dict:
    """Mean of paired differences, its 95% t-interval, the runs where it is positive, and the
    exact sign and permutation tests' two-sided p-values."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    m = float(d.mean()) if len(d) else math.nan
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else math.nan
    return {"diff": m, "ci_low": m - half, "ci_high": m + half, "wins": int((d > 0).sum()), "pairs": len(d),
            "p_sign": sign_test(d), "p_perm": permutation_test(d)}


def answer_positions(positions, correct, n_options: int = 4) -> dict:
    """Multiple-choice items with `n_options` options, as a run's model answered them: the
    position (0 = the first option) it chose most often, the share of items it chose there,
    its accuracy on them, and how many there were. A model at chance that learns to favour
    another position moves its accuracy by the share of gold answers at that position."""
    positions = np.asarray(positions, dtype=int)
    if not len(positions):
        return {"n": 0, "favourite": None, "share": float("nan"), "accuracy": float("nan")}
    counts = np.bincount(positions, minlength=n_options)
    return {"n": int(len(positions)), "favourite": int(counts.argmax()), "share": float(counts.max() / len(positions)),
            "accuracy": float(np.mean(np.asarray(correct, dtype=float)))}
