"""`taskdiv report EXP`: tables and plots of an experiment, the way a paper shows them.

Reads the experiment's tables (written by experiments.py):
    EXP/results.csv      one row per run: run, strategy, budget, budget_n, seed, accuracy, ...
    EXP/per_task.csv     run, task, n, accuracy
    EXP/allocations.csv  run, strategy, budget, budget_n, seed, task, allocated, confidence
and writes EXP/report.md with:
    - mean accuracy and a 95% t-interval over seeds for every strategy x budget, with
      `full` and the base model as reference rows;
    - paired differences against random at the same budget and seed, with exact sign and
      permutation test p-values;
    - the annotation saving against random: the random budget that matches each
      strategy's accuracy (where random was run at several budgets), with an interval;
      and the smallest budget reaching the full-data accuracy (with a full run);
    - coverage: tasks given no / fewer than 5 training examples;
    - accuracy by kind of task (yes/no, multiple choice, generative; from the test pool,
      kept in EXP/task_kinds.csv);
and the plots accuracy_vs_budget.png, allocation.png, task_gains.png. The statistics
live in analysis.py.

    taskdiv report results/cpu-small
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis
from .errors import DataError, TaskdivError
from .fileio import atomic_path, check_output_dir, output_set, read_csv, write_table
from .strategies import STRATEGIES, is_task_strategy

log = logging.getLogger(__name__)

REFERENCE = ("full", "base")
# taskdiv's variants beyond the paper, and the paper's strategy each one is meant to beat:
# the report compares them directly (same budget and seed).
VARIANTS = {"sharp-weighted-task-diversity": "weighted-task-diversity", "two-round": "task-diversity",
            "kind-diversity": "task-diversity"}
ORDER = ["random", "proportional", "task-diversity", "weighted-task-diversity", "sharp-weighted-task-diversity",
         "two-round", "kind-diversity", "k-center", "uncertainty"]


@dataclass
class ReportConfig:
    exp: str | None = field(default=None, metadata={"positional": True, "required": True,
                                                    "help": "Experiment directory (holds results.csv)."})
    compare: list[str] | None = field(default=None, metadata={
        "help": "Other experiment directories: also print the headline table of EXP and these side by side "
                "(accuracy, paired difference against random with its p-value, and the annotation saving)."})


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


def _strategies(results: pd.DataFrame) -> list[str]:
    found = [s for s in results["strategy"].unique() if s not in REFERENCE]
    return sorted(found, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))


def summary_table(results: pd.DataFrame, column: str = "accuracy") -> pd.DataFrame:
    """strategy x budget: mean, ci_low, ci_high, seeds (of `column`)."""
    rows = []
    for (strategy, budget_n), group in results.groupby(["strategy", "budget_n"], sort=False):
        m, lo, hi = mean_ci(group[column])
        rows.append({"strategy": strategy, "budget": group["budget"].iloc[0], "budget_n": int(budget_n),
                     "mean": m, "ci_low": lo, "ci_high": hi, "seeds": int(group[column].notna().sum())})
    return pd.DataFrame(rows)


def paired_vs_random(results: pd.DataFrame) -> pd.DataFrame:
    """Mean difference to random at the same budget and seed, with a 95% t-interval and
    exact sign and permutation test p-values."""
    return paired_vs(results, "random")


def paired_vs(results: pd.DataFrame, reference: str, strategies: list[str] | None = None,
              column: str = "accuracy") -> pd.DataFrame:
    """paired_vs_random against any `reference` strategy, for `strategies` (default: all but
    the reference), at every budget each ran (pairs = 0 where the reference did not), on
    `column` (the judge suite: judge_win_rate)."""
    ref = results[results["strategy"] == reference].set_index(["budget_n", "seed"])[column]
    rows = []
    for strategy in strategies if strategies is not None else _strategies(results):
        if strategy == reference:
            continue
        for budget_n, group in results[results["strategy"] == strategy].groupby("budget_n"):
            keys = [(budget_n, s) for s in group["seed"]]
            present = [k in ref.index for k in keys]
            diffs = group[column].to_numpy()[present] - ref.loc[[k for k, p in zip(keys, present) if p]].to_numpy()
            diffs = diffs[~np.isnan(diffs)]  # a run without an accuracy is no pair
            m, lo, hi = mean_ci(diffs)
            rows.append({"strategy": strategy, "budget_n": int(budget_n), "diff": m, "ci_low": lo, "ci_high": hi,
                         "wins": int((diffs > 0).sum()), "pairs": len(diffs),
                         "p_sign": analysis.sign_test(diffs), "p_perm": analysis.permutation_test(diffs)})
    return pd.DataFrame(rows)


def saving_vs_random(results: pd.DataFrame) -> pd.DataFrame:
    """For every strategy x budget: the random budget that matches its mean accuracy (see
    analysis.saving_vs_random); empty unless random ran at two budgets or more."""
    rand = results[results["strategy"] == "random"]
    if rand["budget_n"].nunique() < 2:
        return pd.DataFrame()
    random_acc = {int(b): g["accuracy"].dropna().to_numpy() for b, g in rand.groupby("budget_n")}
    rows = []
    for strategy in _strategies(results):
        if strategy == "random":
            continue
        for budget_n, group in results[results["strategy"] == strategy].groupby("budget_n"):
            out = analysis.saving_vs_random(group["accuracy"].to_numpy(), int(budget_n), random_acc)
            # The seeds behind the interval: the strategy's cell and the two random cells that
            # bracket the match (a one-seed cell elsewhere, e.g. random at 4x with seed 0
            # only, does not void it).
            cells = [random_acc[b] for b in _bracket(sorted(random_acc), out["match"])]
            rows.append({"strategy": strategy, "budget_n": int(budget_n),
                         "seeds": min(int(group["accuracy"].notna().sum()), *(len(v) for v in cells)), **out})
    return pd.DataFrame(rows)


def _is_task_strategy(name: str) -> bool:
    """strategies.is_task_strategy for any name in results.csv (full and base are rows too)."""
    return name in STRATEGIES and is_task_strategy(name)


def _bracket(budgets: list[int], match: float) -> list[int]:
    """The measured budgets on either side of a matching budget (one at an end)."""
    if not np.isfinite(match):
        return [budgets[0] if match < 0 else budgets[-1]]
    above = next(i for i, b in enumerate(budgets) if b >= match)
    return budgets[max(above - 1, 0):above + 1] if budgets[above] > match else [budgets[above]]


def _by_budget_then_strategy(table: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    """Rows by budget, then strategies in the report's order (the reference rows last)."""
    order = {s: i for i, s in enumerate(strategies + list(REFERENCE))}
    return table.sort_values(["budget_n", "strategy"], key=lambda c: c.map(order) if c.name == "strategy" else c)


