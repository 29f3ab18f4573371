"""The experiment's grid: its YAML schema (`ExperimentConfig`), the runs it names
(strategies x budgets x seeds, plus the `full` and `base` reference rows) and their checks.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..common import config as configmod
from ..common.errors import DataError, TaskdivError, unknown_name

log = logging.getLogger(__name__)


# For --dry-run estimates: seconds per training example-epoch and per held-out item, linear in
# the mean length of the prompts (characters; responses included for training), for SmolLM2-135M,
# LoRA, bf16 on 2 cores. First fitted to the medians of two studies' runs: cpu-skewed's
# BIG-bench prompts of 109 characters, 0.9 s and 0.23 s, and cpu-many's of 414, 2.26 s and 0.55 s
# (its first 10 runs; the per-example constant alone estimated cpu-many at 12 hours where it
# measured about 40). Since training on a CPU scores only the response positions (1d8661d),
# cpu-many's runs at 259c0eb with only the study's two processes on the cores took a median
# 1.30 s per example-epoch and 0.42 s per item (2026-12-07, 4 runs): both lines are scaled by
# those ratios (0.575, 0.757). cpu-skewed's pool cannot be measured again (its BIG-bench source
# is withdrawn), so its point is scaled by the same ratios.
TRAIN_SECONDS = (0.236, 0.00256)  # seconds per example-epoch = a + b * characters
TEST_SECONDS = (0.091, 0.000795)  # seconds per held-out item = a + b * characters
REFERENCE_CHARS = 109             # without the pools at hand: cpu-skewed's prompts


@dataclass
class ExperimentConfig:
    pool: str | None = field(default=None, metadata={"required": True, "help": "Pool spec to select from."})
    test: str | None = field(default=None, metadata={
        "help": "Held-out test spec for the heldout suite (rows with targets/choices), e.g. "
                "bench:many?split=test."})
    suites: list[str] = field(default_factory=lambda: ["heldout"], metadata={
        "help": "Evaluation suites (heldout, mmlu, bbh, judge); the first is the report's accuracy; judge adds "
                "the win rate (judge settings under suite_options.judge: judge_url, judge_model, ...)."})
    pool_fields: dict = field(default_factory=dict, metadata={
        "help": "Field mapping of the pool (id_field, prompt_field, task_field, response_field, prompt_template)."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model (scored, trained, evaluated)."})
    strategies: list[str] = field(default_factory=lambda: ["random", "task-diversity", "weighted-task-diversity"],
                                  metadata={"help": "Strategies to compare."})
    budgets: list[str] = field(default_factory=lambda: ["10%", "20%"], metadata={"help": "Budgets (counts or %)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds (selection and training)."})
    grid: list[dict] | None = field(default=None, metadata={
        "help": "Instead of strategies x budgets x seeds: a list of such blocks, e.g. [{strategies: [random], "
                "budgets: [400], seeds: [0, 1, 2]}, ...] (a block without seeds takes the key 'seeds'); runs go "
                "seed by seed, each seed through the blocks in order."})
    full: bool = field(default=True, metadata={"help": "Add a run trained on the whole pool."})
    full_seeds: list[int] | None = field(default=None, metadata={
        "help": "Seeds of the full run (default: first seed); ones not in seeds run after the grid."})
    base: bool = field(default=True, metadata={"help": "Add the untrained base model as a reference row."})
    within: str = field(default="random", metadata={"help": "Within-task picker of the task strategies."})
    min_per_task: int = field(default=0, metadata={"help": "Task strategies: at least this many per task."})
    embedding_model: str | None = field(default=None, metadata={"help": "Embedding model for k-center."})
    score: dict = field(default_factory=dict, metadata={"help": "Options of `taskdiv score`."})
    train: dict = field(default_factory=dict, metadata={"help": "Options of `taskdiv train`."})
    evaluate: dict = field(default_factory=dict, metadata={"help": "Options of `taskdiv evaluate` (every suite)."})
    suite_options: dict = field(default_factory=dict, metadata={
        "help": "Per-suite options over `evaluate`, e.g. {mmlu: {harness_tasks: [mmlu]}}."})
    two_round: dict = field(default_factory=dict, metadata={
        "help": "Options of the `two-round` strategy: share (0.5), first (task-diversity), second "
                "(weighted-task-diversity), rescore_per_task (16); see taskdiv.rounds."})
    keep_weights: bool = field(default=False, metadata={
        "help": "Keep each run's trained weights (by default deleted once the run is evaluated)."})
    name: str = field(default="experiment", metadata={"help": "A name for reports."})


# The keys that define what a run computes; the others (strategies, budgets, seeds, grid, full,
# full_seeds, base, keep_weights, name) only choose which runs there are or what is kept,
# so a rerun may change them.
RUN_DEFINING = ("pool", "test", "pool_fields", "model", "suites", "within", "min_per_task", "embedding_model",
                "score", "train", "evaluate", "suite_options", "two_round")


# Strategies of experiments only: several stages per selection (taskdiv.rounds).
ROUND_STRATEGIES = ("two-round",)


@dataclass(frozen=True)
class Run:
    id: str
    strategy: str          # a strategy name, or 'full' / 'base'
    budget: str
    budget_n: int
    seed: int


def load_config(path: str | Path, *, written: bool = False) -> ExperimentConfig:
    """The experiment config in `path`. `written`: EXP/config.yaml, as an experiment wrote it
    (the checks of what a user wrote are skipped: older versions wrote every key, so a grid's
    config also held the unused top-level strategies and budgets)."""
    given = configmod.load_yaml(path, ExperimentConfig)
    cfg = configmod.build(ExperimentConfig, {}, path, loaded=given)
    if written:
        return cfg
    if cfg.grid is not None and {"strategies", "budgets"} & set(given):
        raise TaskdivError(f"{path}: key 'grid' replaces 'strategies' and 'budgets' (they would be ignored); "
                           f"put them into the grid's blocks")
    for suite, options in cfg.suite_options.items():
        if options is not None and not isinstance(options, dict):
            raise TaskdivError(f"{path}: key 'suite_options.{suite}': expected a mapping of options, got {options!r}")
    if "full_seeds" in given and not cfg.full:
        log.warning("%s: full_seeds is ignored: full is false", path)
    return cfg


def written_config(cfg: ExperimentConfig) -> dict:
    """EXP/config.yaml: the resolved config, which load_config reads back as a user's config
    (a grid's config leaves out the top-level strategies and budgets it replaces)."""
    out = configmod.to_dict(cfg)
    if cfg.grid is not None:
        out.pop("strategies", None)
        out.pop("budgets", None)
    if not cfg.full and cfg.full_seeds is None:
        out.pop("full_seeds", None)  # read back, it would warn that it is ignored
    return out


def _stage_config(cls, options: dict, key: str, fixed: dict):
    """A stage's config from the experiment's `key:` options plus the fixed fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    clean = {str(k).replace("-", "_"): v for k, v in (options or {}).items()}
    unknown = sorted(set(clean) - names)
    if unknown:
        raise TaskdivError(f"experiment config: unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}")
    clash = sorted(set(clean) & set(fixed))
    if clash:
        raise TaskdivError(f"experiment config: {', '.join(f'{key}.{k}' for k in clash)} is set by the experiment")
    return configmod.build(cls, {**clean, **fixed}, prefix=f"{key}.")


def blocks(cfg: ExperimentConfig) -> list[dict]:
    """The grid as blocks of strategies x budgets x seeds: the blocks of `grid`, or one block
    of the top-level keys. Each block has `key` (its name in error messages) too."""
    if cfg.grid is None:
        return [{"key": "", "strategies": list(cfg.strategies), "budgets": list(cfg.budgets),
                 "seeds": list(cfg.seeds)}]
    if not isinstance(cfg.grid, list) or not cfg.grid:
        raise TaskdivError("experiment config: key 'grid' must be a non-empty list of blocks "
                           "({strategies: [...], budgets: [...], seeds: [...]})")
    out = []
    for i, block in enumerate(cfg.grid):
        key = f"grid[{i}]."
        if not isinstance(block, dict) or not {"strategies", "budgets"} <= set(block) \
                or set(block) - {"strategies", "budgets", "seeds"}:
            raise TaskdivError(f"experiment config: key 'grid[{i}]' must be a mapping with strategies, budgets "
                               f"and (optionally; default: the key 'seeds') seeds, got {block!r}")
        values = {k: block.get(k, cfg.seeds) for k in ("strategies", "budgets", "seeds")}
        for k, v in values.items():
            if not isinstance(v, list):
                raise TaskdivError(f"experiment config: key '{key}{k}' must be a list, got {v!r}")
        configmod.check_seed(values["seeds"], f"{key}seeds", "experiment config")
        out.append({"key": key, **values})
    return out


def grid_strategies(cfg: ExperimentConfig) -> list[str]:
    """Every strategy of the grid, in order of first appearance."""
    return list(dict.fromkeys(s for block in blocks(cfg) for s in block["strategies"]))


def plan(cfg: ExperimentConfig, pool_size: int) -> list[Run]:
    """Validate the grid against the pool and list the runs (base first, then seed by seed)."""
    from ..selection.allocation import parse_budget
    from ..selection.strategies import STRATEGIES, check_within

    try:
        check_within(cfg.within)
    except TaskdivError as e:
        raise TaskdivError(f"experiment config: key 'within': {e}") from None
    grid = blocks(cfg)
    for block in grid:
        key = block["key"]
        for s in block["strategies"]:
            if (s not in STRATEGIES and s not in ROUND_STRATEGIES) or s == "full":
                known = [k for k in STRATEGIES if k != "full"] + list(ROUND_STRATEGIES)
                raise TaskdivError(f"experiment config: key '{key}strategies': {unknown_name('strategy', s, known)}")
        if not block["seeds"]:
            raise TaskdivError(f"experiment config: key '{key}seeds' is empty")
        block["sized"] = []
        for b in block["budgets"]:
            try:
                n = parse_budget(b, pool_size)
            except TaskdivError as e:
                raise TaskdivError(f"experiment config: key '{key}budgets': {e}") from None
            if not 0 < n <= pool_size:
                raise TaskdivError(f"experiment config: key '{key}budgets': {b} is {n} prompts; "
                                   f"the pool has {pool_size}")
            block["sized"].append((str(b), n))
    if cfg.grid is None:
        seeds = list(cfg.seeds)  # a repeated seed is reported below as a repeated run
    else:
        for block in grid:
            if len(set(block["seeds"])) < len(block["seeds"]):
                raise TaskdivError(f"experiment config: key '{block['key']}seeds' repeats a seed: {block['seeds']}")
        seeds = list(dict.fromkeys(seed for block in grid for seed in block["seeds"]))
    full_seeds = list(cfg.full_seeds) if cfg.full_seeds is not None else seeds[:1]
    runs = [Run("base", "base", "0", 0, seeds[0])] if cfg.base else []
    for seed in seeds:
        for block in grid:
            if seed in block["seeds"]:
                for budget, n in block["sized"]:
                    for s in block["strategies"]:
                        runs.append(Run(f"{s}-b{n}-s{seed}", s, budget, n, seed))
        if cfg.full and seed in full_seeds:
            runs.append(Run(f"full-s{seed}", "full", "100%", pool_size, seed))
    # Full-data seeds that are not grid seeds run after the grid.
    runs += [Run(f"full-s{seed}", "full", "100%", pool_size, seed)
             for seed in full_seeds if cfg.full and seed not in seeds]
    # A run's id is its directory: a repeated seed, strategy or budget (10% and 100 of a
    # 1000-prompt pool are one budget) would run twice into one directory and count twice.
    counts = Counter(r.id for r in runs)
    repeated = [i for i, c in counts.items() if c > 1]
    if repeated:
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        if cfg.grid is not None and len(set(full_seeds)) == len(full_seeds):
            raise TaskdivError(f"experiment config: key 'grid': two blocks (or a repeated value) give the same "
                               f"run: {shown} would run twice into one directory")
        budgets = grid[0]["sized"]
        sizes = Counter(n for _, n in budgets)
        keys = {"seeds": cfg.seeds, "strategies": cfg.strategies, "full_seeds": full_seeds,
                "budgets": [b if sizes[n] == 1 or b == str(n) else f"{b} ({n} prompts)" for b, n in budgets]}
        # Two budget values that differ but give one prompt count are the remaining cause.
        key = next((k for k, v in keys.items() if len(set(v)) < len(v)), "budgets")
        values = keys[key]
        raise TaskdivError(f"experiment config: key '{key}' ({', '.join(map(str, values))}) repeats a run: "
                           f"{shown} would run twice into one directory")
    return runs


def check_responses(pool, spec: str, field: str) -> None:
    """Every prompt has a reference response: the experiment's annotator is the pool's responses."""
    frame = pool.frame
    if "response" not in frame.columns:
        raise DataError("no reference responses: an experiment annotates the selected prompts with the "
                        "pool's responses (map them with pool_fields.response_field)", file=spec, field=field)
    missing = frame["response"].isna() | (frame["response"].astype(str).str.strip() == "")
    if missing.any():
        ids = ", ".join(repr(i) for i in frame["id"][missing][:5])
        raise DataError(f"{int(missing.sum())} prompt(s) have no reference response (ids {ids}"
                        f"{' ...' if missing.sum() > 5 else ''}); an experiment annotates with them",
                        file=spec, field=field)


def validate_model(name: str) -> None:
    from ..engines.models import EMBEDDED, looks_like_path

    path = Path(name)
    if name in EMBEDDED or path.exists() or (name.count("/") == 1 and not looks_like_path(name)):
        return
    if looks_like_path(name):
        raise TaskdivError(f"experiment config: key 'model': {name}: no such run or model directory")
    raise TaskdivError(f"experiment config: key 'model': {unknown_name('model', name, EMBEDDED)}")


def estimate_seconds(cfg: ExperimentConfig, runs: list[Run], n_test: int, *, train_chars: float | None = None,
                     test_chars: float | None = None) -> float:
    """Training and evaluation time of `runs` at SmolLM2-135M's measured pace on 2 cores
    (TRAIN_SECONDS, TEST_SECONDS); `train_chars`, `test_chars`: the mean length of the pool's
    examples and of the held-out prompts (default REFERENCE_CHARS)."""
    epochs = float((cfg.train or {}).get("epochs", 2))
    trained = sum(r.budget_n for r in runs if r.strategy != "base")
    per_example = TRAIN_SECONDS[0] + TRAIN_SECONDS[1] * (train_chars or REFERENCE_CHARS)
    per_item = TEST_SECONDS[0] + TEST_SECONDS[1] * (test_chars or REFERENCE_CHARS)
    return trained * epochs * per_example + len(runs) * n_test * per_item


def mean_chars(frame, columns=("prompt", "response")) -> float | None:
    """The mean length in characters of a pool's `columns` added up (None without a pool)."""
    if frame is None or not len(frame):
        return None
    return float(sum(frame[c].fillna("").astype(str).str.len() for c in columns if c in frame.columns).mean())
