"""taskdiv's Python API: the calls a notebook needs, each the same code the CLI runs.

    >>> import taskdiv
    >>> pool = taskdiv.load_pool([{"prompt": "2 + 2 =", "task": "math"},
    ...                           {"prompt": "Capital of France?", "task": "facts"}])
    >>> len(pool), sorted(pool.task_sizes().index)
    (2, ['facts', 'math'])

`load_pool` validates exactly as `taskdiv pool info` does (errors name the row and the
field); `score` returns the scores and the task table as DataFrames and shares the score
cache with the CLI ($TASKDIV_CACHE/scores); `select` takes its confidences from a
DataFrame, a file or a column of the pool; `allocate` is the pure allocation behind the
task strategies.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from .common.errors import DataError, TaskdivError
from .pool.container import Pool, arrow_to_pandas
from .pool.fields import FieldMap
from .pool.load import load_pool as _load_spec
from .pool.load import pool_from_frame
from .pool.readers import split_exclude
from .selection.allocation import allocate as _allocate
from .selection.scores import score_table

__all__ = ["load_pool", "score", "select", "allocate", "train", "evaluate", "experiment", "write_report", "Pool",
           "TaskdivError", "DataError"]


def load_pool(source, *, id_field: str = "id", prompt_field: str = "prompt", task_field: str = "task",
              response_field: str = "response", prompt_template: str | None = None,
              require_tasks: bool = True) -> Pool:
    """A validated pool from a path or pool spec, a pandas DataFrame, a `datasets.Dataset`,
    or a list of dicts.

    Every source goes through the CLI's checks: a missing or empty prompt or task, a
    duplicate id or a mistyped field is a `TaskdivError` naming the row and the field.
    Ids are generated (a stable hash of task and prompt) where there are none. Field
    names map as the CLI's `--prompt-field` etc.; Alpaca and chat shapes are recognised.

    Sources: "prompts.jsonl" (JSONL, JSON, CSV, Parquet), a `save_to_disk` directory,
    "hf:NAME?split=S", a benchmark preset ("bench:demo", "mmlu:anatomy"); or rows in memory.

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"id": ["a", "b", "c"], "question": ["Why?", "How?", "When?"],
    ...                       "category": ["open_qa", "open_qa", "brainstorm"]})
    >>> pool = load_pool(frame, prompt_field="question", task_field="category")
    >>> pool.task_sizes().to_dict()
    {'brainstorm': 1, 'open_qa': 2}
    >>> load_pool([{"id": "x", "prompt": "p", "task": "t"}, {"id": "x", "prompt": "q", "task": "t"}])
    Traceback (most recent call last):
    ...
    taskdiv.common.errors.DataError: list, row 1, field 'id': duplicate id 'x' (also at row 2; 1 duplicate id(s) in all)
    """
    fields = FieldMap(id_field=id_field, prompt_field=prompt_field, task_field=task_field,
                      response_field=response_field, prompt_template=prompt_template)
    if isinstance(source, Pool):
        return source
    if isinstance(source, (str, Path)):
        return _load_spec(str(source), fields, require_tasks=require_tasks)
    if isinstance(source, pd.DataFrame):
        return pool_from_frame(source, fields, source="DataFrame", require_tasks=require_tasks)
    if isinstance(source, list):
        if not all(isinstance(r, dict) for r in source):
            raise TaskdivError("a list pool holds one dict per prompt")
        return pool_from_frame(pd.DataFrame(source), fields, source="list", require_tasks=require_tasks)
    kind = type(source).__name__
    if kind == "DatasetDict":
        raise TaskdivError(f"a DatasetDict holds several splits ({', '.join(source)}); pass one of them, "
                           f"e.g. dataset[{next(iter(source))!r}]")
    if kind == "Dataset" and hasattr(source, "with_format"):
        return pool_from_frame(arrow_to_pandas(source.with_format("arrow")[:]), fields, source="Dataset",
                               require_tasks=require_tasks)
    raise TaskdivError(f"cannot read a pool from a {kind}: pass a path or pool spec, a DataFrame, a "
                       f"datasets.Dataset or a list of dicts")


def score(pool, *, model: str = "gemma-3-270m", per_task: int | None = None, max_new_tokens: int = 32,
          seed: int = 0, out: str | Path | None = None, exclude=None, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The base model's confidence on each prompt (or a seeded sample of `per_task` per task),
    and per task: `(scores, tasks)`, as `taskdiv score` writes them to scores.csv and tasks.csv.

    `pool`: anything `load_pool` reads. `model`: an embedded name (gemma-3-270m,
    smollm2-135m-instruct), a local directory, a `taskdiv train` run, or a hub id. Other
    options are `taskdiv score`'s (dtype, batch_size, metric, target_ci, chat_template, ...).
    `exclude`: ids not to score (a list, or a file: an earlier round's selection or store, as
    `select` takes). `out`: where the files go (default: a temporary directory, removed after). Scores are
    cached in $TASKDIV_CACHE/scores, keyed by the model's content hash and the settings:
    scoring the same prompts again generates nothing (`scores.attrs["reused"]`).

    >>> scores, tasks = score([{"prompt": "2 + 2 =", "task": "math"}, {"prompt": "Hi!", "task": "chat"}],
    ...                       model="smollm2-135m-instruct", max_new_tokens=2)
    >>> list(tasks.columns)
    ['task', 'available', 'scored', 'confidence', 'sd', 'ci_low', 'ci_high']
    >>> bool(scores["confidence"].between(0, 1).all()), len(scores)
    (True, 2)
    """
    from .common.config import build
    from .scoring.commands import ScoreConfig, _score

    loaded = load_pool(pool)
    file, ids = split_exclude(exclude)
    with tempfile.TemporaryDirectory(prefix="taskdiv-score-") as tmp:
        target = Path(out) if out is not None else Path(tmp)
        cfg = build(ScoreConfig, {"pool": loaded.source if isinstance(pool, (str, Path)) else f"<{loaded.source}>",
                                  "model": str(model), "per_task": per_task, "max_new_tokens": max_new_tokens,
                                  "seed": seed, "out": str(target), "exclude": file, **options})
        return _score(cfg, pool=loaded, exclude=ids)


