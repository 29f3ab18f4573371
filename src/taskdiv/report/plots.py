"""The report's plots (matplotlib, headless): accuracy against budget, allocation against task
confidence, per-task gains, confidence against gain.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..common.atomic import atomic_path
from .tables import REFERENCE, _is_task_strategy, _strategies


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
    budgets = sorted(summary.loc[summary["strategy"].isin(_strategies(results)), "budget_n"].unique())
    if len(budgets) >= 3 and budgets[-1] >= 4 * budgets[0]:  # doubling budgets: evenly spaced on a log axis
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(int(b)) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("annotation budget (prompts, log scale)")
    else:
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


def plot_confidence_gain(table: pd.DataFrame, r: dict, tuned: pd.DataFrame | None = None, t: dict | None = None):
    """Each task's confidence C_t against its gain over the base model: the base model's (mean
    gain in the runs where the task got examples) and, with `tuned`, beside it the tuned model's
    in the two-round runs (one point per task and run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(table, r, "base model's task confidence C_t", "tasks",
               "gain over the base model (runs where the task got examples)")]
    if tuned is not None and len(tuned):
        panels.append((tuned, t, "round-1 model's task confidence C_t (two-round runs)", "task-runs",
                       "gain over the base model in that run"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (data, c, xlabel, unit, ylabel) in zip(axes[0], panels):
        ax.scatter(data["confidence"], data["gain"], s=14, alpha=0.7)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"Spearman rho {c['rho']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}], {c['n']} {unit}")
    fig.tight_layout()
    return fig
