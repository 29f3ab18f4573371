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
the run in `same_as`; with several processes it waits for such an earlier run that
another process is making.

A rerun skips runs with a `done` marker; inside an unfinished run each stage skips
what it already finished (training resumes from its last checkpoint), so a grid
killed at any point resumes where it stopped, with no duplicate rows. A rerun may extend
the grid (strategies, budgets, seeds) but fails if a key that defines a run (model, pool,
train, ...: RUN_DEFINING) differs from EXP/config.yaml.

Several processes may work through one grid side by side (`taskdiv experiment` started
twice with the same --out, on one machine or on machines sharing EXP on a file system
with locks): each run is made by whichever process first takes its lock (common.locks on
EXP/.claims/RUN), the others go on to the next free run, and the pool is scored once. A
process that runs out of free runs waits for those another process is making, so each
exits with the whole grid finished (and makes a run itself if its maker was killed).

The config (YAML) keys are the fields of `ExperimentConfig`; `score`, `train` and
`evaluate` hold options of those commands (same names as their flags).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from ..common import config as configmod
from ..common.errors import TaskdivError, unknown_name
from ..common.outputs import check_output_dir
from ..common.progress import quiet_inner_progress
from ..common.writers import write_json, write_text, write_yaml
from .collate import collate
from .grid import (ROUND_STRATEGIES, RUN_DEFINING, ExperimentConfig, Run, _stage_config, check_responses,
                   grid_strategies, load_config, plan, validate_model, written_config)
from .provenance import _short, code_version

log = logging.getLogger(__name__)


def _earlier_training(train_dir: Path, since: float) -> float:
    """Training seconds spent on this run's model by processes before this one: the sessions before
    a resume (train_metrics.json's train_seconds less this session's train_runtime), or the whole
    training when an earlier process finished it and was stopped before its evaluation."""
    path = train_dir / "train_metrics.json"
    if not path.exists():
        return 0.0
    metrics = json.loads(path.read_text(encoding="utf-8"))
    total = float(metrics.get("train_seconds") or 0.0)
    if path.stat().st_mtime >= since:  # trained in this process
        return max(0.0, total - float(metrics.get("train_runtime") or 0.0))
    return total