def _fmt_match(r, smallest: int, largest: int) -> str:
    if np.isnan(r["match"]):
        return "no accuracy to match"
    if r["match"] == np.inf:
        return f"not matched by random up to {largest}"
    if r["match"] == -np.inf:  # random's smallest budget already matches it
        if r["budget_n"] >= smallest:
            return f"none: random matches it at the same budget or less (already at {smallest})"
        return (f"not measured: random already matches it at its smallest budget, {smallest}, "
                f"and was not run below that")
    if r["match"] <= r["budget_n"]:
        return f"none: random matches it at the same budget or less ({r['match']:.0f})"
    if r.get("seeds", 2) < 2:  # resampling one seed gives no interval
        return (f"random needs {r['match']:.0f}: {100 * r['saving']:.0f}% fewer annotations "
                f"(one seed in a cell: no interval)")
    # Ends of the interval beyond the measured budgets are bounds, not values.
    lo, lo_saving = ((f"<= {smallest}", f"<= {100 * (1 - r['budget_n'] / smallest):.0f}%") if r["low"] == -np.inf
                     else (f"{r['low']:.0f}", f"{100 * r['saving_low']:.0f}%"))
    hi, hi_saving = ((f"> {largest}", f"> {100 * (1 - r['budget_n'] / largest):.0f}%") if r["high"] == np.inf
                     else (f"{r['high']:.0f}", f"{100 * r['saving_high']:.0f}%"))
    return (f"random needs {r['match']:.0f} [{lo}, {hi}]: {100 * r['saving']:.0f}% fewer annotations "
            f"[{lo_saving}, {hi_saving}]")


def task_kinds(exp: Path) -> pd.DataFrame | None:
    """EXP/task_kinds.csv, written from the experiment's test pool on first use (the
    report then needs the pool's source once); None without a test pool."""
    path = exp / "task_kinds.csv"
    if path.exists():
        return read_table(path, TASK_KINDS, unique="task")
    config = exp / "config.yaml"
    if not config.exists():
        return None
    from .data import FieldMap, load_pool
    from .experiments import load_config

    cfg = load_config(config)
    if not cfg.test:
        return None
    kinds = analysis.task_kinds(load_pool(cfg.test, FieldMap(**cfg.pool_fields)).frame)
    write_table(path, kinds)
    return kinds


