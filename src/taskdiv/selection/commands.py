"""`taskdiv select` and `taskdiv pool`: load a pool, choose prompts, write the selection.

    taskdiv select POOL --budget 20% --strategy weighted-task-diversity \\
        --scores scores/scores.csv --seed 0 --out runs/sel

Writes (as one unit, only once every input has been validated; see atomic.output_set):
    OUT/selection.jsonl  id, task, prompt, response (if the pool has one), strategy,
                         seed, rank, confidence (if scored)
    OUT/allocation.csv   task, available, taken, confidence, weight, allocated
    OUT/config.yaml      the resolved options
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.atomic import output_set
from ..common.config import to_dict
from ..common.errors import TaskdivError
from ..common.outputs import check_output_dir, check_output_file
from ..common.writers import dump_jsonl, dump_table, dump_yaml, write_jsonl, write_table
from ..engines.models import DEFAULT_ENCODER
from ..pool.container import Pool
from ..pool.fields import PoolOptions
from ..pool.load import load_pool
from ..pool.readers import EXCLUDE_HELP, excluded
from .allocation import check_task_limits, parse_budget
from .scores import read_score_file, read_scores
from .strategies import STRATEGIES, TASK_PARAMETERS, WITHIN, Inputs, get_strategy

log = logging.getLogger(__name__)


@dataclass
class SelectConfig(PoolOptions):
    budget: str | None = field(default=None, metadata={
        "help": "Prompts to annotate: a count (500) or a percentage of the pool (20%). "
                "Optional for --strategy full."})
    strategy: str = field(default="weighted-task-diversity", metadata={
        "help": f"Selection strategy: {', '.join(STRATEGIES)}."})
    scores: str | None = field(default=None, metadata={
        "help": "Prompt confidences (CSV/Parquet with id, confidence), e.g. from `taskdiv score`."})
    seed: int = field(default=0, metadata={"help": "Seed for every random choice."})
    within: str = field(default="random", metadata={
        "choices": list(WITHIN), "help": "How task strategies pick prompts inside a task."})
    min_per_task: int = field(default=0, metadata={"help": "Task strategies: at least this many prompts per task."})
    max_per_task: int | None = field(default=None, metadata={"help": "Task strategies: at most this many per task."})
    exclude: str | None = field(default=None, metadata={
        "help": "Ids already annotated: never chosen again, and counted as taken by the allocation. "
                + EXCLUDE_HELP})
    tasks: str | None = field(default=None, metadata={
        "help": "'auto' or 'auto:K': cluster prompt embeddings into K pseudo-tasks and use them "
                "as task labels (default K = clamp(round(sqrt(N/2)), 2, 100))."})
    embedding_model: str = field(default=DEFAULT_ENCODER, metadata={
        "help": "sentence-transformers model for k-center and --tasks auto."})
    engine: str = field(default="local", metadata={
        "choices": ["local", "ray"],
        "help": "Where missing embeddings are computed: this process, or sentence-transformers actors on a "
                "Ray cluster ($RAY_ADDRESS, else a local one; needs taskdiv[ray])."})
    out: str | None = field(default=None, metadata={"required": True, "help": "Output directory."})


def parse_tasks_option(value: str | None) -> tuple[bool, int | None]:
    """'auto' -> (True, None); 'auto:12' -> (True, 12); None -> (False, None)."""
    if value is None:
        return False, None
    kind, _, k = value.partition(":")
    if kind != "auto":
        raise TaskdivError(f"--tasks {value!r}: expected 'auto' or 'auto:K'")
    try:
        return True, (int(k) if k else None)
    except ValueError:
        raise TaskdivError(f"--tasks {value!r}: K must be a whole number") from None


def task_parameters(cfg) -> dict:
    """The task-strategy options (within, min_per_task, max_per_task) that `cfg` sets to other
    than their defaults; `get_strategy` refuses them for a strategy that is not a task strategy."""
    defaults = {f.name: f.default for f in fields(SelectConfig)}
    return {k: getattr(cfg, k) for k in TASK_PARAMETERS if getattr(cfg, k) != defaults[k]}


def prepare_inputs(pool: Pool, strategy, cfg: SelectConfig, *, embeddings=None, scores=None,
                   exclude=None) -> Inputs:
    """Confidence, embeddings and exclusion mask aligned with the pool's rows.
    `scores`: cfg.scores as read_score_file read it already; `exclude`: ids in place of cfg.exclude."""
    inputs = Inputs()
    if cfg.scores or scores is not None:
        inputs.confidence = read_scores(cfg.scores, pool, scores)
        log.info("scores: %d of %d prompts scored", int(np.isfinite(inputs.confidence).sum()), len(pool))
    if "embeddings" in strategy.needs:
        inputs.embeddings = embeddings if embeddings is not None else _embed(pool, cfg.embedding_model,
                                                                             getattr(cfg, "engine", "local"))
    if exclude is not None or cfg.exclude:
        inputs.excluded = excluded(pool, exclude if exclude is not None else cfg.exclude)
    return inputs


def _embed(pool: Pool, model: str, engine: str = "local") -> np.ndarray:
    from .embeddings import embed

    return embed(pool.frame["prompt"].tolist(), model, engine=engine)


def select(cfg: SelectConfig, pool: Pool | None = None, scores=None,
           exclude=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run a selection; returns (selection rows, allocation table) without writing.

    `pool`: the pool cfg.pool names, if the caller has loaded it already (an experiment
    selects from one pool many times); it is not modified. `scores`: cfg.scores already
    read (`data.score_table`; the Python API's DataFrame of scores). `exclude`: the ids to
    exclude, in place of cfg.exclude's file (the Python API's list).
    """
    auto, k = parse_tasks_option(cfg.tasks)
    strategy = get_strategy(cfg.strategy, seed=cfg.seed, **task_parameters(cfg))
    check_task_limits(cfg.min_per_task, cfg.max_per_task)
    strategy.check_needs({"confidence"} if cfg.scores or scores is not None else set(),
                         among={"confidence"})  # before loading anything
    if pool is None:
        # The scores file is read (and its values checked) in a second thread while the pool
        # loads: Arrow's readers let go of the GIL. A bad pool is still reported first.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskdiv-scores") as helper:
            reading = helper.submit(read_score_file, cfg.scores) if cfg.scores else None
            pool = load_pool(cfg.pool, cfg.field_map(), require_tasks=not auto)
            scores = reading.result() if reading else scores
    embeddings = None
    if auto:
        from .embeddings import cluster_tasks

        embeddings = _embed(pool, cfg.embedding_model, getattr(cfg, "engine", "local"))
        by_id = np.argsort(pool.ranks(), kind="stable")  # clusters that do not depend on the rows' order
        pool = Pool(pool.frame.assign(task=cluster_tasks(embeddings, k, seed=cfg.seed, order=by_id)), pool.source,
                    id_rank=pool.id_rank)
    budget = len(pool) if cfg.budget is None and cfg.strategy == "full" else None
    if budget is None:
        if cfg.budget is None:
            raise TaskdivError("missing --budget (a count such as 500, or a percentage such as 20%)")
        budget = parse_budget(cfg.budget, len(pool))
    inputs = prepare_inputs(pool, strategy, cfg, embeddings=embeddings, scores=scores, exclude=exclude)
    if cfg.strategy == "full" and inputs.excluded is not None and cfg.budget is None:
        budget = int((~inputs.excluded).sum())
    result = strategy.select(pool, budget, inputs)

    # Only the output's columns are gathered (a pool may also hold choices and targets).
    rows = pool.rows(result.positions, [c for c in ("id", "task", "prompt", "response") if c in pool.frame.columns])
    rows["strategy"] = cfg.strategy
    rows["seed"] = cfg.seed
    rows["rank"] = np.arange(1, len(rows) + 1)
    if inputs.confidence is not None:
        rows["confidence"] = inputs.confidence[result.positions]
    allocation = result.allocation
    if allocation is None:
        allocation = _counts_table(pool, rows, inputs)
    return rows, allocation


