"""`taskdiv experiment CONFIG.yaml --out EXP`: strategies x budgets x seeds, end to end.

Each run selects prompts, annotates them with the pool's reference responses (the
paper's simulation of annotators), finetunes the model and evaluates it on the
held-out test set; `full` (the whole pool) and the untrained base model are the
reference rows. Confidence scores are computed once per experiment (EXP/scores) and
shared by every run that needs them; embeddings are cached on disk likewise.

Layout and resumption:
    EXP/config.yaml                 the resolved experiment config
    EXP/scores/                     `taskdiv score` output, shared
    EXP/runs/RUN/                   selection/, data.jsonl, train/, eval/, result.json, done
    EXP/results.csv                 one row per finished run (rebuilt from the run dirs)
    EXP/per_task.csv, allocations.csv
    EXP/.gitignore                  what not to commit (see below)
Once a run is evaluated its weights (train/adapter, merged, checkpoints) are deleted
unless `keep_weights: true`, and selection/ids.txt lists the chosen ids. EXP/.gitignore
leaves out the bulky files (weights, data.jsonl and the oracle's annotation store,
selection.jsonl, per-item predictions, the score cache, the Parquet copy of
scores.csv), so `git add EXP` commits each finished run's compact results:
result.json (with the code commit it ran at), done, eval/per_task.csv,
selection/ids.txt and allocation.csv, train/train_metrics.json. A rerun on a new
clone then skips every committed run.

A run that selects exactly what a finished run of the same seed selected (the same ids
in the same order, e.g. task-diversity and weighted-task-diversity at one prompt per
task) is not trained again: it takes that run's evaluation, and its result.json names
the run in `same_as`.

A rerun skips runs with a `done` marker; inside an unfinished run each stage skips
what it already finished (training resumes from its last checkpoint), so a grid
killed at any point resumes where it stopped, with no duplicate rows. A rerun may extend
the grid (strategies, budgets, seeds) but fails if a key that defines a run (model, pool,
train, ...: RUN_DEFINING) differs from EXP/config.yaml.

The config (YAML) keys are the fields of `ExperimentConfig`; `score`, `train` and
`evaluate` hold options of those commands (same names as their flags).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import config as configmod
from .errors import DataError, TaskdivError, unknown_name
from .fileio import check_output_dir, dump_table, output_set, read_csv, write_json, write_text, write_yaml

log = logging.getLogger(__name__)

# For --dry-run estimates: the medians of the cpu-skewed study's runs (SmolLM2-135M, LoRA,
# bf16, 2 cores shared with other work; results/cpu-skewed/results.csv): training per
# example-epoch on BIG-bench prompts of ~100-300 characters, and held-out evaluation per item
# (multiple choice and generative). bench/bench_training.py's short-prompt figures on an idle
# machine (0.34 s, 0.06 s) are 2-4x lower, and gave estimates half the real time.
SECONDS_PER_EXAMPLE_EPOCH = 0.9
SECONDS_PER_TEST_ITEM = 0.23


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


@dataclass
class ExperimentCommand:
    config_yaml: str | None = field(default=None, metadata={"positional": True, "required": True,
                                                       "help": "Experiment YAML (e.g. configs/cpu-small.yaml)."})
    out: str | None = field(default=None, metadata={"required": True, "help": "Experiment directory."})
    dry_run: bool = field(default=False, metadata={"help": "Validate, print the grid and a time estimate, stop."})


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
    from .allocation import parse_budget
    from .strategies import STRATEGIES, check_within

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
    from .models import EMBEDDED, looks_like_path

    path = Path(name)
    if name in EMBEDDED or path.exists() or (name.count("/") == 1 and not looks_like_path(name)):
        return
    if looks_like_path(name):
        raise TaskdivError(f"experiment config: key 'model': {name}: no such run or model directory")
    raise TaskdivError(f"experiment config: key 'model': {unknown_name('model', name, EMBEDDED)}")


class Experiment:
    def __init__(self, cfg: ExperimentConfig, out: str | Path):
        self.cfg, self.out = cfg, Path(out)
        self.runs: list[Run] | None = None  # set by prepare()

    # ------------------------------------------------------------------ setup
    def prepare(self) -> list[Run]:
        """Everything that can fail on a bad config or bad input, before any run starts: every
        stage's options, the pool (with a reference response for every prompt, which the oracle
        annotator needs), the test set (targets), the output directory. `--dry-run` runs exactly this."""
        from .allocation import check_task_limits
        from .data import FieldMap, load_pool
        from .evaluation import SUITES, load_heldout
        from .evaluation import check_options as check_eval_options
        from .scoring import ScoreConfig
        from .scoring import check_options as check_score_options
        from .training import TrainConfig
        from .training import check_options as check_train_options

        cfg = self.cfg
        check_output_dir(self.out)
        self.check_previous_config()
        validate_model(cfg.model)
        unknown = sorted(set(cfg.pool_fields) - set(FieldMap.__dataclass_fields__))
        if unknown:
            raise TaskdivError(f"experiment config: unknown key(s) {', '.join('pool_fields.' + k for k in unknown)}")
        self.fields = dict(cfg.pool_fields)
        for suite in cfg.suites:
            if suite not in SUITES:
                raise TaskdivError(f"experiment config: key 'suites': {unknown_name('suite', suite, SUITES)}")
        if not cfg.suites:
            raise TaskdivError("experiment config: key 'suites' is empty")
        if "heldout" in cfg.suites and not cfg.test:
            raise TaskdivError("experiment config: key 'test' is required for the heldout suite")
        try:
            self.pool = load_pool(cfg.pool, FieldMap(**self.fields))
        except TaskdivError as e:
            self.runs = self._finished_without_pool(e)
            self.pool, self.test = None, None
            return self.runs
        check_responses(self.pool, cfg.pool, self.fields.get("response_field", "response"))
        self.runs = plan(cfg, len(self.pool))
        # Build every stage config once now, so that a bad key fails before any run.
        self.score_cfg = _stage_config(ScoreConfig, cfg.score, "score",
                                       {"pool": cfg.pool, "model": cfg.model, "out": str(self.out / "scores"),
                                        **self.fields})
        try:
            check_score_options(self.score_cfg)
        except TaskdivError as e:  # '--batch-size must be ...' is the key score.batch_size here
            raise TaskdivError(f"experiment config: key 'score': {e}") from None
        check_train_options(_stage_config(TrainConfig, cfg.train, "train",
                                          {"data": "x", "model": cfg.model, "out": "x", "seed": 0}))
        unknown = sorted(set(cfg.suite_options) - set(cfg.suites))
        if unknown:
            raise TaskdivError(f"experiment config: key 'suite_options': {', '.join(unknown)} not in 'suites'")
        self.test = None
        for suite in cfg.suites:
            eval_cfg = self._eval_config(cfg.model, "x", suite)
            check_eval_options(eval_cfg)
            if suite == "heldout":
                self.test = load_heldout(cfg.test, eval_cfg.limit)
            elif suite == "judge":  # the instructions read, the judge reached: a wrong address fails now
                from . import judge

                judge.load_reference(eval_cfg.judge_data, eval_cfg.limit)
                judge.Judge(eval_cfg.judge_url, eval_cfg.judge_model, config=eval_cfg.judge_config,
                            cache=Path(eval_cfg.judge_cache) if eval_cfg.judge_cache else None).reach()
            else:  # MMLU/BBH files: read and converted once into a throwaway directory
                import tempfile

                from . import harness

                with tempfile.TemporaryDirectory(prefix="taskdiv-check-") as tmp:
                    harness.prepare(eval_cfg, Path(tmp))
        check_task_limits(cfg.min_per_task)
        for s in grid_strategies(cfg):
            if s in ROUND_STRATEGIES:
                rounds = self._two_round_options()
                rounds.check("experiment config: key 'two_round'")
                for step in (rounds.first, rounds.second):
                    self._select_config(Run("check", step, "1", 1, 0), Path("x"))
                _stage_config(ScoreConfig, {**cfg.score, "per_task": 1}, "score",
                              {"pool": "x", "model": cfg.model, "out": "x", **self.fields})
            else:
                self._select_config(Run("check", s, "1", 1, 0), Path("x"))
        return self.runs

    def _two_round_options(self):
        from .rounds import TwoRoundOptions

        return _stage_config(TwoRoundOptions, self.cfg.two_round, "two_round", {})

    def _select_two_rounds(self, run: Run, d: Path):
        """The `two-round` strategy's selection (taskdiv.rounds), its stages run as the
        experiment runs them: the oracle annotates, training and scoring take its options."""
        from .rounds import Steps, select_two_rounds
        from .scoring import ScoreConfig, score
        from .selection import select, write_selection
        from .training import TrainConfig, train

        def do_select(strategy, budget, out, scores, exclude):
            cfg = self._select_config(Run(run.id, strategy, str(budget), budget, run.seed), out)
            cfg = dataclasses.replace(cfg, budget=str(budget), scores=str(scores) if scores else None,
                                      exclude=str(exclude) if exclude else None)
            rows, allocation = select(cfg, pool=self.pool)
            write_selection(out, rows, allocation, cfg)

        def do_train(data, out):
            train(_stage_config(TrainConfig, self.cfg.train, "train",
                                {"data": str(data), "model": self.cfg.model, "out": str(out), "seed": run.seed}))

        def do_score(model, out, per_task, exclude):
            options = {k: v for k, v in self.cfg.score.items() if k not in ("per_task", "target_ci")}
            score(_stage_config(ScoreConfig, {**options, "per_task": per_task, "seed": run.seed}, "score",
                                {"pool": self.cfg.pool, **self.fields, "model": str(model), "out": str(out),
                                 "exclude": str(exclude)}))

        return select_two_rounds(self._two_round_options(), run.budget_n, self.pool, d,
                                 Steps(select=do_select, annotate=self.oracle, train=do_train, score=do_score))

    def _finished_without_pool(self, error: TaskdivError) -> list[Run]:
        """The grid's runs when the pool cannot be loaded (a source withdrawn, its files
        elsewhere) but every run is finished: their results need no pool. Otherwise the
        pool's error, saying which runs are left and that `taskdiv report` needs none."""
        size = self._recorded_pool_size()
        if size is None:
            raise TaskdivError(f"{str(error).rstrip('.')}; {self.out} records no finished grid (scores/tasks.csv "
                               f"or a full-data run) to collate without the pool") from error
        runs = plan(self.cfg, size)
        todo = self.unfinished(runs)
        if todo:
            shown = ", ".join(r.id for r in todo[:3]) + (" ..." if len(todo) > 3 else "")
            raise TaskdivError(f"{str(error).rstrip('.')}; {len(todo)} of the grid's {len(runs)} run(s) are not "
                               f"finished ({shown}) and need the pool. The {len(runs) - len(todo)} finished run(s) need none: "
                               f"`taskdiv report {self.out}` rebuilds the report from them") from error
        log.warning("the pool cannot be loaded (%s); every run of the grid is finished, so the results are "
                    "collated from %s without it", error, self.out / "runs")
        return runs

    def _recorded_pool_size(self) -> int | None:
        """The pool's size as the finished experiment recorded it: the scored task table's
        `available` column, else the budget of a full-data run."""
        tasks = self.out / "scores" / "tasks.csv"
        if tasks.exists():
            return int(pd.read_csv(tasks)["available"].sum())
        for path in sorted((self.out / "runs").glob("full-s*/result.json")):
            return int(json.loads(path.read_text(encoding="utf-8"))["budget_n"])
        return None

    def check_previous_config(self) -> None:
        """A rerun into the same --out may only extend the grid: finished runs are skipped, so a
        change to what defines a run would mix old and new results under the new config.yaml."""
        path = self.out / "config.yaml"
        if not path.exists():
            return
        old, new = configmod.to_dict(load_config(path, written=True)), configmod.to_dict(self.cfg)
        changed = [k for k in RUN_DEFINING if old[k] != new[k]]
        if changed:
            detail = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed)
            raise TaskdivError(f"{self.out}: was run with a different {', '.join(changed)} ({detail}); "
                               f"use another --out, or set them back as in {path}")

    def _eval_config(self, model: str, out: str, suite: str):
        from .evaluation import EvalConfig

        fixed = {"model": model, "suite": suite, "out": out}
        if suite == "heldout":
            fixed["heldout"] = self.cfg.test
        options = {**(self.cfg.evaluate or {}), **(self.cfg.suite_options.get(suite) or {})}
        return _stage_config(EvalConfig, options, "evaluate", fixed)

    def _select_config(self, run: Run, out: Path):
        from .selection import SelectConfig

        extra = {"embedding_model": self.cfg.embedding_model} if self.cfg.embedding_model else {}
        scores = self.out / "scores" / "scores.csv"
        return SelectConfig(pool=self.cfg.pool, **self.fields, budget=run.budget if run.strategy != "full" else None,
                            strategy=run.strategy, seed=run.seed, out=str(out),
                            scores=str(scores) if self._needs_scores(run.strategy) else None,
                            **self._task_parameters(run.strategy), **extra)

    def _task_parameters(self, strategy: str) -> dict:
        """The experiment's `within` and `min_per_task`: for task strategies only, which take them."""
        from .strategies import is_task_strategy

        return {"within": self.cfg.within, "min_per_task": self.cfg.min_per_task} if is_task_strategy(strategy) else {}

    def _needs_scores(self, strategy: str) -> bool:
        """Whether a run of `strategy` reads the experiment's confidences (a two-round run
        scores with its own round-1 model)."""
        from .strategies import get_strategy

        if strategy in ROUND_STRATEGIES:
            return False
        return "confidence" in get_strategy(strategy, **self._task_parameters(strategy)).needs

    def needs_scores(self) -> bool:
        return any(self._needs_scores(s) for s in grid_strategies(self.cfg))

    def unfinished(self, runs: list[Run]) -> list[Run]:
        return [r for r in runs if not (self.run_dir(r) / "done").exists()]

    def must_score(self, todo: list[Run]) -> bool:
        """Whether the pool is still to be scored before the runs `todo`."""
        return bool(todo) and self.needs_scores() and not (self.out / "scores" / "scores.csv").exists()

    # ------------------------------------------------------------------ running
    def run(self) -> pd.DataFrame:
        from .progress import bar

        runs = self.prepare()
        write_yaml(self.out / "config.yaml", written_config(self.cfg))
        write_text(self.out / ".gitignore", GITIGNORE)
        todo = self.unfinished(runs)
        log.info("experiment %s: %d run(s), %d already done", self.cfg.name, len(runs), len(runs) - len(todo))
        if todo:
            self._warn_other_code([r for r in runs if r not in todo])
            self._warn_lost_rows(todo)
        with _quiet_inner_progress():
            if self.must_score(todo):
                from .scoring import score

                log.info("scoring the pool once for the whole experiment")
                score(self.score_cfg)
            with bar(total=len(runs), initial=len(runs) - len(todo), desc="experiment", unit="run",
                     outer=True) as progress:
                for r in todo:
                    self.run_one(r, lambda stage, r=r: progress.set_postfix_str(f"{r.id}: {stage}"))
                    progress.update(1)
                    self.collect()
        return self.collect()

    def _warn_other_code(self, finished: list[Run]) -> None:
        """Say so when finished runs were made by other code than the runs about to be made:
        a study resumed at another commit may mix results that are not comparable."""
        here = code_version()
        others = Counter()
        for r in finished:
            path = self.run_dir(r) / "result.json"
            code = json.loads(path.read_text(encoding="utf-8")).get("code") if path.exists() else None
            if code and here and code.removesuffix("+dirty") != here.removesuffix("+dirty"):
                others[_short(code)] += 1
        if others:
            made = ", ".join(f"{n} at {c}" for c, n in others.most_common())
            log.warning("%d finished run(s) of %s were made by other code (%s); the runs made now, at %s, may "
                        "not be comparable with them if that code changed what runs compute. To finish a study "
                        "with its own code, run it from a git worktree at its commit.", sum(others.values()),
                        self.out, made, _short(here))

    def _warn_lost_rows(self, todo: list[Run]) -> None:
        """Say so when EXP/results.csv lists runs of the grid that are about to be made
        afresh: their run directories are not here (results copied without them, e.g. from a
        version that did not commit runs), and results.csv is rebuilt from run directories."""
        path = self.out / "results.csv"
        if not path.exists():
            return
        try:
            listed = set(pd.read_csv(path, usecols=["run"])["run"].astype(str))
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            return
        lost = [r.id for r in todo if r.id in listed]
        if lost:
            log.warning("%s lists %d run(s) of this grid that have no finished run directory here (%s); they "
                        "are made again now, and their rows are replaced by the new results (git keeps the old "
                        "ones)", path, len(lost), ", ".join(lost[:3]) + (" ..." if len(lost) > 3 else ""))

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / run.id

    def run_one(self, run: Run, stage) -> None:
        from .evaluation import evaluate
        from .training import TrainConfig, train

        d = self.run_dir(run)
        started = time.time()
        record = dataclasses.asdict(run)
        record["run"] = record.pop("id")
        write_yaml(d / "run.yaml", {**record, "model": self.cfg.model, "pool": self.cfg.pool, "test": self.cfg.test})
        model = self.cfg.model
        if run.strategy != "base":
            stage("select")
            sel_dir = d / "selection"
            if not (sel_dir / "selection.jsonl").exists():
                from .selection import select, write_selection

                if run.strategy in ROUND_STRATEGIES:
                    rows, allocation = self._select_two_rounds(run, d)
                    sel_cfg = {"strategy": run.strategy, "budget": run.budget_n, "seed": run.seed,
                               "two_round": configmod.to_dict(self._two_round_options())}
                else:
                    sel_cfg = self._select_config(run, sel_dir)
                    rows, allocation = select(sel_cfg, pool=self.pool)
                write_selection(sel_dir, rows, allocation, sel_cfg)
            if not (sel_dir / "ids.txt").exists():
                from .fileio import iter_jsonl

                ids = [str(row["id"]) for _, row in iter_jsonl(sel_dir / "selection.jsonl")]
                write_text(sel_dir / "ids.txt", "".join(f"{i}\n" for i in ids))
            twin = self.finished_twin(run)
            if twin is not None:
                self.reuse(run, twin, record, started)
                return
            stage("annotate")
            data = d / "data.jsonl"
            if not data.exists():
                self.oracle(sel_dir / "selection.jsonl", data)
            stage("train")
            t0 = time.time()
            train_cfg = _stage_config(TrainConfig, self.cfg.train, "train",
                                      {"data": str(data), "model": self.cfg.model, "out": str(d / "train"),
                                       "seed": run.seed})
            train(train_cfg)
            record["train_seconds"] = round(time.time() - t0, 1)
            model = str(d / "train")
        t0 = time.time()
        for i, suite in enumerate(self.cfg.suites):
            stage(f"evaluate {suite}")
            eval_dir = d / ("eval" if i == 0 else f"eval-{suite}")
            res = evaluate(self._eval_config(model, str(eval_dir), suite))
            macro = res["macro"]
            if i == 0:
                record.update(suite=suite, accuracy=macro["accuracy"], ci_low=macro["ci_low"],
                              ci_high=macro["ci_high"], n_test=macro["n"])
            if suite == "judge":  # in percent, as AlpacaEval reports it
                record.update(judge_win_rate=res["win_rate"]["win_rate"],
                              judge_lc_win_rate=res["length_controlled"]["length_controlled_winrate"])
            else:
                record[f"{suite}_accuracy"] = macro["accuracy"]
        record["eval_seconds"] = round(time.time() - t0, 1)
        record["seconds"] = round(time.time() - started, 1)
        record["code"] = code_version()
        self.finish(run, record)
        if not self.cfg.keep_weights:
            # After `done`: a run killed before it still has the weights its evaluation needs.
            for train_dir in (d / "train", d / "round1" / "train"):
                for sub in ("adapter", "merged", "checkpoints"):
                    shutil.rmtree(train_dir / sub, ignore_errors=True)
        from .models import free_memory

        free_memory()

    def finished_twin(self, run: Run) -> Run | None:
        """A finished run of this grid with the same seed and the same selection, the same
        ids in the same order: its training data, and so its model and results, are this
        run's too (training and evaluation are deterministic given data and seed; the
        settings are the experiment's). E.g. task-diversity and weighted-task-diversity at a
        budget of one prompt per task."""
        ids = (self.run_dir(run) / "selection" / "ids.txt").read_bytes()
        for other in self.runs if self.runs is not None else self.prepare():
            d = self.run_dir(other)
            if (other.id != run.id and other.seed == run.seed and other.strategy != "base"
                    and (d / "done").exists() and (d / "selection" / "ids.txt").exists()
                    and (d / "selection" / "ids.txt").read_bytes() == ids):
                return other
        return None

    def reuse(self, run: Run, twin: Run, record: dict, started: float) -> None:
        """Finish `run` with its twin's evaluation instead of training the same model again;
        result.json says so (`same_as`) and counts no training or evaluation time."""
        d, src = self.run_dir(run), self.run_dir(twin)
        log.info("%s: selected exactly what %s did (same ids, order and seed): reusing its results", run.id,
                 twin.id)
        for eval_dir in sorted(src.glob("eval*")):
            shutil.copytree(eval_dir, d / eval_dir.name, dirs_exist_ok=True)
        result = json.loads((src / "result.json").read_text())
        keep = ("suite", "accuracy", "ci_low", "ci_high", "n_test")
        record.update({k: result[k] for k in keep if k in result})
        record.update({k: v for k, v in result.items() if k.endswith(("_accuracy", "_win_rate"))})
        record.update(same_as=twin.id, train_seconds=0.0, eval_seconds=0.0,
                      seconds=round(time.time() - started, 1), code=code_version())
        self.finish(run, record)

    def finish(self, run: Run, record: dict) -> None:
        """result.json (the run's name first), then the `done` marker that a rerun skips on."""
        d = self.run_dir(run)
        write_json(d / "result.json", {"run": record.pop("run"), **record})
        write_text(d / "done", time.strftime("%Y-%m-%dT%H:%M:%S\n"))

    def oracle(self, selection: Path, data: Path) -> None:
        """Annotate with the pool's reference responses (the paper's simulated annotators)."""
        from .annotate.commands import OracleConfig, run_oracle

        run_oracle(OracleConfig(selection=str(selection), pool=self.cfg.pool, out=str(data), **self.fields))

    # ------------------------------------------------------------------ tables
    def collect(self) -> pd.DataFrame:
        """Rebuild results.csv, per_task.csv and allocations.csv from the finished runs
        (of the config's grid: `prepare()` lists them, and runs here first if it has not)."""
        runs = self.runs if self.runs is not None else self.prepare()
        results, per_task, allocations = [], [], []
        # Every run's allocation gets the task confidences, also where its strategy did not use them
        # (random, task-diversity), so the report can set the allocations side by side.
        tasks_csv = self.out / "scores" / "tasks.csv"
        task_conf = read_csv(tasks_csv, neutralised=True).set_index("task")["confidence"] if tasks_csv.exists() \
            else None
        for r in runs:
            d = self.run_dir(r)
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
            with output_set(*(self.out / name for name in tables)) as temps:
                for temp, frame in zip(temps, tables.values()):
                    dump_table(temp, frame, ".csv")
        return table


