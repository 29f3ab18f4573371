"""The report's markdown: the sections beyond the main table (variants, the judge, the
mechanism questions), their cell formats, and the side-by-side headline of several
experiments.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import statistics
from .statistics import mean_ci
from .tables import (ANSWER_POSITIONS, ANSWER_SHIFT, REFERENCE, TASK_CONFIDENCE, VARIANTS, _by_budget_then_strategy,
                     _is_task_strategy, _read_results, _strategies, annotation_saving, paired_vs, paired_vs_random,
                     read_table, saving_vs_random, summary_table)


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


def _fmt(m, lo, hi) -> str:
    if np.isnan(m):
        return "n/a"
    return f"{m:.3f}" if np.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def accuracy_lines(exp: Path, results: pd.DataFrame, summary: pd.DataFrame, strategies: list[str], budgets: list,
                   labels: dict) -> list[str]:
    """The title, what the runs cost, and the main table: accuracy per strategy x budget, with
    the full-data and base-model rows."""
    full = results[results["strategy"] == "full"]["accuracy"]
    base = results[results["strategy"] == "base"]["accuracy"]
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
    if "code" in results.columns and results["code"].notna().any():  # the commit each run's result.json names
        made = results["code"].dropna().str[:7].value_counts(sort=False)  # "+dirty" counted with its commit
        made = made.sort_values(ascending=False, kind="stable")
        timing += " Code: " + ", ".join(f"{n}{' run(s)' * (i == 0)} at {c}"
                                        for i, (c, n) in enumerate(made.items())) + "."
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
    return lines


def paired_lines(results: pd.DataFrame, labels: dict) -> list[str]:
    """Each strategy against random at the same budget and seed."""
    lines = []
    paired = paired_vs_random(results)
    if len(paired):
        lines += ["", "## Paired difference against random (same budget and seed)", "",
                  "Accuracy minus random's at the same budget and seed: mean, 95% t-interval, seeds won, and "
                  "two-sided p-values of the exact sign test and the exact paired permutation (sign-flip) test.", "",
                  "| strategy | budget | mean difference [95% CI] | wins / pairs | p (sign) | p (permutation) |",
                  "|---|---|---|---|---|---|"]
        for _, r in paired.iterrows():
            lines.append(f"| {r['strategy']} | {labels.get(int(r['budget_n']), r['budget_n'])} | {_paired_cells(r)} |")
    return lines


def saving_lines(results: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The annotation saving against random, and the smallest budget reaching the full data."""
    full = results[results["strategy"] == "full"]["accuracy"]
    full_acc = float(full.mean()) if len(full) else None
    saving = saving_vs_random(results)
    lines = ["", "## Annotation saving", ""]
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
    return lines


def coverage_lines(allocations: pd.DataFrame, strategies: list[str]) -> list[str]:
    """Tasks left with no training example, and with fewer than 5."""
    lines = []
    if len(allocations):
        cov = statistics.coverage(allocations)
        n_tasks = int(cov["tasks"].max())
        lines += ["", "## Coverage", "",
                  f"Tasks (of {n_tasks}) that got no training example, and fewer than 5, mean over seeds.", "",
                  "| strategy | budget | no example | fewer than 5 |", "|---|---|---|---|"]
        for _, r in _by_budget_then_strategy(cov, strategies).iterrows():
            lines.append(f"| {r['strategy']} | {int(r['budget_n'])} | {r['zero']:.1f} | {r['under']:.1f} |")
    return lines


