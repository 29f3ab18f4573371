"""`taskdiv experiment`: a tiny grid end to end, SIGKILL and resume, bad configs."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from taskdiv.cli import main

POOL = "bbh:navigate,snarks?test=8&max_pool=10"


def write_config(path: Path, tiny_model: Path, **overrides) -> Path:
    cfg = {"name": "tiny", "pool": POOL, "test": POOL + "&split=test", "model": str(tiny_model),
           "strategies": ["random", "weighted-task-diversity"], "budgets": [4, 8], "seeds": [0, 1],
           "score": {"max_new_tokens": 4, "batch_size": 8},
           "train": {"epochs": 1, "batch_size": 4, "save_steps": 100},
           "evaluate": {"batch_size": 8, "n_boot": 50}}
    cfg.update(overrides)
    if "grid" in overrides:  # a grid replaces the top-level strategies and budgets
        cfg.pop("strategies")
        cfg.pop("budgets")
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_tiny_grid_end_to_end_survives_sigkill(tmp_path, tiny_model_dir, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_model_dir)
    exp = tmp_path / "exp"
    env = dict(os.environ, TASKDIV_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-m", "taskdiv.cli", "experiment", str(cfg), "--out", str(exp)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and len(list(exp.glob("runs/*/done"))) < 3 and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in exp.glob("runs/*/done")}
    assert len(finished) >= 3, "the grid did not get going"
    assert len(finished) < 10, "killed too late to test resumption"
    # --dry-run marks the finished runs and estimates the others only.
    assert main(["experiment", str(cfg), "--out", str(exp), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"10 run(s), {len(finished)} already done" in out and f"for the {10 - len(finished)} left" in out
    assert sorted(line.split()[0] for line in out.splitlines() if line.endswith("(done)")) == sorted(finished)

    assert main(["experiment", str(cfg), "--out", str(exp)]) == 0
    results = pd.read_csv(exp / "results.csv")
    # 2 strategies x 2 budgets x 2 seeds, plus full and base: each exactly once.
    assert len(results) == 10 and results["run"].is_unique
    assert set(results["strategy"]) == {"random", "weighted-task-diversity", "full", "base"}
    assert sorted(results.loc[results["strategy"] == "random", "budget_n"]) == [4, 4, 8, 8]
    assert results.loc[results["strategy"] == "full", "budget_n"].item() == 20
    for name, mtime in finished.items():  # finished runs were not repeated
        assert (exp / "runs" / name / "done").stat().st_mtime_ns == mtime
    # Scores were computed once and shared; the weighted runs used them.
    assert (exp / "scores" / "scores.csv").exists()
    alloc = pd.read_csv(exp / "allocations.csv")
    assert set(alloc["strategy"]) == {"random", "weighted-task-diversity", "full"}
    assert alloc.groupby("run")["allocated"].sum().min() == 4
    # ... and every allocation row carries its task's confidence, whatever the strategy.
    task_conf = pd.read_csv(exp / "scores" / "tasks.csv").set_index("task")["confidence"]
    assert np.allclose(alloc["confidence"], alloc["task"].map(task_conf))
    per_task = pd.read_csv(exp / "per_task.csv")
    assert set(per_task["task"]) == {"bbh/navigate", "bbh/snarks"} and per_task["run"].nunique() == 10

    # A rerun of a finished grid does nothing, and the report covers every cell.
    assert main(["experiment", str(cfg), "--out", str(exp)]) == 0
    assert len(pd.read_csv(exp / "results.csv")) == 10
    assert main(["report", str(exp)]) == 0
    report = (exp / "report.md").read_text()
    assert "| random |" in report and "| weighted-task-diversity |" in report and "n/a" not in report
    assert (exp / "accuracy_vs_budget.png").exists() and (exp / "allocation.png").exists()

    # Evaluated runs keep no weights, but their compact results, and record the code they ran.
    assert not list(exp.glob("runs/*/train/adapter")) and not list(exp.glob("runs/*/train/checkpoints"))
    assert "code" in pd.read_json(exp / "runs" / "random-b4-s0" / "result.json", typ="series")
    ids = (exp / "runs" / "random-b4-s0" / "selection" / "ids.txt").read_text().split()
    assert len(ids) == 4 and set(ids) <= set(pd.read_json(exp / "runs" / "random-b4-s0" / "selection" /
                                                         "selection.jsonl", lines=True)["id"])
    # Committed through EXP/.gitignore and cloned on a new machine, the grid is complete:
    # a rerun starts nothing, and the tables come back the same.
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    shutil.copytree(exp, tmp_path / "repo" / "exp")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "results"]):
        subprocess.run(git + cmd, cwd=tmp_path / "repo", check=True)
    subprocess.run(git + ["clone", "-q", str(tmp_path / "repo"), str(tmp_path / "clone")], check=True)
    clone = tmp_path / "clone" / "exp"
    committed = subprocess.run(["git", "ls-files"], cwd=tmp_path / "clone", capture_output=True,
                               text=True).stdout.split()
    assert not [f for f in committed if f.endswith((".safetensors", "data.jsonl", "selection.jsonl", ".sqlite"))]
    assert (clone / "runs" / "random-b4-s0" / "selection" / "ids.txt").exists()
    done = {p: p.stat().st_mtime_ns for p in clone.glob("runs/*/done")}
    assert len(done) == 10
    assert main(["experiment", str(cfg), "--out", str(clone)]) == 0
    assert {p: p.stat().st_mtime_ns for p in clone.glob("runs/*/done")} == done
    pd.testing.assert_frame_equal(pd.read_csv(clone / "results.csv"), pd.read_csv(exp / "results.csv"))


@pytest.mark.parametrize("override,match", [
    ({"strategies": ["random", "task-diversty"]}, "key 'strategies'"),
    ({"within": "kcenter"}, "key 'within': unknown within-task picker 'kcenter'"),
    ({"budgets": [4, 500]}, "key 'budgets': 500 is 500 prompts; the pool has 20"),
    ({"model": "no-such-model"}, "key 'model'"),
    ({"train": {"epochz": 1}}, "train.epochz"),
    ({"suites": ["heldout", "mmlux"]}, "key 'suites'"),
    ({"colour": "red"}, "colour"),
    ({"seeds": [0, 1, 0]}, "key 'seeds' (0, 1, 0) repeats a run: random-b4-s0, weighted-task-diversity-b4-s0"),
    ({"strategies": ["random", "weighted-task-diversity", "random"]}, "key 'strategies'"),
    ({"budgets": [4, "20%"]}, "key 'budgets' (4, 20% (4 prompts)) repeats a run: random-b4-s0"),
    ({"full_seeds": [7, 7]}, "key 'full_seeds' (7, 7) repeats a run: full-s7 would run twice"),
])
def test_bad_config_fails_before_any_run(tmp_path, tiny_model_dir, capsys, override, match):
    cfg = write_config(tmp_path / "bad.yaml", tiny_model_dir, **override)
    exp = tmp_path / "exp"
    assert main(["experiment", str(cfg), "--out", str(exp)]) == 1
    assert match in capsys.readouterr().err
    assert not (exp / "runs").exists()


def test_dry_run_lists_the_grid(tmp_path, tiny_model_dir, capsys):
    cfg = write_config(tmp_path / "ok.yaml", tiny_model_dir, full=False, base=False)
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "exp"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 run(s), 0 already done" in out and "(plus scoring the pool)" in out
    assert "random-b4-s0" in out and "weighted-task-diversity-b8-s1" in out
    assert not (tmp_path / "exp").exists()



def test_the_dry_run_estimate_follows_the_length_of_the_prompts(tmp_path, tiny_model_dir):
    """At cpu-many's 414-character prompts the estimate is its measured pace since training
    scores only the response positions (1.30 s per example-epoch, 0.42 s per held-out item); at
    cpu-skewed's 109 it is about 2.5 times less, as measured before that change (0.9 s and 0.23 s,
    then 2.26 s and 0.55 s at 414), not the same (a constant once estimated 12 h for 40)."""
    from taskdiv.experiments.grid import estimate_seconds, load_config, mean_chars, plan

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_model_dir, full=False))
    runs = plan(cfg, 100)
    trained = sum(r.budget_n for r in runs if r.strategy != "base")
    short = estimate_seconds(cfg, runs, 50, train_chars=109, test_chars=109)
    assert short == pytest.approx(trained * 1 * 0.9 * 0.575 + len(runs) * 50 * 0.23 * 0.757, rel=0.02)  # epochs: 1
    assert estimate_seconds(cfg, runs, 50) == short  # no pool at hand: cpu-skewed's length
    long = estimate_seconds(cfg, runs, 50, train_chars=414, test_chars=414)
    assert long == pytest.approx(trained * 1.30 + len(runs) * 50 * 0.42, rel=0.02)
    frame = pd.DataFrame({"prompt": ["ab", "abcd"], "response": ["x", None]})
    assert mean_chars(frame) == 3.5 and mean_chars(frame, ("prompt",)) == 3.0 and mean_chars(None) is None

def test_full_seeds_outside_the_grid_seeds_run_after_the_grid(tmp_path, tiny_model_dir):
    from taskdiv.experiments.grid import load_config, plan

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_model_dir, full_seeds=[1, 7]))
    ids = [r.id for r in plan(cfg, 20)]
    assert ids[-1] == "full-s7" and ids.index("full-s1") == ids.index("weighted-task-diversity-b8-s1") + 1
    assert "full-s0" not in ids and len(ids) == len(set(ids)) == 1 + 8 + 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    from taskdiv.evaluation.commands import SUITES
    from taskdiv.experiments.grid import ROUND_STRATEGIES, grid_strategies, load_config, plan
    from taskdiv.pool.load import parse_spec
    from taskdiv.selection.strategies import STRATEGIES

    cfg = load_config(path)
    strategies = grid_strategies(cfg)
    assert set(strategies) <= set(STRATEGIES) | set(ROUND_STRATEGIES) and set(cfg.suites) <= set(SUITES)
    assert parse_spec(cfg.pool)[0] != "path"
    assert {"random", "task-diversity", "weighted-task-diversity"} <= set(strategies)
    assert plan(cfg, 100_000)  # the grid itself is valid (budgets, seeds, no repeated run)


@pytest.mark.parametrize("strategies,within,scored", [
    (["random", "k-center"], "lowest-confidence", set()),
    (["random", "task-diversity", "proportional"], "lowest-confidence", {"task-diversity", "proportional"}),
    (["random", "task-diversity", "uncertainty", "weighted-task-diversity"], "random",
     {"uncertainty", "weighted-task-diversity"}),
])
def test_scores_only_where_a_strategy_reads_them(tmp_path, tiny_model_dir, strategies, within, scored):
    from taskdiv.experiments.grid import Run, load_config
    from taskdiv.experiments.runner import Experiment

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_model_dir, strategies=strategies, within=within))
    exp = Experiment(cfg, tmp_path / "exp")
    exp.prepare()
    passed = {s for s in strategies if exp._select_config(Run("x", s, "4", 4, 0), tmp_path / "x").scores}
    assert passed == scored
    # The experiment scores the pool exactly when some run reads the scores.
    assert exp.needs_scores() == bool(scored)


def test_rerun_may_extend_the_grid_but_not_change_a_run(tmp_path, tiny_model_dir, capsys):
    exp = tmp_path / "exp"
    base_only = {"strategies": [], "budgets": [], "seeds": [0], "full": False, "name": "first"}
    assert main(["experiment", str(write_config(tmp_path / "a.yaml", tiny_model_dir, **base_only)),
                 "--out", str(exp)]) == 0
    written = (exp / "config.yaml").read_text()
    result = (exp / "runs" / "base" / "result.json").read_text()
    changed = write_config(tmp_path / "b.yaml", tiny_model_dir, **base_only,
                           train={"epochs": 2, "batch_size": 4, "save_steps": 100}, evaluate={"batch_size": 4})
    for argv in (["--dry-run"], []):
        assert main(["experiment", str(changed), "--out", str(exp), *argv]) == 1
        err = capsys.readouterr().err
        assert f"{exp}: was run with a different train, evaluate (train: " in err and "use another --out" in err
    assert (exp / "config.yaml").read_text() == written
    assert (exp / "runs" / "base" / "result.json").read_text() == result
    # Another name and a grid extended by nothing new to train are fine, and recorded.
    renamed = write_config(tmp_path / "c.yaml", tiny_model_dir, **{**base_only, "name": "second", "seeds": [0, 1]})
    assert main(["experiment", str(renamed), "--out", str(exp)]) == 0
    assert "name: second" in (exp / "config.yaml").read_text()
    assert (exp / "runs" / "base" / "result.json").read_text() == result


def test_grid_blocks_give_a_sparse_grid_seed_by_seed(tmp_path, tiny_model_dir):
    from taskdiv.experiments.grid import grid_strategies, load_config, plan

    grid = [{"strategies": ["random", "task-diversity"], "budgets": [4, 8]},
            {"strategies": ["uncertainty"], "budgets": [8]},
            {"strategies": ["random"], "budgets": [16], "seeds": [0]}]
    cfg = load_config(write_config(tmp_path / "g.yaml", tiny_model_dir, grid=grid, full=False))
    ids = [r.id for r in plan(cfg, 20)]
    assert ids == ["base",
                   "random-b4-s0", "task-diversity-b4-s0", "random-b8-s0", "task-diversity-b8-s0",
                   "uncertainty-b8-s0", "random-b16-s0",
                   "random-b4-s1", "task-diversity-b4-s1", "random-b8-s1", "task-diversity-b8-s1",
                   "uncertainty-b8-s1"]
    assert grid_strategies(cfg) == ["random", "task-diversity", "uncertainty"]


@pytest.mark.parametrize("grid,match", [
    ([{"strategies": ["random"], "budgets": [4]}, {"strategies": ["random"], "budgets": ["20%"]}],
     "key 'grid': two blocks (or a repeated value) give the same run: random-b4-s0"),
    ([{"strategies": ["randm"], "budgets": [4]}], "key 'grid[0].strategies': unknown strategy 'randm'"),
    ([{"strategies": ["random"], "budgets": [4]}, {"strategies": ["random"], "budget": [8]}], "key 'grid[1]' must be"),
    ([{"strategies": ["random"], "budgets": [400]}], "key 'grid[0].budgets': 400 is 400 prompts; the pool has 20"),
    ([{"strategies": ["random"], "budgets": [4], "seeds": []}], "key 'grid[0].seeds' is empty"),
    ([{"strategies": ["random"], "budgets": [4], "seeds": [-1]}], "--grid[0].seeds -1: a seed must be a whole"),
])
def test_bad_grid_fails_before_any_run(tmp_path, tiny_model_dir, capsys, grid, match):
    cfg = write_config(tmp_path / "bad.yaml", tiny_model_dir, grid=grid)
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "exp")]) == 1
    assert match in capsys.readouterr().err
    assert not (tmp_path / "exp" / "runs").exists()


def test_collect_without_prepare_and_no_state_left_behind(tmp_path, tiny_model_dir):
    """collect() lists the grid itself when prepare() has not run; the experiment's quiet
    progress settings hold while it runs and are undone afterwards."""
    from transformers.utils import logging as hf_logging

    from taskdiv.experiments.grid import load_config
    from taskdiv.common.progress import quiet_inner_progress as _quiet_inner_progress
    from taskdiv.experiments.runner import Experiment

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_model_dir))
    table = Experiment(cfg, tmp_path / "exp").collect()
    assert len(table) == 0 and not (tmp_path / "exp" / "results.csv").exists()

    os.environ.pop("TASKDIV_INNER_PROGRESS_OFF", None)
    hf_logging.enable_progress_bar()
    with _quiet_inner_progress():
        assert os.environ["TASKDIV_INNER_PROGRESS_OFF"] == "1" and not hf_logging.is_progress_bar_enabled()
    assert "TASKDIV_INNER_PROGRESS_OFF" not in os.environ and hf_logging.is_progress_bar_enabled()
    # A setting made before is put back as it was; ours=False leaves it alone.
    os.environ["TASKDIV_INNER_PROGRESS_OFF"] = "before"
    try:
        with _quiet_inner_progress():
            assert os.environ["TASKDIV_INNER_PROGRESS_OFF"] == "1"
        assert os.environ["TASKDIV_INNER_PROGRESS_OFF"] == "before"
        with _quiet_inner_progress(ours=False):
            assert os.environ["TASKDIV_INNER_PROGRESS_OFF"] == "before" and not hf_logging.is_progress_bar_enabled()
        assert os.environ["TASKDIV_INNER_PROGRESS_OFF"] == "before" and hf_logging.is_progress_bar_enabled()
    finally:
        os.environ.pop("TASKDIV_INNER_PROGRESS_OFF", None)



def test_a_run_counts_the_training_time_of_the_processes_before_it(tmp_path):
    """train_seconds in results.csv: a run resumed from a checkpoint adds the training before the
    resume; a run whose model an earlier process finished adds that whole training."""
    from taskdiv.experiments.runner import _earlier_training

    train_dir = tmp_path / "train"
    assert _earlier_training(train_dir, time.time()) == 0.0  # not trained (or made before the metrics)
    train_dir.mkdir()
    (train_dir / "train_metrics.json").write_text(json.dumps({"train_runtime": 30.0, "train_seconds": 100.0}))
    written = (train_dir / "train_metrics.json").stat().st_mtime
    assert _earlier_training(train_dir, written - 5) == 70.0   # trained here after a resume
    assert _earlier_training(train_dir, written + 5) == 100.0  # trained by an earlier process
    (train_dir / "train_metrics.json").write_text(json.dumps({"train_runtime": 30.0}))  # by older code
    assert _earlier_training(train_dir, time.time() + 5) == 0.0

def test_the_repository_does_not_ignore_committed_experiment_results():
    # A root .gitignore entry `runs/` once matched results/*/runs too, hiding every run.
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    from taskdiv.experiments.runner import GITIGNORE

    (tmp := root / "results" / "probe-exp").mkdir(parents=True, exist_ok=True)
    try:
        (tmp / ".gitignore").write_text(GITIGNORE)
        paths = ["runs/r/result.json", "runs/r/done", "runs/r/eval/per_task.csv", "runs/r/selection/ids.txt",
                 "runs/r/selection/allocation.csv", "runs/r/train/train_metrics.json", "scores/scores.csv"]
        for rel in paths:
            check = subprocess.run(["git", "check-ignore", "-q", f"results/probe-exp/{rel}"], cwd=root)
            assert check.returncode == 1, f"{rel} would not be committed"
        for rel in ("runs/r/train/adapter/adapter_model.safetensors", "runs/r/data.jsonl", "scores/cache.sqlite",
                    "runs/r/annotations.jsonl", "runs/r/selection/selection.jsonl"):
            check = subprocess.run(["git", "check-ignore", "-q", f"results/probe-exp/{rel}"], cwd=root)
            assert check.returncode == 0, f"{rel} would be committed"
    finally:
        shutil.rmtree(tmp)


def test_a_run_that_selects_what_a_finished_run_selected_is_not_trained_again(tmp_path, tiny_model_dir):
    # At one prompt per task, task-diversity and weighted-task-diversity choose the same ids in
    # the same order: the second takes the first's evaluation. Random's selection differs: trained.
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, strategies=["task-diversity", "weighted-task-diversity",
                                                                        "random"],
                       budgets=[2], seeds=[0], base=False, full=False)
    exp = tmp_path / "exp"
    assert main(["experiment", str(cfg), "--out", str(exp)]) == 0
    runs = exp / "runs"
    td, wtd = runs / "task-diversity-b2-s0", runs / "weighted-task-diversity-b2-s0"
    assert (td / "selection" / "ids.txt").read_text() == (wtd / "selection" / "ids.txt").read_text()
    results = pd.read_csv(exp / "results.csv").set_index("run")
    assert results.loc[wtd.name, "same_as"] == td.name and results.loc[wtd.name, "train_seconds"] == 0
    assert results.loc[wtd.name, "accuracy"] == results.loc[td.name, "accuracy"]
    assert results.loc[wtd.name, "strategy"] == "weighted-task-diversity"
    assert pd.isna(results.loc[td.name, "same_as"]) and pd.isna(results.loc[random_run := "random-b2-s0", "same_as"])
    assert not (wtd / "train").exists() and (runs / random_run / "train" / "train_metrics.json").exists()
    assert (wtd / "eval" / "per_task.csv").read_text() == (td / "eval" / "per_task.csv").read_text()
    assert main(["report", str(exp)]) == 0
    assert f"took its evaluation instead of training the same model again: {wtd.name} = {td.name}." in \
        (exp / "report.md").read_text()


def test_resuming_with_other_code_than_the_finished_runs_says_so(tmp_path, tiny_model_dir, caplog):
    from taskdiv.experiments.provenance import code_version

    if code_version() is None:
        pytest.skip("not a git checkout: no commit to compare")
    exp = tmp_path / "exp"
    base_only = {"strategies": [], "budgets": [], "seeds": [0], "full": False}
    assert main(["experiment", str(write_config(tmp_path / "a.yaml", tiny_model_dir, **base_only)),
                 "--out", str(exp)]) == 0
    result = exp / "runs" / "base" / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "code": "0449f63" + "0" * 33}))
    more = write_config(tmp_path / "b.yaml", tiny_model_dir, **{**base_only, "strategies": ["random"], "budgets": [4]})
    with caplog.at_level("WARNING"):
        assert main(["experiment", str(more), "--out", str(exp)]) == 0
    assert "1 finished run(s) of" in caplog.text and "made by other code (1 at 0449f63)" in caplog.text


def test_a_grid_experiment_reruns_over_the_config_it_wrote(tmp_path, tiny_model_dir, capsys, caplog):
    from taskdiv.common import config as configmod
    from taskdiv.experiments.grid import load_config

    exp = tmp_path / "exp"
    path = write_config(tmp_path / "g.yaml", tiny_model_dir, grid=[{"strategies": ["random"], "budgets": [4]}],
                        seeds=[0], full=False, base=False)
    assert main(["experiment", str(path), "--out", str(exp)]) == 0
    written = yaml.safe_load((exp / "config.yaml").read_text())
    assert "grid" in written and not {"strategies", "budgets", "full_seeds"} & set(written)
    assert load_config(exp / "config.yaml") == load_config(path)  # a config a user may run as it is
    capsys.readouterr()
    for argv in (["--dry-run"], []):
        assert main(["experiment", str(path), "--out", str(exp), *argv]) == 0, capsys.readouterr().err
    # As versions before this one wrote it (every key: the grid's unused strategies and budgets too).
    (exp / "config.yaml").write_text(yaml.safe_dump(configmod.to_dict(load_config(path))))
    with caplog.at_level("INFO"):
        assert main(["experiment", str(path), "--out", str(exp)]) == 0, capsys.readouterr().err
    assert "1 run(s), 1 already done" in caplog.text
    caplog.clear()
    # results.csv without the run directories behind it (a copy of the tables only): the rerun
    # makes the runs again and says that their rows will be replaced.
    shutil.rmtree(exp / "runs")
    with caplog.at_level("WARNING"):
        assert main(["experiment", str(path), "--out", str(exp)]) == 0
    assert f"{exp / 'results.csv'} lists 1 run(s) of this grid that have no finished run directory here " \
           f"(random-b4-s0)" in caplog.text
    assert list(pd.read_csv(exp / "results.csv")["run"]) == ["random-b4-s0"]


@pytest.mark.parametrize("study", ["cpu-small", "cpu-skewed"])
def test_a_committed_study_needs_no_pool(tmp_path, monkeypatch, capsys, study):
    """The committed studies' pools are BIG-bench, which no index serves any more: a finished
    grid is collated and reported from its run directories; an unfinished one says which runs
    need the pool and that `report` needs none."""
    root = Path(__file__).parents[1]
    exp = tmp_path / study
    shutil.copytree(root / "results" / study, exp)
    monkeypatch.setenv("TASKDIV_BIGBENCH", str(tmp_path / "no-bigbench-here"))
    before = (exp / "results.csv").read_text()
    assert main(["experiment", str(root / "configs" / f"{study}.yaml"), "--out", str(exp)]) == 0
    assert pd.read_csv(exp / "results.csv").equals(pd.read_csv(io.StringIO(before)))
    capsys.readouterr()
    assert main(["experiment", str(root / "configs" / f"{study}.yaml"), "--out", str(exp), "--dry-run"]) == 0
    assert "already done; pool not loaded (every run is finished)" in capsys.readouterr().out
    assert main(["report", str(exp)]) == 0
    assert (exp / "report.md").read_text() == (root / "results" / study / "report.md").read_text()
    (exp / "runs" / "random-b214-s1" / "done" if study == "cpu-skewed" else
     next((exp / "runs").glob("random-*-s1")) / "done").unlink()
    capsys.readouterr()
    assert main(["experiment", str(root / "configs" / f"{study}.yaml"), "--out", str(exp)]) == 1
    err = capsys.readouterr().err
    assert "no-bigbench-here" in err and "1 of the grid's" in err and "need the pool" in err
    assert f"taskdiv report {exp}" in err


def test_the_many_task_study_reports_from_its_committed_files(tmp_path):
    """results/cpu-many (committed run by run while the grid runs) regenerates its report from
    the committed files alone: no pool, no model, no rerun."""
    root = Path(__file__).parents[1]
    exp = tmp_path / "cpu-many"
    shutil.copytree(root / "results" / "cpu-many", exp)
    (exp / "report.md").unlink()
    assert main(["report", str(exp)]) == 0
    assert (exp / "report.md").read_text() == (root / "results" / "cpu-many" / "report.md").read_text()
    # The confidence-gain plot has the tuned model's panel (the two-round runs) beside the base model's.
    png = (exp / "confidence_gain.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") > 1000  # width: two panels
    assert "![task confidence against gain, base and tuned model](confidence_gain.png)" in \
        (exp / "report.md").read_text()
    # The commit each run's result.json names, counted: the study's worktree moved once.
    made = pd.read_csv(exp / "results.csv")["code"].str[:7].value_counts()
    line = next(ln for ln in (exp / "report.md").read_text().splitlines() if ln.startswith("Runs: "))
    code = line.split(" Code: ")[1].rstrip(".").split(", ")
    assert code[0] == f"{made.iloc[0]} run(s) at {made.index[0]}" and len(code) == len(made)
    assert sorted(int(c.split()[0]) for c in code) == sorted(made.tolist())


@pytest.mark.slow
def test_two_round_strategy_end_to_end(tmp_path, tiny_model_dir):
    """Round 1 (task-diversity, half the budget) is annotated and trained on, the round-1
    model re-scores a per-task sample of the rest, round 2 (weighted-task-diversity on those
    confidences) excludes round 1's prompts, and the final model trains on both. A rerun
    does nothing; a run killed after round 1's training resumes from there."""
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, strategies=["two-round"], budgets=[8], seeds=[0],
                       full=False, two_round={"share": 0.5, "rescore_per_task": 3})
    exp = tmp_path / "exp"
    assert main(["experiment", str(cfg), "--out", str(exp)]) == 0
    d = exp / "runs" / "two-round-b8-s0"
    assert (d / "done").exists()
    rows = [json.loads(x) for x in (d / "selection" / "selection.jsonl").read_text().splitlines()]
    first = [r["id"] for r in rows if r["round"] == 1]
    second = [r["id"] for r in rows if r["round"] == 2]
    assert len(first) == 4 and len(second) == 4 and not set(first) & set(second)
    assert [r["rank"] for r in rows] == list(range(1, 9))
    round1 = [json.loads(x)["id"] for x in (d / "round1" / "selection" / "selection.jsonl").read_text().splitlines()]
    assert round1 == first
    # Round 1 is task-diversity: both tasks get two.
    assert sorted(r["task"] for r in rows if r["round"] == 1) == ["bbh/navigate"] * 2 + ["bbh/snarks"] * 2
    scores = pd.read_csv(d / "round1" / "scores" / "scores.csv")
    assert len(scores) == 6 and not set(scores["id"]) & set(first)  # 3 per task, none of round 1's
    cfg1 = yaml.safe_load((d / "round1" / "scores" / "config.yaml").read_text())
    assert cfg1["model"] == str(d / "round1" / "train")  # the tuned model scored them
    alloc = pd.read_csv(d / "selection" / "allocation.csv")
    assert alloc["allocated"].sum() == 8 and (alloc["round1"] + alloc["round2"]).equals(alloc["allocated"])
    assert json.loads((d / "result.json").read_text())["accuracy"] >= 0
    assert not (d / "round1" / "train" / "adapter").exists()  # weights go after the run
    done = (d / "done").stat().st_mtime_ns
    assert main(["experiment", str(cfg), "--out", str(exp)]) == 0
    assert (d / "done").stat().st_mtime_ns == done
    # Killed after round 1's model: the rest resumes from the files each step left.
    for p in [d / "done", d / "result.json", d / "data.jsonl", d / "selection" / "selection.jsonl",
              d / "round2" / "selection.jsonl"]:
        p.unlink()
    shutil.rmtree(d / "train")
    assert main(["experiment", str(cfg), "--out", str(exp)]) == 0
    again = [json.loads(x) for x in (d / "selection" / "selection.jsonl").read_text().splitlines()]
    assert [r["id"] for r in again] == [r["id"] for r in rows]