class Experiment:
    def __init__(self, cfg: ExperimentConfig, out: str | Path):
        self.cfg, self.out = cfg, Path(out)
        self.runs: list[Run] | None = None  # set by prepare()

    # ------------------------------------------------------------------ setup
    def prepare(self) -> list[Run]:
        """Everything that can fail on a bad config or bad input, before any run starts: every
        stage's options, the pool (with a reference response for every prompt, which the oracle
        annotator needs), the test set (targets), the output directory. `--dry-run` runs exactly this."""
        from ..evaluation.commands import SUITES
        from ..evaluation.commands import check_options as check_eval_options
        from ..evaluation.heldout import load_heldout
        from ..pool.fields import FieldMap
        from ..pool.load import load_pool
        from ..scoring.commands import ScoreConfig
        from ..scoring.commands import check_options as check_score_options
        from ..selection.allocation import check_task_limits
        from ..training import TrainConfig
        from ..training import check_options as check_train_options

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
                from ..evaluation import judge

                judge.load_reference(eval_cfg.judge_data, eval_cfg.limit)
                judge.Judge(eval_cfg.judge_url, eval_cfg.judge_model, config=eval_cfg.judge_config,
                            cache=Path(eval_cfg.judge_cache) if eval_cfg.judge_cache else None).reach()
            else:  # MMLU/BBH files: read and converted once into a throwaway directory
                import tempfile

                from ..evaluation import harness

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
        from ..scoring.commands import ScoreConfig, score
        from ..selection.commands import select, write_selection
        from ..training import TrainConfig, train
        from .rounds import Steps, select_two_rounds

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
                               f"finished ({shown}) and need the pool. The {len(runs) - len(todo)} finished "
                               f"run(s) need none: `taskdiv report {self.out}` rebuilds the report from them"
                               ) from error
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
        from ..evaluation.commands import EvalConfig

        fixed = {"model": model, "suite": suite, "out": out}
        if suite == "heldout":
            fixed["heldout"] = self.cfg.test
        options = {**(self.cfg.evaluate or {}), **(self.cfg.suite_options.get(suite) or {})}
        return _stage_config(EvalConfig, options, "evaluate", fixed)

    def _select_config(self, run: Run, out: Path):
        from ..selection.commands import SelectConfig

        extra = {"embedding_model": self.cfg.embedding_model} if self.cfg.embedding_model else {}
        scores = self.out / "scores" / "scores.csv"
        return SelectConfig(pool=self.cfg.pool, **self.fields, budget=run.budget if run.strategy != "full" else None,
                            strategy=run.strategy, seed=run.seed, out=str(out),
                            scores=str(scores) if self._needs_scores(run.strategy) else None,
                            **self._task_parameters(run.strategy), **extra)

    def _task_parameters(self, strategy: str) -> dict:
        """The experiment's `within` and `min_per_task`: for task strategies only, which take them."""
        from ..selection.strategies import is_task_strategy

        return {"within": self.cfg.within, "min_per_task": self.cfg.min_per_task} if is_task_strategy(strategy) else {}

    def _needs_scores(self, strategy: str) -> bool:
        """Whether a run of `strategy` reads the experiment's confidences (a two-round run
        scores with its own round-1 model)."""
        from ..selection.strategies import get_strategy

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
        from ..common.progress import bar

        runs = self.prepare()
        write_yaml(self.out / "config.yaml", written_config(self.cfg))
        write_text(self.out / ".gitignore", GITIGNORE)
        todo = self.unfinished(runs)
        log.info("experiment %s: %d run(s), %d already done", self.cfg.name, len(runs), len(runs) - len(todo))
        if todo:
            self._warn_other_code([r for r in runs if r not in todo])
            self._warn_lost_rows(todo)
        with quiet_inner_progress():
            if self.must_score(todo):
                self._score_once(todo)
            with bar(total=len(runs), initial=len(runs) - len(todo), desc="experiment", unit="run",
                     outer=True) as progress:
                # The free runs first; a run another process is making goes to the end of the
                # queue (which grows as it is read), to be waited for once the free ones are made.
                queue = [(r, False) for r in todo]
                for r, wait in queue:
                    if self._claim_and_run(r, progress, wait=wait):
                        progress.update(1)
                        self.collect()
                    else:
                        log.info("%s: another process is making it; on to the next run", r.id)
                        queue.append((r, True))
        return self.collect()

    def _score_once(self, todo: list[Run]) -> None:
        """Score the pool into EXP/scores, once: a second process started beside this one
        waits for the scores under the lock, then finds them there."""
        from ..common.locks import locked
        from ..scoring.commands import score

        claim = self.out / ".claims" / ".scores"  # not EXP/scores: score's own writers lock there
        claim.mkdir(parents=True, exist_ok=True)
        with locked(claim, "scoring the pool for this experiment"):
            if self.must_score(todo):
                log.info("scoring the pool once for the whole experiment")
                score(self.score_cfg)

    def _claim_and_run(self, run: Run, progress, *, wait: bool) -> bool:
        """Make `run` under its lock (common.locks on EXP/.claims/RUN; the run directory's own
        lock is the annotation store's): False, having done nothing, when another process holds
        it and `wait` is false; with `wait`, after waiting for it. A run found finished once the
        lock is taken (another process made it) is not made again."""
        from ..common.locks import claimed, locked

        d, claim = self.run_dir(run), self.out / ".claims" / run.id
        claim.mkdir(parents=True, exist_ok=True)
        lock = locked(claim, f"making {run.id}") if wait else claimed(claim)
        with lock as mine:
            if mine is False:
                return False
            if not (d / "done").exists():
                self.run_one(run, lambda stage: progress.set_postfix_str(f"{run.id}: {stage}"))
        return True

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
        from ..evaluation.commands import evaluate
        from ..training import TrainConfig, train

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
                from ..selection.commands import select, write_selection

                if run.strategy in ROUND_STRATEGIES:
                    rows, allocation = self._select_two_rounds(run, d)
                    sel_cfg = {"strategy": run.strategy, "budget": run.budget_n, "seed": run.seed,
                               "two_round": configmod.to_dict(self._two_round_options())}
                else:
                    sel_cfg = self._select_config(run, sel_dir)
                    rows, allocation = select(sel_cfg, pool=self.pool)
                write_selection(sel_dir, rows, allocation, sel_cfg)
            if not (sel_dir / "ids.txt").exists():
                from ..common.inputs import iter_jsonl

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
            record["train_seconds"] = round(time.time() - t0 + _earlier_training(d / "train", t0), 1)
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
        from ..engines.models import free_memory

        free_memory()

    def finished_twin(self, run: Run) -> Run | None:
        """A finished run of this grid with the same seed and the same selection, the same
        ids in the same order: its training data, and so its model and results, are this
        run's too (training and evaluation are deterministic given data and seed; the
        settings are the experiment's). E.g. task-diversity and weighted-task-diversity at a
        budget of one prompt per task. Such a run that comes earlier in the grid and that
        another process is making now is waited for (a later one never is: no two processes
        can wait for each other)."""
        from ..common.locks import locked

        ids = (self.run_dir(run) / "selection" / "ids.txt").read_bytes()
        runs = self.runs if self.runs is not None else self.prepare()
        earlier = set(runs[:runs.index(run)]) if run in runs else set()
        for other in runs:
            d = self.run_dir(other)
            if (other.id == run.id or other.seed != run.seed or other.strategy == "base"
                    or not (d / "selection" / "ids.txt").exists()
                    or (d / "selection" / "ids.txt").read_bytes() != ids):
                continue
            claim = self.out / ".claims" / other.id
            if not (d / "done").exists() and other in earlier and claim.is_dir():
                with locked(claim, f"making {other.id}, which selected what {run.id} did"):
                    pass  # its maker is done with it (or was killed: then this run trains)
            if (d / "done").exists():
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
        from ..annotate.commands import OracleConfig, run_oracle

        run_oracle(OracleConfig(selection=str(selection), pool=self.cfg.pool, out=str(data), **self.fields))

    # ------------------------------------------------------------------ tables
    def collect(self) -> pd.DataFrame:
        """Rebuild results.csv, per_task.csv and allocations.csv from the finished runs
        (of the config's grid: `prepare()` lists them, and runs here first if it has not)."""
        return collate(self.out, self.runs if self.runs is not None else self.prepare())


# EXP/.gitignore: everything but the compact results of each run (see the module docstring).
GITIGNORE = """# Written by `taskdiv experiment`: commit EXP for the compact results of finished runs.
.claims/
.taskdiv.lock
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