# EXP/.gitignore: everything but the compact results of each run (see the module docstring).
GITIGNORE = """# Written by `taskdiv experiment`: commit EXP for the compact results of finished runs.
runs/*/data.jsonl
runs/*/annotations.jsonl
runs/*/import-round-*.json
runs/*/selection/selection.jsonl
runs/*/train/*
!runs/*/train/train_metrics.json
!runs/*/train/config.yaml
runs/*/eval*/items.jsonl
runs/*/eval*/.items.partial.jsonl
runs/*/eval*/harness/
runs/*/round1/data.jsonl
runs/*/round1/annotations.jsonl
runs/*/round1/import-round-*.json
runs/*/round1/selection/selection.jsonl
runs/*/round2/selection.jsonl
runs/*/round1/train/*
!runs/*/round1/train/train_metrics.json
!runs/*/round1/train/config.yaml
runs/*/round1/scores/cache.sqlite*
runs/*/round1/scores/scores.parquet
scores/cache.sqlite*
scores/scores.parquet
"""


# What a run's result.json (and so a row of results.csv) holds, as `report` reads it: the keys
# every row has, and the kind of each number (a share in [0, 1], a whole count, seconds).
RESULT_REQUIRED = ("run", "strategy", "budget", "budget_n", "seed", "accuracy")
RESULT_NUMBERS = {"accuracy": "share", "ci_low": "share", "ci_high": "share", "budget_n": "count", "seed": "count",
                  "n_test": "count", "seconds": "time", "train_seconds": "time", "eval_seconds": "time"}


