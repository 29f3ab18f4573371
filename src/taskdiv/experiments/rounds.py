"""Annotation in two rounds: spend part of the budget, train on it, re-score with the tuned
model, spend the rest where the tuned model is unsure.

    round 1  select `share` of the budget with `first` (task-diversity): every task its turn
             annotate it, train a model on it
    re-score the rest of the pool (the prompts round 1 did not take), a per-task sample of
             `rescore_per_task`, with the round-1 model: the tuned model's task confidence
    round 2  select the remainder with `second` (weighted-task-diversity) on those
             confidences, excluding round 1's prompts
    final    the selection is both rounds; the caller annotates it and trains the final model

The experiment strategy `two-round` (configs: `two_round: {share, first, second,
rescore_per_task}`) runs this inside `taskdiv experiment`; users run the same steps with
the CLI (README, "Annotation in rounds"). Every step writes under OUT/round1 and
OUT/round2 and is skipped when its output exists, so a killed run resumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..common.errors import TaskdivError

log = logging.getLogger(__name__)


@dataclass
class TwoRoundOptions:
    share: float = field(default=0.5, metadata={"help": "Share of the budget spent in round 1, in (0, 1)."})
    first: str = field(default="task-diversity", metadata={"help": "Round 1's strategy (needs no scores)."})
    second: str = field(default="weighted-task-diversity", metadata={
        "help": "Round 2's strategy, on the round-1 model's confidences."})
    rescore_per_task: int = field(default=16, metadata={
        "help": "Prompts per task the round-1 model scores (of those round 1 did not take)."})

    def check(self, where: str = "two_round") -> None:
        from ..selection.strategies import STRATEGIES, get_strategy

        if not 0 < self.share < 1:
            raise TaskdivError(f"{where}.share={self.share} must be in (0, 1)")
        if self.rescore_per_task < 1:
            raise TaskdivError(f"{where}.rescore_per_task={self.rescore_per_task} must be at least 1")
        for key in ("first", "second"):
            name = getattr(self, key)
            if name not in STRATEGIES or name in ("full", "two-round"):
                raise TaskdivError(f"{where}.{key}: {name!r} is not a selection strategy "
                                   f"({', '.join(s for s in STRATEGIES if s != 'full')})")
        if "confidence" in get_strategy(self.first).needs:
            raise TaskdivError(f"{where}.first: {self.first} needs confidences, and round 1 has none of its own "
                               f"(the point of round 2 is the tuned model's)")

    def split(self, budget: int) -> tuple[int, int]:
        """(round 1's prompts, round 2's): at least one each."""
        if budget < 2:
            raise TaskdivError(f"two rounds need a budget of at least 2 prompts, not {budget}")
        first = min(budget - 1, max(1, round(self.share * budget)))
        return first, budget - first


@dataclass
class Steps:
    """What a round does with the stages, given by the caller (an experiment, a script)."""
    select: Callable    # (strategy, budget, out, scores|None, exclude|None) -> None; writes out/selection.jsonl
    annotate: Callable  # (selection.jsonl, data.jsonl) -> None
    train: Callable     # (data.jsonl, run dir) -> None
    score: Callable     # (model, out, per_task, exclude) -> None; scores the pool but `exclude`'s ids


def select_two_rounds(options: TwoRoundOptions, budget: int, pool, out: Path, steps: Steps) -> tuple[pd.DataFrame,
                                                                                                     pd.DataFrame]:
    """Both rounds' selection rows (round 1's first, ranks running on, a `round` column) and
    the allocation (per task: both rounds' counts; confidence and weight: round 2's)."""
    from ..common.inputs import iter_jsonl

    options.check()
    n1, n2 = options.split(budget)
    r1, r2 = out / "round1", out / "round2"
    sel1 = r1 / "selection"
    if not (sel1 / "selection.jsonl").exists():
        log.info("round 1: %d of %d prompts with %s", n1, budget, options.first)
        steps.select(options.first, n1, sel1, None, None)
    if not (r1 / "data.jsonl").exists():
        steps.annotate(sel1 / "selection.jsonl", r1 / "data.jsonl")
    if not (r1 / "train" / "done").exists():
        steps.train(r1 / "data.jsonl", r1 / "train")
    if not (r1 / "scores" / "scores.csv").exists():
        log.info("re-scoring up to %d prompts per task of the %d round 1 left with the round-1 model",
                 options.rescore_per_task, len(pool) - n1)
        steps.score(r1 / "train", r1 / "scores", options.rescore_per_task, sel1 / "selection.jsonl")
    if not (r2 / "selection.jsonl").exists():
        log.info("round 2: %d prompts with %s on the tuned model's confidences", n2, options.second)
        steps.select(options.second, n2, r2, r1 / "scores" / "scores.csv", sel1 / "selection.jsonl")
    first = pd.DataFrame([row for _, row in iter_jsonl(sel1 / "selection.jsonl")]).assign(round=1)
    second = pd.DataFrame([row for _, row in iter_jsonl(r2 / "selection.jsonl")]).assign(round=2)
    rows = pd.concat([first, second], ignore_index=True)
    rows["strategy"] = "two-round"
    rows["rank"] = range(1, len(rows) + 1)
    a1 = pd.read_csv(sel1 / "allocation.csv").set_index("task")
    a2 = pd.read_csv(r2 / "allocation.csv").set_index("task")
    allocation = pd.DataFrame({"available": a1["available"], "taken": 0,
                               "confidence": a2["confidence"].reindex(a1.index),
                               "weight": a2["weight"].reindex(a1.index),
                               "allocated": a1["allocated"] + a2["allocated"].reindex(a1.index).fillna(0).astype(int),
                               "round1": a1["allocated"],
                               "round2": a2["allocated"].reindex(a1.index).fillna(0).astype(int)})
    return rows, allocation.reset_index()
