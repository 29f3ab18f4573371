"""`taskdiv experiment CONFIG.yaml --out EXP`: runs the grid (`runner`), or with --dry-run
prints it with a time estimate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .grid import estimate_seconds, load_config, mean_chars
from .runner import Experiment


@dataclass
class ExperimentCommand:
    config_yaml: str | None = field(default=None, metadata={"positional": True, "required": True,
                                                       "help": "Experiment YAML (e.g. configs/cpu-small.yaml)."})
    out: str | None = field(default=None, metadata={
        "required": True,
        "help": "Experiment directory. A rerun resumes it; several processes given the same one share its runs "
                "(each run made once)."})
    dry_run: bool = field(default=False, metadata={"help": "Validate, print the grid and a time estimate, stop."})


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
        pool_rows = exp.pool.frame if exp.pool is not None else None  # None: every run is finished
        est = estimate_seconds(cfg, todo, n_test, train_chars=mean_chars(pool_rows),
                               test_chars=mean_chars(exp.test, ("prompt",)))
        pool = f"{len(exp.pool)} prompts" if exp.pool is not None else "not loaded (every run is finished)"
        print(f"{len(runs)} run(s), {len(runs) - len(todo)} already done; pool {pool}, "
              f"test {n_test} items; estimate for the {len(todo)} left at SmolLM2-135M's pace on 2 cores, "
              f"for prompts of this length: "
              f"{est / 60:.0f} min" + (" (plus scoring the pool)" if exp.must_score(todo) else ""))
        return
    table = exp.run()
    print(f"{len(table)} run(s) finished; results in {Path(cmd.out) / 'results.csv'}; "
          f"next: taskdiv report {cmd.out}")