def select(pool, budget, *, strategy: str = "weighted-task-diversity", scores=None, seed: int = 0,
           exclude=None, **params):
    """Which prompts to annotate: `(selection, allocation)` as DataFrames, as `taskdiv select`
    writes them to selection.jsonl and allocation.csv (Datasets when `pool` is one).

    `budget`: a count (500) or a share of the pool ("20%"). `strategy`: random,
    task-diversity, weighted-task-diversity (the default; needs scores), proportional,
    k-center, uncertainty, ... `scores`: a DataFrame with `id` and `confidence` (what
    `score` returns), a path to a scores file, or the name of a column of the pool.
    `exclude`: ids already annotated (a list, or a file). Other parameters: `within`,
    `min_per_task`, `max_per_task`.

    >>> rows = [{"id": f"{t}{i}", "prompt": f"question {i} of {t}", "task": t}
    ...         for t, n in (("a", 2), ("b", 6), ("c", 10)) for i in range(n)]
    >>> confidence = pd.DataFrame({"id": [r["id"] for r in rows],
    ...                            "confidence": [{"a": 0.9, "b": 0.3, "c": 0.2}[r["task"]] for r in rows]})
    >>> chosen, allocation = select(rows, 10, scores=confidence, seed=0)
    >>> allocation.set_index("task")["allocated"].to_dict()
    {'a': 1, 'b': 4, 'c': 5}
    >>> len(chosen), list(chosen.columns[:3])
    (10, ['id', 'task', 'prompt'])
    >>> select(rows, 10, strategy="task-diversity")[1].set_index("task")["allocated"].to_dict()
    {'a': 2, 'b': 4, 'c': 4}
    """
    from .selection.commands import SelectConfig
    from .selection.commands import select as _select

    loaded = load_pool(pool)
    table = None
    path = None
    if isinstance(scores, pd.DataFrame):
        table = score_table(scores, "scores DataFrame")
    elif isinstance(scores, str) and scores in _columns(pool):
        # A column of the rows given (empty where a prompt was not scored); the pool keeps their order.
        values = pd.Series(_column(pool, scores), dtype=float).to_numpy()
        column = pd.DataFrame({"id": loaded.frame["id"].to_numpy(), "confidence": values})
        table = score_table(column[column["confidence"].notna()], f"pool column {scores!r}")
    elif scores is not None:
        path = str(scores)
    file, ids = split_exclude(exclude)
    with tempfile.TemporaryDirectory(prefix="taskdiv-select-") as tmp:
        cfg = SelectConfig(pool=loaded.source, budget=str(budget), strategy=strategy, scores=path, seed=seed,
                           exclude=file, out=tmp, **params)
        chosen, allocation = _select(cfg, pool=loaded, scores=table, exclude=ids)
    if type(pool).__name__ == "Dataset":
        import datasets

        return (datasets.Dataset.from_pandas(chosen, preserve_index=False),
                datasets.Dataset.from_pandas(allocation, preserve_index=False))
    return chosen, allocation


def _columns(source) -> list[str]:
    if isinstance(source, pd.DataFrame):
        return list(source.columns)
    if isinstance(source, list):
        return sorted({k for row in source if isinstance(row, dict) for k in row})
    return list(getattr(source, "column_names", []) or [])