def test_two_round_options_are_checked_before_any_run(tmp_path, tiny_model_dir, capsys):
    for bad, message in (({"share": 1.0}, "share=1.0 must be in"),
                         ({"first": "uncertainty"}, "needs confidences"),
                         ({"second": "nope"}, "is not a selection strategy"),
                         ({"sharee": 0.3}, "unknown key")):
        cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, strategies=["two-round"], budgets=[8], seeds=[0],
                           two_round=bad)
        assert main(["experiment", str(cfg), "--out", str(tmp_path / "exp"), "--dry-run"]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "exp").exists()


def test_processes_share_a_grid_run_by_run(tmp_path, tiny_model_dir, caplog):
    # Another process holds run s0's lock (the test, here): the experiment leaves s0, makes s1,
    # then waits for s0. The holder lets go without finishing it (killed): the experiment makes it.
    import fcntl
    import threading

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, strategies=["random"], budgets=[4], seeds=[0, 1],
                       base=False, full=False)
    exp = tmp_path / "exp"
    held = exp / "runs" / "random-b4-s0"
    (exp / ".claims" / held.name).mkdir(parents=True)
    fd = os.open(exp / ".claims" / held.name, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["experiment", str(cfg), "--out", str(exp)])))
    caplog.set_level("INFO", logger="taskdiv")
    try:
        worker.start()
        deadline = time.time() + 120
        while time.time() < deadline and "waiting for another taskdiv process making random-b4-s0" not in caplog.text:
            assert worker.is_alive(), "the experiment ended with a run held by another process"
            time.sleep(0.2)
        assert "random-b4-s0: another process is making it; on to the next run" in caplog.text
        assert (exp / "runs" / "random-b4-s1" / "done").exists() and not (held / "done").exists()
        time.sleep(1)
        assert worker.is_alive() and not (held / "done").exists(), "made a run another process held"
    finally:
        os.close(fd)  # releases the lock
        worker.join(timeout=120)
    assert codes == [0] and (held / "done").exists()
    assert sorted(pd.read_csv(exp / "results.csv")["run"]) == ["random-b4-s0", "random-b4-s1"]