def kind_lines(per_task: pd.DataFrame, results: pd.DataFrame, kinds, strategies: list[str],
               allocations: pd.DataFrame | None = None) -> list[str]:
    """Macro accuracy over the tasks of each kind (yes/no, multiple choice, generative), and
    beside it the training examples the run gave that kind, where allocations are known."""
    lines = []
    if kinds is not None and len(kinds):
        by_kind = statistics.accuracy_by_kind(per_task, results, kinds)
        cols = [c for c in by_kind.columns if c not in ("strategy", "budget_n")]
        given = {}
        if allocations is not None and len(allocations):
            examples = statistics.examples_by_kind(allocations, kinds).set_index(["strategy", "budget_n"])
            given = {key: row for key, row in examples.iterrows()}
        lines += ["", "## Accuracy by kind of task", "",
                  "Macro accuracy over the tasks of each kind (their number in brackets), mean over seeds"
                  + ("; in brackets after it, the training examples the strategy gave the tasks of that kind, "
                     "mean over seeds. What a strategy spends on a kind is what it does not spend on the others."
                     if given else "."), "",
                  "| strategy | budget | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        for _, r in _by_budget_then_strategy(by_kind, strategies).iterrows():
            row = given.get((r["strategy"], r["budget_n"]))
            cells = []
            for c in cols:
                kind = c.rsplit(" (", 1)[0]
                n = row.get(kind) if row is not None else None
                cells.append(f"{r[c]:.3f}" + (f" ({n:.0f})" if n is not None and pd.notna(n) else ""))
            lines.append(f"| {r['strategy']} | {int(r['budget_n'])} | " + " | ".join(cells) + " |")
    return lines


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
    own example matter within its kind (the method's mechanism)? Lines, and the confidence-gain
    scatter's inputs (its table and rank correlation, and the tuned model's in the two-round
    runs; None without them)."""
    lines, scatter = [], None
    tasks_csv = exp / "scores" / "tasks.csv"
    if len(gains) and tasks_csv.exists():
        confidence = read_table(tasks_csv, TASK_CONFIDENCE, unique="task").set_index("task")["confidence"]
        table = statistics.confidence_gain(gains, confidence)
        r = statistics.rank_correlation(table["confidence"], table["gain"])
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
            tuned, t = _tuned_confidence(exp, gains), None
            if len(tuned):
                t = statistics.rank_correlation(tuned["confidence"], tuned["gain"])
                lines += ["", f"The tuned model's confidence (two-round runs: the round-1 model's C_t, which round 2 "
                              f"was allocated by) against the run's per-task gain, {t['n']} task-runs: rho "
                              f"**{t['rho']:+.3f}** [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] (p = {t['p']:.3f})."]
            scatter = (table, r, tuned, t) if t is not None and t["n"] else (table, r)
    if len(gains) and kinds is not None and len(kinds):
        within = statistics.examples_vs_none(gains, kinds)
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
    return lines, scatter


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


def _run_positions(path: Path, n_options: int = 4) -> dict:
    """answer_positions of one run's eval/items.jsonl (its multiple-choice items with
    `n_options` options: the chosen position is the best-scored option's)."""
    from ..common.errors import DataError
    from ..common.inputs import iter_jsonl

    positions, correct = [], []
    for line, rec in iter_jsonl(path):
        if rec.get("kind") != "mc":
            continue
        scores = rec.get("scores")
        if not isinstance(scores, list) or not scores or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
            raise DataError("'scores' must be a non-empty list of numbers (one per option)", file=path, line=line,
                            field="scores")
        if not isinstance(rec.get("correct"), bool):
            raise DataError("'correct' must be true or false", file=path, line=line, field="correct")
        if len(scores) == n_options:
            positions.append(int(np.argmax(scores)))
            correct.append(rec["correct"])
    return statistics.answer_positions(positions, correct, n_options)


def answer_positions(exp: Path, runs: list[str]) -> pd.DataFrame:
    """Per run, the answer positions of its four-option items (`_run_positions`), from its
    eval/items.jsonl where the experiment kept it, else from EXP/answer_positions.csv, which
    keeps them for the report of a clone (items.jsonl is not committed: 220 KB a run). The
    CSV is written when the table differs from it."""
    from ..common.writers import write_table

    path = exp / "answer_positions.csv"
    kept = read_table(path, ANSWER_POSITIONS, unique="run").set_index("run") if path.exists() else None
    rows = {}
    for run in runs:
        items = exp / "runs" / run / "eval" / "items.jsonl"
        if items.exists():
            found = _run_positions(items)
            if found["n"]:
                rows[run] = found
        elif kept is not None and run in kept.index:
            rows[run] = kept.loc[run].to_dict()
    table = pd.DataFrame([{"run": run, **found} for run, found in rows.items()],
                         columns=list(ANSWER_POSITIONS)).round({"share": 6, "accuracy": 6})
    if (kept is None and len(table)) or (kept is not None and not _same_table(table, kept.reset_index())):
        write_table(path, table)
    return table


def _closed_answers(path: Path) -> dict[str, list[str]]:
    """task -> the answers (lower-cased) of its closed-answer items (options scored) in an eval/items.jsonl."""
    from ..common.errors import DataError
    from ..common.inputs import iter_jsonl

    answers: dict[str, list[str]] = {}
    for line, rec in iter_jsonl(path):
        if rec.get("kind") != "mc":
            continue
        if not isinstance(rec.get("task"), str) or rec.get("prediction") is None:
            raise DataError("a multiple-choice item needs its 'task' and 'prediction'", file=path, line=line,
                            field="prediction" if isinstance(rec.get("task"), str) else "task")
        answers.setdefault(rec["task"], []).append(str(rec["prediction"]).strip().lower())
    return answers


def _training_answers(path: Path) -> dict[str, Counter]:
    """task -> how many of a run's training examples (data.jsonl) give each response (lower-cased)."""
    from ..common.errors import DataError
    from ..common.inputs import iter_jsonl

    given: dict[str, Counter] = {}
    for line, rec in iter_jsonl(path):
        if not isinstance(rec.get("task"), str) or rec.get("response") is None:
            raise DataError("a training example needs its 'task' and 'response'", file=path, line=line,
                            field="response" if isinstance(rec.get("task"), str) else "task")
        given.setdefault(rec["task"], Counter())[str(rec["response"]).strip().lower()] += 1
    return given


def _answer_shifts(answers: dict, given: dict, base: dict, kinds: dict[str, str]) -> list[dict]:
    """Per trained run and kind of task: its tasks with closed-answer items whose training
    examples have a majority answer L (more examples give it than any other) and which some
    other run left without an example; the mean share of their held-out items its model
    answered L, the base model's share, and the mean share in the runs that gave the task no
    example (the control: what finetuning does to L without the task's own examples).
    `answers`, `given`: per run, `_closed_answers` and `_training_answers`."""
    rows = []
    for run, by_task in answers.items():
        shares: dict[str, list[tuple[float, float, float]]] = {}
        for task, said in by_task.items():
            counts = given[run].get(task)
            counts = counts.most_common(2) if counts else []
            tied = len(counts) > 1 and counts[0][1] == counts[1][1]
            if not counts or tied or task not in base or task not in kinds:
                continue
            label = counts[0][0]
            control = [np.mean([a == label for a in answers[other][task]]) for other in answers
                       if not given[other].get(task) and task in answers[other]]
            if control:
                shares.setdefault(kinds[task], []).append(
                    (float(np.mean([a == label for a in said])), float(np.mean([a == label for a in base[task]])),
                     float(np.mean(control))))
        rows += [{"run": run, "kind": kind, "tasks": len(v), "share": float(np.mean([x[0] for x in v])),
                  "base_share": float(np.mean([x[1] for x in v])), "control_share": float(np.mean([x[2] for x in v]))}
                 for kind, v in sorted(shares.items())]
    return rows


def answer_shift(exp: Path, results: pd.DataFrame, kinds: pd.DataFrame | None) -> pd.DataFrame:
    """`_answer_shifts` of the trained runs, from their data.jsonl and eval/items.jsonl and the
    base model's items where the experiment kept them, else from EXP/answer_shift.csv, which
    keeps the table for a clone (items.jsonl is not committed). The CSV is written when the
    table differs from it."""
    from ..common.writers import write_table

    path = exp / "answer_shift.csv"
    kept = read_table(path, ANSWER_SHIFT) if path.exists() else None
    base_runs = [str(r) for r in results.loc[results["strategy"] == "base", "run"]]
    base_items = exp / "runs" / base_runs[0] / "eval" / "items.jsonl" if base_runs else None
    by_task = dict(zip(kinds["task"], kinds["kind"])) if kinds is not None else {}
    trained = [str(r) for r in results.loc[~results["strategy"].isin(["base", "full"]), "run"]]
    here = [r for r in trained if (exp / "runs" / r / "data.jsonl").exists()
            and (exp / "runs" / r / "eval" / "items.jsonl").exists()]
    rows = []
    if here and by_task and base_items is not None and base_items.exists():
        answers = {r: _closed_answers(exp / "runs" / r / "eval" / "items.jsonl") for r in here}
        given = {r: _training_answers(exp / "runs" / r / "data.jsonl") for r in here}
        rows = _answer_shifts(answers, given, _closed_answers(base_items), by_task)
    if kept is not None:  # runs whose files are gone (a clone) keep their rows
        rows += kept[kept["run"].isin([r for r in trained if r not in here])].to_dict("records")
    table = pd.DataFrame(rows, columns=list(ANSWER_SHIFT))
    table = table.round({"share": 6, "base_share": 6, "control_share": 6})
    if (kept is None and len(table)) or (kept is not None and not _same_table(table, kept)):
        write_table(path, table)
    return table


def shift_lines(exp: Path, results: pd.DataFrame, kinds: pd.DataFrame | None) -> list[str]:
    """Do a task's few examples teach it, or only their answer? (`answer_shift`)"""
    table = answer_shift(exp, results, kinds)
    if not len(table):
        return []
    table = table.astype({"tasks": int, "share": float, "base_share": float, "control_share": float})
    lines = ["", "## Do a task's examples teach it, or only their answer?", "",
             "In each trained run, the tasks with a closed answer set (options scored) whose training examples "
             "have a majority answer (more examples give it than any other; compared as text, case aside): how "
             "much more often the tuned model gives that answer on their held-out items than the base model "
             "does; beside it, the same for the runs that gave the task no example (what finetuning does to that "
             "answer anyway; tasks no run left without an example are left out). Means over the run's tasks of "
             "the kind, then over runs; the difference between the two per run with its 95% t-interval, the runs "
             "where it is positive and exact p-values. A large difference means a few examples teach the model "
             "their answer, a prior over the options, more than the task: where the model is near chance, that "
             "moves a task's accuracy by how often its gold answer happens to be that one.", "",
             "| kind | runs | tasks a run | shift toward the examples' answer | without the task's examples | "
             "difference [95% CI] | positive / runs | p (sign) | p (permutation) |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = list(statistics.KINDS)
    for kind, group in sorted(table.groupby("kind"), key=lambda g: order.index(g[0]) if g[0] in order else len(order)):
        shift, control = group["share"] - group["base_share"], group["control_share"] - group["base_share"]
        w = statistics.difference_stats((shift - control).to_numpy())
        lines.append(f"| {kind} | {len(group)} | {group['tasks'].mean():.1f} | {shift.mean():+.3f} | "
                     f"{control.mean():+.3f} | {_paired_cells(w)} |")
    return lines


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The same rows in the same order: numbers equal as numbers (reading the file gives counts
    as floats), text as text."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    for c in a.columns:
        x, y = a[c].reset_index(drop=True), b[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            if not np.array_equal(x.to_numpy(float), y.to_numpy(float)):
                return False
        elif x.astype(str).tolist() != y.astype(str).tolist():
            return False
    return True


def position_lines(exp: Path, results: pd.DataFrame, strategies: list[str]) -> list[str]:
    """The option position each strategy's models favour on four-option multiple choice, from
    the runs' eval/items.jsonl (or EXP/answer_positions.csv; `answer_positions`)."""
    found = answer_positions(exp, [str(r) for r in results["run"]])
    if not len(found):
        return []
    table = found.merge(results[["run", "strategy", "budget_n"]].astype({"run": str}), on="run")
    table = table.astype({"n": int, "favourite": int, "share": float, "accuracy": float})
    letters = "ABCD"
    lines = ["", "## Answer position on four-option multiple choice", "",
             f"On the {int(table['n'].iloc[0])} held-out items with four options: the position each run's model "
             "chose most often (A = the first option; one letter per seed), the share of items it chose there and "
             "its accuracy on them (chance 0.25), mean over seeds. A model near chance that learns to favour "
             "another position moves its accuracy by the share of the gold answers at that position, whatever "
             "it learnt of the tasks.", "",
             "| strategy | budget | favourite position | share there | accuracy |", "|---|---|---|---|---|"]
    order = ["base", *strategies, "full"]
    table["rank"] = table["strategy"].map(lambda s: order.index(s) if s in order else len(order))
    for (budget_n, _, strategy), group in table.groupby(["budget_n", "rank", "strategy"], sort=True):
        favourite = ", ".join(letters[f] if f < len(letters) else str(f + 1) for f in group["favourite"])
        lines.append(f"| {strategy} | {int(budget_n)} | {favourite} | {group['share'].mean():.2f} | "
                     f"{group['accuracy'].mean():.3f} |")
    return lines