def _counts_table(pool: Pool, rows: pd.DataFrame, inputs: Inputs) -> pd.DataFrame:
    """The allocation a non-task strategy ended up with, in the same table shape."""
    frame = pool.frame.assign(confidence=inputs.confidence if inputs.confidence is not None else np.nan,
                              excluded=inputs.excluded if inputs.excluded is not None else False)
    grouped = frame.groupby("task", sort=True)
    table = pd.DataFrame({"available": grouped.size() - grouped["excluded"].sum(),
                          "taken": grouped["excluded"].sum(), "confidence": grouped["confidence"].mean()})
    table["weight"] = np.nan
    table["allocated"] = rows["task"].value_counts().reindex(table.index).fillna(0).astype(int)
    return table.reset_index()


# selection.jsonl last: it is the marker of a finished selection (`taskdiv experiment`
# resumes past a run whose selection.jsonl exists).
OUTPUTS = ("allocation.csv", "config.yaml", "selection.jsonl")


def write_selection(out: str | Path, rows: pd.DataFrame, allocation: pd.DataFrame, cfg) -> None:
    """The three files as one unit: a failure or Ctrl-C leaves OUT as it was."""
    out = Path(out)
    with output_set(*(out / name for name in OUTPUTS)) as (alloc_tmp, config_tmp, selection_tmp), \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskdiv-write") as helper:
        # The allocation table is formatted while Arrow writes the selection (100K tasks and
        # 500K prompts: each about 0.3 s).
        table = helper.submit(dump_table, alloc_tmp, allocation, ".csv")
        dump_yaml(config_tmp, {"command": "select", **(cfg if isinstance(cfg, dict) else to_dict(cfg))})
        dump_jsonl(selection_tmp, rows)
        table.result()