def _column(source, name: str) -> list:
    if isinstance(source, pd.DataFrame):
        return source[name].tolist()
    if isinstance(source, list):
        return [row.get(name) for row in source]
    return list(source[name])


def allocate(sizes, budget: int, *, weights=None, floor: int = 0, ceilings=None, taken=None, seed: int = 0):
    """Prompts per task: `b_t = min(n_t, lam * w_t)` with `sum b_t = budget` (water-filling;
    even when `weights` is None, TaskDiversity; `1 / C_t` for WeightedTaskDiversity),
    rounded to whole prompts by largest remainder, ties broken by `seed`.

    `sizes`: prompts per task (n_t); `floor`/`ceilings`: at least / at most per task;
    `taken`: per task, prompts annotated in earlier rounds (counted in the result).

    >>> allocate([2, 6, 10], 10).tolist()
    [2, 4, 4]
    >>> allocate([2, 6, 10], 10, weights=[1 / 0.9, 1 / 0.3, 1 / 0.2]).tolist()
    [1, 4, 5]
    """
    return _allocate(sizes, budget, weights=weights, floor=floor, ceilings=ceilings, taken=taken, seed=seed)


def train(data, *, out: str | Path, model: str = "gemma-3-270m", seed: int = 0, **options) -> Path:
    """Finetune `model` on prompt/response `data` into the run directory `out`, as `taskdiv
    train` does; returns `out` (its `adapter/`, and `merged/` with `merge=True`).

    `data`: a path or pool spec (an annotated selection.jsonl, an annotation store), or rows
    in memory (a DataFrame, a `datasets.Dataset`, a list of dicts) with `prompt` and
    `response` (`id` and `task` optional). Other options are `taskdiv train`'s (method,
    epochs, lr, batch_size, grad_accum, max_length, merge, ...). A run interrupted, or
    called again with the same data and options, resumes or returns at once; another
    model or other options on the same `out` are refused.
    """
    from .common.config import build
    from .training import TrainConfig
    from .training import train as _train

    params = {"model": str(model), "out": str(out), "seed": seed, **options}
    if isinstance(data, (str, Path)):
        return _train(build(TrainConfig, {"data": str(data), **params}))
    rows = load_pool(data, require_tasks=False)  # the CLI's checks, errors naming the row
    return _train(build(TrainConfig, {"data": f"<{rows.source}>", **params}), examples=rows.frame)


def evaluate(model: str | Path, *, out: str | Path, suite: str = "heldout", heldout: str | None = None,
             **options) -> dict:
    """Evaluate `model` (an embedded name, a local directory, a `train` run, a hub id) on
    `suite` as `taskdiv evaluate` does; writes results.json and per_task.csv into `out` and
    returns the results: `macro` (accuracy with its 95% interval, n) and `tasks` (per task).

    `heldout`: the held-out items with their `targets` (and `choices` for multiple choice),
    suite "heldout": a pool spec or file (default the held-out part of the demo slice,
    `bench:demo?split=test`), or rows in memory (a DataFrame, a `datasets.Dataset`, a list
    of dicts), checked, then kept as `out`/heldout.jsonl. Other options are `taskdiv
    evaluate`'s (limit, batch_size, dtype, n_boot, ...).
    """
    from .common.config import build
    from .common.writers import write_jsonl
    from .evaluation.commands import EvalConfig
    from .evaluation.commands import evaluate as _evaluate
    from .evaluation.heldout import check_heldout

    params = {"model": str(model), "out": str(out), "suite": suite, **options}
    if isinstance(heldout, (str, Path)):
        params["heldout"] = str(heldout)
    elif heldout is not None:  # checked before anything is written; the file's hash keys the results
        rows = load_pool(heldout)
        check_heldout(rows.frame, rows.source)
        params["heldout"] = str(Path(out) / "heldout.jsonl")
        write_jsonl(params["heldout"], rows.frame)
    results = _evaluate(build(EvalConfig, params))
    results.pop("table", None)
    return results


def experiment(config: str | Path, *, out: str | Path) -> pd.DataFrame:
    """Run (or resume) the experiment grid of `config` (a YAML file, e.g.
    configs/cpu-small.yaml) into `out`, as `taskdiv experiment` does; returns results.csv's
    table, one row per finished run. `write_report(out)` then compares the strategies."""
    from .experiments.grid import load_config
    from .experiments.runner import Experiment

    return Experiment(load_config(str(config)), str(out)).run()


def write_report(exp: str | Path) -> str:
    """`exp`/report.md (returned) and its plots, from a finished or partial experiment's tables,
    as `taskdiv report` does: accuracy by strategy and budget, paired differences with exact
    p-values, the annotation saving, coverage, and whether confidence predicts gain. (Not
    `taskdiv.report`: that name is the package's subpackage.)"""
    from .report.commands import build_report

    return build_report(Path(exp))