def read_result(path: Path) -> dict:
    """A finished run's result.json, checked (`check_result`): a tampered or damaged one is an
    error naming the file and field, not a row of results.csv."""
    from .fileio import read_json_document

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


def _short(commit: str) -> str:
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")


def code_version() -> str | None:
    """The git commit of the taskdiv source that ran (with '+dirty' for uncommitted changes),
    or None outside a git checkout; recorded in every result.json."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", str(src)],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def _quiet_inner_progress():
    """One progress display for the whole grid: the stages' own bars (taskdiv's, datasets',
    transformers') are off while the block runs, and as they were afterwards."""
    import os

    restore = []
    previous = os.environ.get("TASKDIV_INNER_PROGRESS_OFF")
    os.environ["TASKDIV_INNER_PROGRESS_OFF"] = "1"
    try:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    except ImportError:
        pass
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TASKDIV_INNER_PROGRESS_OFF", None)
        else:
            os.environ["TASKDIV_INNER_PROGRESS_OFF"] = previous
        for undo in restore:
            undo()


def estimate_seconds(cfg: ExperimentConfig, runs: list[Run], n_test: int) -> float:
    epochs = float((cfg.train or {}).get("epochs", 2))
    trained = sum(r.budget_n for r in runs if r.strategy != "base")
    return trained * epochs * SECONDS_PER_EXAMPLE_EPOCH + len(runs) * n_test * SECONDS_PER_TEST_ITEM


def run_experiment(cmd: ExperimentCommand) -> None:
    cfg = load_config(cmd.config_yaml)
    exp = Experiment(cfg, cmd.out)
    if cmd.dry_run:
        runs = exp.prepare()
        n_test = len(exp.test) if exp.test is not None else 0
        todo = exp.unfinished(runs)
        for r in runs:
            print(f"{r.id:40s} strategy={r.strategy:24s} budget={r.budget_n:6d} seed={r.seed}"
                  + ("" if r in todo else "  (done)"))
        est = estimate_seconds(cfg, todo, n_test)
        pool = f"{len(exp.pool)} prompts" if exp.pool is not None else "not loaded (every run is finished)"
        print(f"{len(runs)} run(s), {len(runs) - len(todo)} already done; pool {pool}, "
              f"test {n_test} items; estimate for the {len(todo)} left at SmolLM2-135M rates on 2 cores: "
              f"{est / 60:.0f} min" + (" (plus scoring the pool)" if exp.must_score(todo) else ""))
        return
    table = exp.run()
    print(f"{len(table)} run(s) finished; results in {Path(cmd.out) / 'results.csv'}; "
          f"next: taskdiv report {cmd.out}")