def format_allocation(allocation: pd.DataFrame, max_rows: int = 60) -> str:
    table = allocation.copy()
    table["confidence"] = table["confidence"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    table["weight"] = table["weight"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    table = table.sort_values(["allocated", "task"], ascending=[False, True])
    cols = ["task", "available", "confidence", "weight", "allocated"]
    if table["taken"].any():
        cols.insert(2, "taken")
    text = table[cols].head(max_rows).to_string(index=False)
    if len(table) > max_rows:
        text += f"\n... {len(table) - max_rows} more task(s) in allocation.csv"
    return text + f"\ntotal: {int(table['allocated'].sum())} prompt(s) from {int((table['allocated'] > 0).sum())} " \
                  f"of {len(table)} task(s)"


def run_select(cfg: SelectConfig) -> None:
    check_output_dir(cfg.out, OUTPUTS, inputs=[cfg.pool, cfg.scores, cfg.exclude])
    rows, allocation = select(cfg)
    write_selection(cfg.out, rows, allocation, cfg)
    print(format_allocation(allocation))
    print(f"wrote {len(rows)} prompt(s) to {Path(cfg.out) / 'selection.jsonl'}")


# ----------------------------------------------------------------------------- taskdiv pool


@dataclass
class PoolInfoConfig(PoolOptions):
    pass


@dataclass
class PoolExportConfig(PoolOptions):
    out: str | None = field(default=None, metadata={"required": True,
                                                    "help": "Output file (.jsonl or .parquet)."})


def run_pool_info(cfg: PoolInfoConfig) -> None:
    pool = load_pool(cfg.pool, cfg.field_map(), require_tasks=False)
    print(f"pool: {pool.source}")
    responses = int(pool.frame["response"].notna().sum()) if "response" in pool.frame else 0
    tasks = len(pool.task_sizes()) if pool.has_tasks else "none (no task field; `taskdiv select --tasks auto` " \
                                                           "clusters prompts into tasks)"
    print(f"prompts: {len(pool)}  tasks: {tasks}  with reference response: {responses}")
    lengths = pool.frame["prompt"].str.len()
    print(f"prompt length (characters): median {int(lengths.median())}, max {int(lengths.max())}")
    if pool.has_tasks:
        print(pool.task_sizes().rename("prompts").to_frame().to_string())


def run_pool_export(cfg: PoolExportConfig) -> None:
    out = Path(cfg.out)
    check_output_file(out, inputs=[cfg.pool])
    pool = load_pool(cfg.pool, cfg.field_map(), require_tasks=False)
    if out.suffix == ".parquet":
        write_table(out, pool.frame)
    elif out.suffix == ".jsonl":
        write_jsonl(out, pool.frame.to_dict(orient="records"))
    else:
        raise TaskdivError(f"{out}: export to .jsonl or .parquet")
    print(f"wrote {len(pool)} prompt(s) to {out}")


@dataclass
class PoolSplitConfig(PoolOptions):
    test_per_task: float = field(default=0.2, metadata={
        "help": "Held-out items per task: a whole count (10) or a fraction (0.2); never more than half a task."})
    seed: int = field(default=0, metadata={"help": "Seed of the split."})
    out: str | None = field(default=None, metadata={
        "required": True, "help": "Output directory: pool.jsonl (to select from) and test.jsonl (for "
                                  "`evaluate --heldout`)."})


def split_pool(pool: Pool, test_per_task: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool part, held-out part) of a pool by the rule every built-in source uses
    (`taskdiv.pool.splits`: keyed on the prompt and the response; a copy of a held-out item in
    another task is in neither part). The held-out rows get `targets` = [response] where
    they have a response and no targets, so that `evaluate --heldout` can score them."""
    from ..pool.splits import SplitOptions, split_key, split_pool_and_test

    frame = pool.frame
    responses = frame["response"].fillna("").astype(str) if "response" in frame else pd.Series("", index=frame.index)
    keyed = frame.assign(_key=[split_key(p, r) for p, r in zip(frame["prompt"], responses)])
    tasks = {t: g for t, g in keyed.groupby("task", sort=True)}
    pool_part, test_part = split_pool_and_test(tasks, SplitOptions(test=test_per_task, seed=seed), where=pool.source)
    kept = frame[frame["id"].isin(set(pool_part["id"])).to_numpy()].reset_index(drop=True)
    test = frame[frame["id"].isin(set(test_part["id"])).to_numpy()].reset_index(drop=True)
    if "response" in test:
        if "targets" not in test:
            test["targets"] = None
        fill = test["targets"].isna() & test["response"].notna()
        test.loc[fill, "targets"] = pd.Series([[r] for r in test.loc[fill, "response"]], index=test.index[fill],
                                              dtype=object)
    return kept, test


def run_pool_split(cfg: PoolSplitConfig) -> None:
    out = check_output_dir(cfg.out, ("pool.jsonl", "test.jsonl"), inputs=[cfg.pool])
    pool = load_pool(cfg.pool, cfg.field_map())
    kept, test = split_pool(pool, cfg.test_per_task, cfg.seed)
    with output_set(out / "pool.jsonl", out / "test.jsonl") as (pool_tmp, test_tmp):
        dump_jsonl(pool_tmp, kept)
        dump_jsonl(test_tmp, test)
    print(f"wrote {len(kept)} prompt(s) to {out / 'pool.jsonl'} and {len(test)} held-out item(s) of "
          f"{test['task'].nunique() if len(test) else 0} task(s) to {out / 'test.jsonl'}")