def annotation_saving(summary: pd.DataFrame, full_acc: float | None) -> dict[str, str]:
    out = {}
    for strategy in summary["strategy"].unique():
        if strategy in REFERENCE:
            continue
        rows = summary[summary["strategy"] == strategy].sort_values("budget_n")
        if full_acc is None or np.isnan(full_acc):
            out[strategy] = "no full-data run"
            continue
        reached = rows[rows["mean"] >= full_acc]
        out[strategy] = (f"{reached['budget'].iloc[0]} ({int(reached['budget_n'].iloc[0])} prompts)"
                         if len(reached) else "not reached")
    return out


def _fmt(m, lo, hi) -> str:
    if np.isnan(m):
        return "n/a"
    return f"{m:.3f}" if np.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def plot_accuracy(results: pd.DataFrame, summary: pd.DataFrame, path: Path | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in _strategies(results):
        rows = summary[summary["strategy"] == strategy].sort_values("budget_n")
        line, = ax.plot(rows["budget_n"], rows["mean"], marker="o", label=strategy)
        ax.fill_between(rows["budget_n"], rows["ci_low"], rows["ci_high"], color=line.get_color(), alpha=0.15)
    for ref, style in (("full", "--"), ("base", ":")):
        ref_rows = results[results["strategy"] == ref]
        if len(ref_rows):
            ax.axhline(ref_rows["accuracy"].mean(), color="black", linestyle=style,
                       label=f"{ref} ({ref_rows['accuracy'].mean():.3f})" if ref == "base" else
                       f"full data, {int(ref_rows['budget_n'].iloc[0])} prompts ({ref_rows['accuracy'].mean():.3f})")
    ax.set_xlabel("annotation budget (prompts)")
    ax.set_ylabel("held-out macro accuracy")
    ax.set_title("Accuracy against budget (mean and 95% interval over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if path is not None:
        _save(fig, path)
    return fig


def plot_allocation(allocations: pd.DataFrame, path: Path | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_strategies = ["task-diversity", "weighted-task-diversity", "sharp-weighted-task-diversity"]
    if allocations.empty or not allocations["strategy"].isin(task_strategies).any():
        return None
    # The largest budget that the task strategies ran at; random alongside for contrast.
    budget_n = allocations.loc[allocations["strategy"].isin(task_strategies), "budget_n"].max()
    sub = allocations[allocations["budget_n"] == budget_n]
    pick = [s for s in ["random", *task_strategies] if s in set(sub["strategy"])]
    sub = sub[sub["seed"] == sub["seed"].min()]
    fig, axes = plt.subplots(1, len(pick), figsize=(4.5 * len(pick) + 1, 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, strategy in zip(axes, pick):
        rows = sub[sub["strategy"] == strategy]
        ax.scatter(rows["confidence"], rows["allocated"], label=strategy)
        ax.set_title(f"{strategy} ({int(budget_n)} prompts)")
        ax.set_xlabel("task confidence C_t (mean token probability)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("prompts allocated to the task")
    if path is not None:
        _save(fig, path)
    return fig


def plot_task_gains(per_task: pd.DataFrame, results: pd.DataFrame, path: Path | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_runs = results.loc[results["strategy"] == "base", "run"]
    if base_runs.empty or per_task.empty:
        return None
    base = per_task[per_task["run"].isin(base_runs)].groupby("task")["accuracy"].mean()
    # The largest budget the task strategies ran at (random alone at a larger one, run to
    # measure the saving, would leave one column); any strategy's if none ran.
    ran = results[~results["strategy"].isin(REFERENCE)]
    task_runs = ran[ran["strategy"].map(_is_task_strategy)]
    budget_n = (task_runs if len(task_runs) else ran)["budget_n"].max()
    runs = results[(results["budget_n"] == budget_n) | (results["strategy"] == "full")]
    merged = per_task.merge(runs[["run", "strategy"]], on="run")
    gains = merged.groupby(["task", "strategy"])["accuracy"].mean().unstack("strategy").sub(base, axis=0)
    cols = [s for s in _strategies(results) if s in gains.columns] + (["full"] if "full" in gains.columns else [])
    gains = gains[cols]
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 4, 0.32 * len(gains) + 1.5))
    lim = float(np.nanmax(np.abs(gains.to_numpy()))) or 1.0
    im = ax.imshow(gains.to_numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(gains)), gains.index)
    ax.set_title(f"Accuracy gain over the base model per task ({int(budget_n)}-prompt budget; full)")
    fig.colorbar(im, ax=ax, label="accuracy - base accuracy")
    if path is not None:
        _save(fig, path)
    return fig


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        _savefig(fig, tmp)
    plt.close(fig)


def _savefig(fig, target) -> None:
    fig.savefig(target, dpi=110, bbox_inches="tight", format="png")


def build_report(exp: Path) -> str:
    exp = Path(exp)
    results = _read_results(exp)
    check_output_dir(exp)  # report.md and the plots go beside results.csv
    per_task = read_table(exp / "per_task.csv", PER_TASK) if (exp / "per_task.csv").exists() else pd.DataFrame()
    allocations = read_table(exp / "allocations.csv", ALLOCATIONS) if (exp / "allocations.csv").exists() \
        else pd.DataFrame()
    summary = summary_table(results)
    full = results[results["strategy"] == "full"]["accuracy"]
    base = results[results["strategy"] == "base"]["accuracy"]
    full_acc = float(full.mean()) if len(full) else None
    strategies = _strategies(results)
    budgets = sorted(summary.loc[summary["strategy"].isin(strategies), "budget_n"].unique())
    labels = {int(b): summary.loc[summary["budget_n"] == b, "budget"].iloc[0] for b in budgets}

    lines = [f"# Experiment report: {exp.name}", ""]
    timing = ""
    if "seconds" in results.columns:
        timing = (f" Compute time: {results['seconds'].sum() / 60:.0f} min over the runs"
                  + (f" (training {results['train_seconds'].sum() / 60:.0f} min, evaluation "
                     f"{results['eval_seconds'].sum() / 60:.0f} min)" if "train_seconds" in results.columns else "")
                  + ".")
    if "same_as" in results.columns and results["same_as"].notna().any():
        twins = results[results["same_as"].notna()]
        timing += (f" {len(twins)} run(s) selected exactly what another run of the same seed selected and "
                   f"took its evaluation instead of training the same model again: "
                   + ", ".join(f"{r} = {t}" for r, t in zip(twins["run"], twins["same_as"])) + ".")
    suite = results["suite"].iloc[0] if "suite" in results.columns else "heldout"
    lines += [f"Runs: {len(results)}. Accuracy is the {suite} macro accuracy; cells give the mean over "
              f"seeds and its 95% t-interval.{timing}", ""]
    head = "| strategy | " + " | ".join(f"{labels[int(b)]} ({int(b)})" for b in budgets) + " |"
    lines += [head, "|---" * (len(budgets) + 1) + "|"]
    for strategy in strategies:
        cells = []
        for b in budgets:
            row = summary[(summary["strategy"] == strategy) & (summary["budget_n"] == b)]
            cells.append(_fmt(*row[["mean", "ci_low", "ci_high"]].iloc[0]) + f" (n={row['seeds'].iloc[0]})"
                         if len(row) else "not run")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    for ref, values in (("full", full), ("base", base)):
        if len(values):
            m, lo, hi = mean_ci(values)
            n = int(results.loc[results['strategy'] == ref, 'budget_n'].iloc[0])
            label = f"full data ({n} prompts)" if ref == "full" else "base model (no finetuning)"
            lines.append(f"| {label} | " + " | ".join([_fmt(m, lo, hi)] * len(budgets)) + " |")
    paired = paired_vs_random(results)
    if len(paired):
        lines += ["", "## Paired difference against random (same budget and seed)", "",
                  "Accuracy minus random's at the same budget and seed: mean, 95% t-interval, seeds won, and "
                  "two-sided p-values of the exact sign test and the exact paired permutation (sign-flip) test.", "",
                  "| strategy | budget | mean difference [95% CI] | wins / pairs | p (sign) | p (permutation) |",
                  "|---|---|---|---|---|---|"]
        for _, r in paired.iterrows():
            lines.append(f"| {r['strategy']} | {labels.get(int(r['budget_n']), r['budget_n'])} | {_paired_cells(r)} |")
    lines += _variant_lines(results, labels)
    lines += _judge_lines(results, strategies, budgets, labels)
    saving = saving_vs_random(results)
    lines += ["", "## Annotation saving", ""]
    if len(saving):
        rand_budgets = sorted(results.loc[results["strategy"] == "random", "budget_n"].unique())
        lines += [f"Against random selection, run at {', '.join(str(int(b)) for b in rand_budgets)} prompts: the "
                  "random budget whose mean accuracy equals the strategy's (interpolated linearly in log budget "
                  "between measured budgets), and the saving 1 - budget / that. Intervals: 95%, from "
                  "resampling the seeds of every cell (2,000 bootstrap draws).", "",
                  "| strategy | budget | accuracy | matching random budget and saving |", "|---|---|---|---|"]
        for _, r in saving.iterrows():
            row = summary[(summary["strategy"] == r["strategy"]) & (summary["budget_n"] == r["budget_n"])]
            lines.append(f"| {r['strategy']} | {int(r['budget_n'])} | {row['mean'].iloc[0]:.3f} | "
                         f"{_fmt_match(r, int(rand_budgets[0]), int(rand_budgets[-1]))} |")
        lines.append("")
    if full_acc is not None:
        lines += [f"Smallest budget whose mean accuracy reaches the full-data accuracy ({full_acc:.3f}):", ""]
        for strategy, text in annotation_saving(summary, full_acc).items():
            lines.append(f"- {strategy}: {text}")
    elif not len(saving):
        lines.append("No full-data run, and random ran at one budget only: no saving to measure.")
    if len(allocations):
        cov = analysis.coverage(allocations)
        n_tasks = int(cov["tasks"].max())
        lines += ["", "## Coverage", "",
                  f"Tasks (of {n_tasks}) that got no training example, and fewer than 5, mean over seeds.", "",
                  "| strategy | budget | no example | fewer than 5 |", "|---|---|---|---|"]
        for _, r in _by_budget_then_strategy(cov, strategies).iterrows():
            lines.append(f"| {r['strategy']} | {int(r['budget_n'])} | {r['zero']:.1f} | {r['under']:.1f} |")
    kinds = task_kinds(exp) if len(per_task) else None
    if kinds is not None and len(kinds):
        by_kind = analysis.accuracy_by_kind(per_task, results, kinds)
        cols = [c for c in by_kind.columns if c not in ("strategy", "budget_n")]
        lines += ["", "## Accuracy by kind of task", "",
                  "Macro accuracy over the tasks of each kind (their number in brackets), mean over seeds.", "",
                  "| strategy | budget | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        for _, r in _by_budget_then_strategy(by_kind, strategies).iterrows():
            lines.append(f"| {r['strategy']} | {int(r['budget_n'])} | "
                         + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    gains = analysis.task_gains(per_task, results, allocations) if len(per_task) else pd.DataFrame()
    mechanism, scatter = _mechanism_lines(exp, gains, kinds)
    lines += mechanism
    lines += ["", "## Plots", "", "![accuracy against budget](accuracy_vs_budget.png)", ""]
    figures = {"accuracy_vs_budget.png": plot_accuracy(results, summary)}
    if (fig := plot_allocation(allocations)) is not None:
        figures["allocation.png"] = fig
        lines += ["![allocation against task confidence](allocation.png)", ""]
    if (fig := plot_task_gains(per_task, results)) is not None:
        figures["task_gains.png"] = fig
        lines += ["![per-task gains over the base model](task_gains.png)", ""]
    if scatter is not None:
        figures["confidence_gain.png"] = scatter
        lines += ["![task confidence against gain](confidence_gain.png)", ""]
    text = "\n".join(lines) + "\n"
    _write_report(exp, text, figures)
    return text


def _tuned_confidence(exp: Path, gains: pd.DataFrame) -> pd.DataFrame:
    """Two-round runs: each task's confidence under the run's round-1 model (the tuned one
    round 2 was allocated by) beside its gain in that run, for the tasks that got examples."""
    rows = []
    for run in gains.loc[gains["strategy"] == "two-round", "run"].unique():
        path = exp / "runs" / run / "round1" / "scores" / "tasks.csv"
        if path.exists():
            tuned = read_table(path, TASK_CONFIDENCE, unique="task").set_index("task")["confidence"]
            got = gains[(gains["run"] == run) & (gains["allocated"] > 0)]
            rows.append(got.assign(confidence=got["task"].map(tuned)))
    return pd.concat(rows, ignore_index=True).dropna(subset=["confidence"]) if rows else pd.DataFrame()


def _mechanism_lines(exp: Path, gains: pd.DataFrame, kinds) -> tuple[list[str], object]:
    """Does low confidence predict gain (weighted-task-diversity's premise), and does a task's
    own example matter within its kind (the method's mechanism)? Lines and the scatter plot."""
    lines, fig = [], None
    tasks_csv = exp / "scores" / "tasks.csv"
    if len(gains) and tasks_csv.exists():
        confidence = read_table(tasks_csv, TASK_CONFIDENCE, unique="task").set_index("task")["confidence"]
        table = analysis.confidence_gain(gains, confidence)
        r = analysis.rank_correlation(table["confidence"], table["gain"])
        if r["n"]:
            verdict = ("low confidence goes with higher gain" if r["ci_high"] < 0 else
                       "low confidence goes with lower gain" if r["ci_low"] > 0 else
                       "no rank correlation can be told from zero: on this model a task's confidence does not "
                       "predict what annotating it gains")
            lines += ["", "## Does low confidence predict gain?", "",
                      "Weighted-task-diversity's premise: tasks the base model is unsure of gain more from "
                      "annotation. Per task: the base model's confidence C_t (scores/tasks.csv) against its mean "
                      "gain over the base model in the runs where it got at least one example.", "",
                      f"Spearman's rho over {r['n']} tasks: **{r['rho']:+.3f}** [{r['ci_low']:+.3f}, "
                      f"{r['ci_high']:+.3f}] (95% bootstrap over tasks; p = {r['p']:.3f}): {verdict}."]
            tuned = _tuned_confidence(exp, gains)
            if len(tuned):
                t = analysis.rank_correlation(tuned["confidence"], tuned["gain"])
                lines += ["", f"The tuned model's confidence (two-round runs: the round-1 model's C_t, which round 2 "
                              f"was allocated by) against the run's per-task gain, {t['n']} task-runs: rho "
                              f"**{t['rho']:+.3f}** [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] (p = {t['p']:.3f})."]
            fig = plot_confidence_gain(table, r)
    if len(gains) and kinds is not None and len(kinds):
        within = analysis.examples_vs_none(gains, kinds)
        if len(within):
            lines += ["", "## Does a task's own example matter?", "",
                      "Within each kind of task, in random's runs (where tasks with and without examples sit side by "
                      "side): the mean gain over the base model of the tasks that got examples minus that of the "
                      "tasks that got none, per run; its mean over runs, 95% t-interval, runs where it is positive, "
                      "and exact p-values. Near zero means what is learnt carries over within a kind, and per-task "
                      "coverage is not what the model needs.", "",
                      "| budget | kind | tasks with / without examples | gain difference [95% CI] | positive / runs "
                      "| p (sign) | p (permutation) |", "|---|---|---|---|---|---|---|"]
            for _, w in within.iterrows():
                lines.append(f"| {int(w['budget_n'])} | {w['kind']} | {w['tasks_with']:.0f} / {w['tasks_without']:.0f}"
                             f" | {_paired_cells(w)} |")
    return lines, fig


def plot_confidence_gain(table: pd.DataFrame, r: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(table["confidence"], table["gain"], s=14, alpha=0.7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("base model's task confidence C_t")
    ax.set_ylabel("gain over the base model (runs where the task got examples)")
    ax.set_title(f"Spearman rho {r['rho']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], {r['n']} tasks")
    fig.tight_layout()
    return fig


def _variant_lines(results: pd.DataFrame, labels: dict) -> list[str]:
    """The section comparing each of taskdiv's variants with the paper strategy it extends."""
    lines = []
    for variant, reference in VARIANTS.items():
        paired = paired_vs(results, reference, [variant])
        paired = paired[paired["pairs"] > 0] if len(paired) else paired  # only where both ran
        if not len(paired):
            continue
        lines += ["", f"## {variant} against {reference} (same budget and seed)", "",
                  f"{variant} is taskdiv's variant, not the paper's; the question is whether it beats "
                  f"{reference}, the paper strategy it extends. Columns as above.", "",
                  "| budget | mean difference [95% CI] | wins / pairs | p (sign) | p (permutation) |",
                  "|---|---|---|---|---|"]
        for _, r in paired.iterrows():
            lines.append(f"| {labels.get(int(r['budget_n']), r['budget_n'])} | {_paired_cells(r)} |")
    return lines


def _judge_lines(results: pd.DataFrame, strategies: list[str], budgets: list, labels: dict) -> list[str]:
    """The judge suite's section: its win rate per strategy x budget, and the paired
    differences against random, in points."""
    if "judge_win_rate" not in results.columns or results["judge_win_rate"].isna().all():
        return []
    summary = summary_table(results, "judge_win_rate")
    lines = ["", "## Judge win rate", "",
             "The judge suite's win rate against the reference answers (percent; mean over seeds and its 95% "
             "t-interval). Its per-run details (judge, prompt config, order, position bias, length-controlled win "
             "rate) are in each run's eval-judge/results.json.", "",
             "| strategy | " + " | ".join(f"{labels[int(b)]} ({int(b)})" for b in budgets) + " |",
             "|---" * (len(budgets) + 1) + "|"]
    for strategy in strategies:
        cells = []
        for b in budgets:
            row = summary[(summary["strategy"] == strategy) & (summary["budget_n"] == b)]
            cells.append(_fmt(*row[["mean", "ci_low", "ci_high"]].iloc[0]) if len(row) else "not run")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    for ref in ("full", "base"):
        values = results.loc[results["strategy"] == ref, "judge_win_rate"]
        if len(values):
            lines.append(f"| {ref} | " + " | ".join([_fmt(*mean_ci(values))] * len(budgets)) + " |")
    paired = paired_vs(results, "random", column="judge_win_rate")
    if len(paired):
        lines += ["", "Win rate minus random's at the same budget and seed (points):", "",
                  "| strategy | budget | mean difference [95% CI] | wins / pairs | p (sign) | p (permutation) |",
                  "|---|---|---|---|---|---|"]
        for _, r in paired.iterrows():
            lines.append(f"| {r['strategy']} | {labels.get(int(r['budget_n']), r['budget_n'])} | {_paired_cells(r)} |")
    return lines


def _paired_cells(r) -> str:
    """A paired_vs row's cells: difference [interval], wins / pairs, the two p-values."""
    return (f"{_fmt(r['diff'], r['ci_low'], r['ci_high'])} | {r['wins']} / {r['pairs']} | "
            f"{r['p_sign']:.3f} | {r['p_perm']:.3f}")


def _write_report(exp: Path, text: str, figures: dict) -> None:
    """report.md and its plots as one unit (fileio.output_set): all of them, or none."""
    import matplotlib.pyplot as plt

    try:
        with output_set(*(exp / name for name in figures), exp / "report.md") as tmps:
            for tmp, fig in zip(tmps, figures.values()):
                _savefig(fig, tmp)
            tmps[-1].write_text(text, encoding="utf-8")
    finally:
        for fig in figures.values():
            plt.close(fig)


# The columns report reads from each of an experiment's tables, and what each holds: text (a
# name; numbers are read as their text), a count (a whole number from 0), a share (in [0, 1])
# or a share that may be left empty (a task without a confidence).
PER_TASK = {"run": "text", "task": "text", "n": "count", "accuracy": "share"}
ALLOCATIONS = {"run": "text", "strategy": "text", "budget": "text", "budget_n": "count", "seed": "count",
               "task": "text", "allocated": "count", "confidence": "share or empty"}
TASK_CONFIDENCE = {"task": "text", "confidence": "share or empty"}
TASK_KINDS = {"task": "text", "kind": "text"}


def read_table(path: Path, columns: dict[str, str], *, unique: str | None = None) -> pd.DataFrame:
    """One of an experiment's CSV tables, checked: the `columns` there, each holding what it should
    (see PER_TASK), and `unique` naming each row once; else a DataError naming file, row and field.
    A table with its header only is an empty one."""
    frame = read_csv(path, neutralised=True, dtype={c: str for c, kind in columns.items() if kind == "text"},
                     keep_default_na=False, na_values=[""])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)} (it has {', '.join(map(str, frame.columns))})",
                        file=path)
    for name, kind in columns.items():
        values = frame[name]
        if kind == "text":
            bad = values.isna().to_numpy() | (values.fillna("").str.strip() == "").to_numpy()
            what = "a name"
        else:
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(numbers) & (numbers >= 0) & (numbers <= 1 if kind.startswith("share")
                                                              else numbers == np.floor(numbers))
            bad = ~ok & ~(values.isna().to_numpy() & kind.endswith("or empty"))
            what = "a whole number from 0" if kind == "count" else "a number in [0, 1]"
            frame[name] = numbers
        if bad.any():
            i = int(np.argmax(bad))
            value = values.iloc[i].item() if isinstance(values.iloc[i], np.generic) else values.iloc[i]
            raise DataError(f"{value!r} is not {what}", file=path, row=i + 1, field=name)
    if unique is not None and frame[unique].duplicated().any():
        i = int(np.argmax(frame[unique].duplicated().to_numpy()))
        raise DataError(f"{frame[unique].iloc[i]!r} is named twice", file=path, row=i + 1, field=unique)
    return frame


def _read_results(exp: Path) -> pd.DataFrame:
    exp = Path(exp)
    if exp.exists() and not exp.is_dir():
        raise TaskdivError(f"{exp}: is not a directory (give the experiment directory, which holds results.csv)")
    path = exp / "results.csv"
    if not path.exists():
        raise TaskdivError(f"{path}: no such file (run `taskdiv experiment` first)")
    from .experiments import RESULT_NUMBERS, RESULT_REQUIRED, check_result

    results = read_csv(path, neutralised=True)
    missing = set(RESULT_REQUIRED) - set(results.columns)
    if missing:
        raise TaskdivError(f"{path}: missing column(s) {sorted(missing)}")
    if not len(results):
        raise DataError("no runs: the file holds its header only", file=path)
    for col in results.columns:  # a number column with text in it was read as text: its numbers as numbers
        if (col in RESULT_NUMBERS or str(col).endswith("_accuracy")) \
                and not pd.api.types.is_numeric_dtype(results[col]):
            results[col] = results[col].map(_csv_number)
    for i, record in enumerate(results.to_dict(orient="records")):
        check_result(record, path, row=i + 1)
    for col in ("run", "strategy", "budget", "same_as"):  # the text report.md pastes into its tables
        if col in results.columns:
            results[col] = results[col].map(md_text)
    return results


_MD_SPECIAL = re.compile(r"([\\`*|\[\]<>])")


def md_text(value):
    """Text from results.csv as it may stand in a table cell of report.md: a '|' would end the
    cell and a line break the row; backticks, brackets, '<' and '*' would format or link it;
    a leading = + - @ # ! (a formula in a spreadsheet, a heading or a list in markdown) is
    escaped too. Other values, and taskdiv's own names, are left as they are."""
    if not isinstance(value, str):
        return value
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(value.splitlines()))
    return "\\" + text if text and text[0] in "=+-@#!" else text


def _csv_number(value):
    """A CSV cell as a number where it reads as one (else as it is, for check_result to name)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def headline(exps) -> str:
    """Experiments side by side (markdown): for every strategy and every budget at which
    random and another strategy both ran, the mean accuracy over seeds, and for the
    others the paired difference against random in points with its permutation-test
    p-value; then the annotation saving of each task strategy where random ran at
    several budgets."""
    columns, cells, notes = [], {}, []
    strategies: list[str] = []
    for exp in map(Path, exps):
        results = _read_results(exp)
        summary = summary_table(results)
        paired = paired_vs_random(results)
        others = results[~results["strategy"].isin(("random",) + REFERENCE)]
        budgets = sorted(set(others["budget_n"]) & set(results.loc[results["strategy"] == "random", "budget_n"]))
        strategies += [s for s in _strategies(results) if s not in strategies]
        for b in budgets:
            col = f"{exp.name}, {int(b)} prompts"
            columns.append(col)
            for _, r in summary[summary["budget_n"] == b].iterrows():
                text = f"{r['mean']:.3f}"
                pair = paired[(paired["strategy"] == r["strategy"]) & (paired["budget_n"] == b)] \
                    if len(paired) else paired
                seeds = f"{int(r['seeds'])} seed" + ("s" if r["seeds"] != 1 else "")
                if len(pair) and pair["pairs"].iloc[0] >= 2:
                    p = pair.iloc[0]
                    text += f" ({100 * p['diff']:+.1f}, p={p['p_perm']:.2f}; {seeds})"
                else:
                    text += f" ({seeds})"
                cells[(r["strategy"], col)] = text
            for ref in REFERENCE:
                values = results.loc[results["strategy"] == ref, "accuracy"]
                if len(values):
                    cells[(ref, col)] = f"{values.mean():.3f}"
        saving = saving_vs_random(results)
        rand_budgets = sorted(results.loc[results["strategy"] == "random", "budget_n"].unique())
        for _, r in saving.iterrows() if len(saving) else ():
            if r["budget_n"] in budgets and _is_task_strategy(r["strategy"]):
                notes.append(f"- {exp.name}, {r['strategy']} at {int(r['budget_n'])}: "
                             + _fmt_match(r, int(rand_budgets[0]), int(rand_budgets[-1])))
    lines = ["| strategy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for strategy in strategies + [r for r in REFERENCE if any((r, c) in cells for c in columns)]:
        label = {"full": "full data", "base": "base model"}.get(strategy, strategy)
        lines.append(f"| {label} | " + " | ".join(cells.get((strategy, c), "") for c in columns) + " |")
    lines += ["", "Mean held-out accuracy over seeds; in brackets the paired difference against random at "
                  "the same budget and seed, in points, and its exact permutation-test p-value."]
    if notes:
        lines += ["", "Annotation saving of the task strategies against random (the random budget that matches "
                      "them, interpolated in log budget; 95% intervals from resampling the seeds):", *notes]
    return "\n".join(lines) + "\n"


def run_report(cfg: ReportConfig) -> None:
    text = build_report(Path(cfg.exp))
    print(text)
    print(f"wrote {Path(cfg.exp) / 'report.md'} and its plots")
    if cfg.compare:
        print("\n## Side by side\n")
        print(headline([cfg.exp, *cfg.compare]))