def test_a_run_waits_for_the_earlier_run_another_process_makes_of_its_selection(tmp_path, tiny_model_dir, caplog):
    # task-diversity and weighted-task-diversity at one prompt per task select the same ids. Another
    # process (the test, here) is making task-diversity: weighted-task-diversity waits for it, then
    # takes its evaluation instead of training the same model beside it.
    import fcntl
    import threading

    td, wtd = "task-diversity-b2-s0", "weighted-task-diversity-b2-s0"
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, strategies=["task-diversity", "weighted-task-diversity"],
                       budgets=[2], seeds=[0], base=False, full=False)
    made = tmp_path / "made"  # the other process's finished run, made beforehand
    assert main(["experiment", str(write_config(tmp_path / "td.yaml", tiny_model_dir, strategies=["task-diversity"],
                                                budgets=[2], seeds=[0], base=False, full=False)),
                 "--out", str(made)]) == 0
    exp = tmp_path / "exp"
    shutil.copytree(made / "runs" / td / "selection", exp / "runs" / td / "selection")  # it has selected so far
    (exp / ".claims" / td).mkdir(parents=True)
    fd = os.open(exp / ".claims" / td, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["experiment", str(cfg), "--out", str(exp)])))
    caplog.set_level("INFO", logger="taskdiv")
    waiting = f"waiting for another taskdiv process making {td}, which selected what {wtd} did"
    try:
        worker.start()
        deadline = time.time() + 120
        while time.time() < deadline and waiting not in caplog.text:
            assert worker.is_alive(), "the experiment ended without waiting for the run of the same selection"
            time.sleep(0.2)
        assert not (exp / "runs" / wtd / "train").exists(), "trained what another process is training"
        for part in (made / "runs" / td).iterdir():  # the other process finishes its run
            if part.name not in ("selection", "done"):
                (shutil.copytree if part.is_dir() else shutil.copy2)(part, exp / "runs" / td / part.name)
        shutil.copy2(made / "runs" / td / "done", exp / "runs" / td / "done")
    finally:
        os.close(fd)
        worker.join(timeout=120)
    assert codes == [0]
    results = pd.read_csv(exp / "results.csv").set_index("run")
    assert results.loc[wtd, "same_as"] == td and not (exp / "runs" / wtd / "train").exists()
    assert results.loc[wtd, "accuracy"] == results.loc[td, "accuracy"]
