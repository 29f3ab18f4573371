"""`taskdiv report EXP`: tables and plots of an experiment, the way a paper shows them.

Reads the experiment's tables (written by taskdiv.experiments):
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
live in statistics.py.

    taskdiv report results/cpu-small
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..common.atomic import output_set
from ..common.outputs import check_output_dir
from . import statistics
from .plots import _savefig, plot_accuracy, plot_allocation, plot_confidence_gain, plot_task_gains
from .sections import (_judge_lines, _mechanism_lines, _variant_lines, accuracy_lines, coverage_lines, headline,
                       kind_lines, paired_lines, position_lines, saving_lines, shift_lines)
from .tables import ALLOCATIONS, PER_TASK, _read_results, _strategies, read_table, summary_table, task_kinds


@dataclass
class ReportConfig:
    exp: str | None = field(default=None, metadata={"positional": True, "required": True,
                                                    "help": "Experiment directory (holds results.csv)."})
    compare: list[str] | None = field(default=None, metadata={
        "help": "Other experiment directories: also print the headline table of EXP and these side by side "
                "(accuracy, paired difference against random with its p-value, and the annotation saving)."})


def build_report(exp: Path) -> str:
    """EXP/report.md (returned too) and its plots, from the experiment's tables."""
    exp = Path(exp)
    results = _read_results(exp)
    check_output_dir(exp)  # report.md and the plots go beside results.csv
    per_task = read_table(exp / "per_task.csv", PER_TASK) if (exp / "per_task.csv").exists() else pd.DataFrame()
    allocations = read_table(exp / "allocations.csv", ALLOCATIONS) if (exp / "allocations.csv").exists() \
        else pd.DataFrame()
    summary = summary_table(results)
    strategies = _strategies(results)
    budgets = sorted(summary.loc[summary["strategy"].isin(strategies), "budget_n"].unique())
    labels = {int(b): summary.loc[summary["budget_n"] == b, "budget"].iloc[0] for b in budgets}

    lines = accuracy_lines(exp, results, summary, strategies, budgets, labels)
    lines += paired_lines(results, labels)
    lines += _variant_lines(results, labels)
    lines += _judge_lines(results, strategies, budgets, labels)
    lines += saving_lines(results, summary)
    lines += coverage_lines(allocations, strategies)
    kinds = task_kinds(exp) if len(per_task) else None
    lines += kind_lines(per_task, results, kinds, strategies, allocations)
    gains = statistics.task_gains(per_task, results, allocations) if len(per_task) else pd.DataFrame()
    mechanism, scatter = _mechanism_lines(exp, gains, kinds)
    lines += mechanism
    lines += position_lines(exp, results, strategies)
    lines += shift_lines(exp, results, kinds)
    plots, figures = _plots(results, summary, allocations, per_task, scatter)
    text = "\n".join(lines + plots) + "\n"
    _write_report(exp, text, figures)
    return text


def _plots(results, summary, allocations, per_task, scatter) -> tuple[list[str], dict]:
    """The plots section's lines and its figures by file name; `scatter`: confidence_gain's
    table and correlation, or None."""
    lines = ["", "## Plots", "", "![accuracy against budget](accuracy_vs_budget.png)", ""]
    figures = {"accuracy_vs_budget.png": plot_accuracy(results, summary)}
    if (fig := plot_allocation(allocations)) is not None:
        figures["allocation.png"] = fig
        lines += ["![allocation against task confidence](allocation.png)", ""]
    if (fig := plot_task_gains(per_task, results)) is not None:
        figures["task_gains.png"] = fig
        lines += ["![per-task gains over the base model](task_gains.png)", ""]
    if scatter is not None:
        figures["confidence_gain.png"] = plot_confidence_gain(*scatter)
        lines += ["![task confidence against gain" + (", base and tuned model" if len(scatter) > 2 else "")
                  + "](confidence_gain.png)", ""]
    return lines, figures


def _write_report(exp: Path, text: str, figures: dict) -> None:
    """report.md and its plots as one unit (atomic.output_set): all of them, or none."""
    import matplotlib.pyplot as plt

    try:
        with output_set(*(exp / name for name in figures), exp / "report.md") as tmps:
            for tmp, fig in zip(tmps, figures.values()):
                _savefig(fig, tmp)
            tmps[-1].write_text(text, encoding="utf-8")
    finally:
        for fig in figures.values():
            plt.close(fig)


def run_report(cfg: ReportConfig) -> None:
    text = build_report(Path(cfg.exp))
    print(text)
    print(f"wrote {Path(cfg.exp) / 'report.md'} and its plots")
    if cfg.compare:
        print("\n## Side by side\n")
        print(headline([cfg.exp, *cfg.compare]))
