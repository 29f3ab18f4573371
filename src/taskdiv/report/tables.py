"""An experiment's tables as the report reads them (results.csv, per_task.csv,
allocations.csv, task_kinds.csv), checked column by column, and the summary tables made
from them: strategy x budget means, paired differences, the annotation saving.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import DataError, TaskdivError
from ..common.inputs import read_csv
from ..common.writers import write_table
from ..experiments.grid import ROUND_STRATEGIES
from ..selection.strategies import STRATEGIES, is_task_strategy
from . import statistics
from .statistics import _bracket, mean_ci

REFERENCE = ("full", "base")


# taskdiv's variants beyond the paper, and the paper's strategy each one is meant to beat:
# the report compares them directly (same budget and seed).
VARIANTS = {"sharp-weighted-task-diversity": "weighted-task-diversity", "two-round": "task-diversity",
            "kind-diversity": "task-diversity"}


ORDER = ["random", "proportional", "task-diversity", "weighted-task-diversity", "sharp-weighted-task-diversity",
         "two-round", "kind-diversity", "k-center", "uncertainty"]


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
                         "p_sign": statistics.sign_test(diffs), "p_perm": statistics.permutation_test(diffs)})
    return pd.DataFrame(rows)


def saving_vs_random(results: pd.DataFrame) -> pd.DataFrame:
    """For every strategy x budget: the random budget that matches its mean accuracy (see
    statistics.saving_vs_random); empty unless random ran at two budgets or more."""
    rand = results[results["strategy"] == "random"]
    if rand["budget_n"].nunique() < 2:
        return pd.DataFrame()
    random_acc = {int(b): g["accuracy"].dropna().to_numpy() for b, g in rand.groupby("budget_n")}
    rows = []
    for strategy in _strategies(results):
        if strategy == "random":
            continue
        for budget_n, group in results[results["strategy"] == strategy].groupby("budget_n"):
            out = statistics.saving_vs_random(group["accuracy"].to_numpy(), int(budget_n), random_acc)
            # The seeds behind the interval: the strategy's cell and the two random cells that
            # bracket the match (a one-seed cell elsewhere, e.g. random at 4x with seed 0
            # only, does not void it).
            cells = [random_acc[b] for b in _bracket(sorted(random_acc), out["match"])]
            rows.append({"strategy": strategy, "budget_n": int(budget_n),
                         "seeds": min(int(group["accuracy"].notna().sum()), *(len(v) for v in cells)), **out})
    return pd.DataFrame(rows)


def _is_task_strategy(name: str) -> bool:
    """strategies.is_task_strategy for any name in results.csv (full and base are rows too); an
    experiment's round strategies (two-round) allocate across tasks in every round."""
    return name in ROUND_STRATEGIES or (name in STRATEGIES and is_task_strategy(name))


def _by_budget_then_strategy(table: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    """Rows by budget, then strategies in the report's order (the reference rows last)."""
    order = {s: i for i, s in enumerate(strategies + list(REFERENCE))}
    return table.sort_values(["budget_n", "strategy"], key=lambda c: c.map(order) if c.name == "strategy" else c)


def task_kinds(exp: Path) -> pd.DataFrame | None:
    """EXP/task_kinds.csv, written from the experiment's test pool on first use (the
    report then needs the pool's source once); None without a test pool."""
    path = exp / "task_kinds.csv"
    if path.exists():
        return read_table(path, TASK_KINDS, unique="task")
    config = exp / "config.yaml"
    if not config.exists():
        return None
    from ..experiments.grid import load_config
    from ..pool.fields import FieldMap
    from ..pool.load import load_pool

    cfg = load_config(config)
    if not cfg.test:
        return None
    kinds = statistics.task_kinds(load_pool(cfg.test, FieldMap(**cfg.pool_fields)).frame)
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
                         if len(reached) else f"none up to {int(rows['budget_n'].max())} prompts")
    return out


# The columns report reads from each of an experiment's tables, and what each holds: text (a
# name; numbers are read as their text), a count (a whole number from 0), a share (in [0, 1])
# or a share that may be left empty (a task without a confidence).
PER_TASK = {"run": "text", "task": "text", "n": "count", "accuracy": "share"}


ALLOCATIONS = {"run": "text", "strategy": "text", "budget": "text", "budget_n": "count", "seed": "count",
               "task": "text", "allocated": "count", "confidence": "share or empty"}


TASK_CONFIDENCE = {"task": "text", "confidence": "share or empty"}


TASK_KINDS = {"task": "text", "kind": "text"}


ANSWER_POSITIONS = {"run": "text", "n": "count", "favourite": "count", "share": "share", "accuracy": "share"}


ANSWER_SHIFT = {"run": "text", "kind": "text", "tasks": "count", "share": "share", "base_share": "share",
                "control_share": "share"}


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
    from ..experiments.collate import RESULT_NUMBERS, RESULT_REQUIRED, check_result

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
