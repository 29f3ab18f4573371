"""EXP's tables from its finished runs: each run's result.json read and checked, and
results.csv, per_task.csv and allocations.csv rebuilt from the run directories.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common.atomic import output_set
from ..common.errors import DataError
from ..common.inputs import read_csv
from ..common.writers import dump_table
from .grid import Run

# What a run's result.json (and so a row of results.csv) holds, as `report` reads it: the keys
# every row has, and the kind of each number (a share in [0, 1], a whole count, seconds).
RESULT_REQUIRED = ("run", "strategy", "budget", "budget_n", "seed", "accuracy")
RESULT_NUMBERS = {"accuracy": "share", "ci_low": "share", "ci_high": "share", "budget_n": "count", "seed": "count",
                  "n_test": "count", "seconds": "time", "train_seconds": "time", "eval_seconds": "time"}


def read_result(path: Path) -> dict:
    """A finished run's result.json, checked (`check_result`): a tampered or damaged one is an
    error naming the file and field, not a row of results.csv."""
    from ..common.inputs import read_json_document

    record = read_json_document(path, kind="result file")
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", file=path)
    return check_result(record, path)


def check_result(record: dict, file, row: int | None = None) -> dict:
    """`record` if each field a report reads holds what it should: accuracies (and their
    intervals, and every SUITE_accuracy) finite numbers in [0, 1], budget_n, seed and n_test
    whole numbers from 0, seconds from 0; else a DataError naming file, row and field."""
    import math
    import numbers

    for key in RESULT_REQUIRED:
        if key not in record or record[key] is None or record[key] == "":
            raise DataError("missing", file=file, row=row, field=key)
    for key, value in record.items():
        kind = "share" if str(key).endswith("_accuracy") else RESULT_NUMBERS.get(key)
        if kind is None or (key not in RESULT_REQUIRED and (value is None or value == "" or value != value)):
            continue  # not a number field, or an optional one left empty (train_seconds of the base model)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise DataError(f"{value!r} is not a {'finite ' if isinstance(value, numbers.Real) else ''}number",
                            file=file, row=row, field=str(key))
        if kind == "share" and not 0 <= value <= 1:
            raise DataError(f"{value!r} is not in [0, 1]", file=file, row=row, field=str(key))
        if kind == "count" and (value < 0 or value != int(value)):
            raise DataError(f"{value!r} is not a whole number from 0", file=file, row=row, field=str(key))
        if kind == "time" and value < 0:
            raise DataError(f"{value!r} seconds is negative", file=file, row=row, field=str(key))
    return record


def collate(out: Path, runs: list[Run]) -> pd.DataFrame:
    """Rebuild EXP/results.csv, per_task.csv and allocations.csv from the finished runs among
    `runs` (those with a `done` marker), replaced as one unit; returns the results table."""
    results, per_task, allocations = [], [], []
    # Every run's allocation gets the task confidences, also where its strategy did not use them
    # (random, task-diversity), so the report can set the allocations side by side.
    tasks_csv = out / "scores" / "tasks.csv"
    task_conf = read_csv(tasks_csv, neutralised=True).set_index("task")["confidence"] if tasks_csv.exists() \
        else None
    for r in runs:
        d = out / "runs" / r.id
        if not (d / "done").exists():
            continue
        results.append(read_result(d / "result.json"))
        tasks = read_csv(d / "eval" / "per_task.csv", neutralised=True)
        tasks = tasks[tasks["task"] != "macro"]
        per_task.append(tasks.assign(run=r.id)[["run", "task", "n", "accuracy"]])
        alloc_path = d / "selection" / "allocation.csv"
        if alloc_path.exists():
            alloc = read_csv(alloc_path, neutralised=True)
            if task_conf is not None:
                alloc["confidence"] = alloc["confidence"].fillna(alloc["task"].map(task_conf))
            allocations.append(alloc.assign(run=r.id, strategy=r.strategy, budget=r.budget,
                                            budget_n=r.budget_n, seed=r.seed)
                               [["run", "strategy", "budget", "budget_n", "seed", "task", "allocated",
                                 "confidence"]])
    table = pd.DataFrame(results)
    tables = {}
    if len(table):
        tables.update({"results.csv": table, "per_task.csv": pd.concat(per_task, ignore_index=True)})
    if allocations:
        tables["allocations.csv"] = pd.concat(allocations, ignore_index=True)
    if tables:  # replaced together: the three tables always describe the same runs
        with output_set(*(out / name for name in tables)) as temps:
            for temp, frame in zip(temps, tables.values()):
                dump_table(temp, frame, ".csv")
    return table
