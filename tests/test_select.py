"""`taskdiv select` and `taskdiv pool` end to end through the CLI, including bad input."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import write_jsonl

from taskdiv.cli import COMMANDS, main


def run(*args):
    return main([str(a) for a in args])


def read_selection(out):
    return [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("words", [list(w) for w in COMMANDS] + [["env"], ["pool"], []])
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        main(words + ["--help"])
    assert e.value.code == 0
    assert "usage: taskdiv" in capsys.readouterr().out


def test_console_script_help_is_fast_and_torch_free():
    code = ("import sys; from taskdiv.cli import main\n"
            "try: main(['select', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'select --help imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_env(capsys):
    assert run("env") == 0
    out = capsys.readouterr().out
    assert "taskdiv 0.1.0" in out and "numpy" in out


def test_select_writes_selection_and_allocation(small_pool, tmp_path, capsys):
    out = tmp_path / "sel"
    assert run("select", small_pool, "--budget", "6", "--strategy", "task-diversity", "--seed", "3", "--out", out) == 0
    rows = read_selection(out)
    assert len(rows) == 6 and [r["rank"] for r in rows] == list(range(1, 7))
    assert {r["strategy"] for r in rows} == {"task-diversity"} and {r["seed"] for r in rows} == {3}
    assert all(r["response"].startswith("answer") for r in rows)
    alloc = pd.read_csv(out / "allocation.csv")
    assert list(alloc.columns) == ["task", "available", "taken", "confidence", "weight", "allocated"]
    assert alloc.set_index("task")["allocated"].to_dict() == {"a": 2, "b": 2, "c": 2}
    assert "total: 6 prompt(s)" in capsys.readouterr().out
    assert (out / "config.yaml").exists()


def test_select_percent_budget_and_config_file(small_pool, tmp_path):
    cfg = tmp_path / "sel.yaml"
    cfg.write_text("strategy: random\nbudget: 50%\nseed: 1\n")
    out = tmp_path / "sel"
    assert run("select", small_pool, "--config", cfg, "--budget", "25%", "--out", out) == 0
    rows = read_selection(out)
    assert len(rows) == 4 and rows[0]["strategy"] == "random"  # 25% of 16, CLI over YAML


def test_weighted_with_scores_and_exclude_rounds(small_pool, tmp_path):
    scores = tmp_path / "scores.csv"
    ids = [f"a{i}" for i in range(2)] + [f"b{i}" for i in range(5)] + [f"c{i}" for i in range(9)]
    conf = [0.9] * 2 + [0.2] * 5 + [0.8] * 9
    pd.DataFrame({"id": ids, "confidence": conf}).to_csv(scores, index=False)
    out1 = tmp_path / "r1"
    assert run("select", small_pool, "--budget", "6", "--scores", scores, "--out", out1) == 0
    first = {r["id"] for r in read_selection(out1)}
    alloc = pd.read_csv(out1 / "allocation.csv").set_index("task")
    assert alloc.loc["b", "allocated"] > alloc.loc["c", "allocated"]
    assert all("confidence" in r for r in read_selection(out1))
    out2 = tmp_path / "r2"
    assert run("select", small_pool, "--budget", "6", "--scores", scores, "--exclude", out1 / "selection.jsonl",
               "--out", out2) == 0
    second = {r["id"] for r in read_selection(out2)}
    assert not first & second and len(second) == 6
    alloc2 = pd.read_csv(out2 / "allocation.csv").set_index("task")
    assert alloc2["taken"].sum() == 6 and (alloc2["taken"] + alloc2["allocated"] <= [2, 5, 9]).all()


def test_full_needs_no_budget(small_pool, tmp_path):
    out = tmp_path / "full"
    assert run("select", small_pool, "--strategy", "full", "--out", out) == 0
    assert len(read_selection(out)) == 16


def test_pool_info(small_pool, capsys):
    assert run("pool", "info", small_pool) == 0
    out = capsys.readouterr().out
    assert "prompts: 16  tasks: 3" in out and "c" in out


def test_pool_export_roundtrip(small_pool, tmp_path):
    out = tmp_path / "exported.parquet"
    assert run("pool", "export", small_pool, "--out", out) == 0
    assert len(pd.read_parquet(out)) == 16


# --------------------------------------------------------------------------- bad input


def bad(args, capsys, match):
    code = run(*args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert match in err, err
    return err


@pytest.mark.parametrize("budget,match", [("0", "positive"), ("-3", "positive"), ("17", "16 prompt"),
                                          ("ten", "neither a count")])
def test_bad_budgets(small_pool, tmp_path, capsys, budget, match):
    out = tmp_path / "o"
    bad(["select", small_pool, "--budget", budget, "--strategy", "random", "--out", out], capsys, match)
    assert not out.exists()


def test_strategy_typo(small_pool, tmp_path, capsys):
    bad(["select", small_pool, "--budget", "3", "--strategy", "randon", "--out", tmp_path / "o"], capsys,
        "Did you mean 'random'")


def test_confidence_strategy_without_scores(small_pool, tmp_path, capsys):
    bad(["select", small_pool, "--budget", "3", "--strategy", "weighted-task-diversity", "--out", tmp_path / "o"],
        capsys, "needs prompt confidences: pass --scores")
    bad(["select", small_pool, "--budget", "3", "--strategy", "uncertainty", "--out", tmp_path / "o"],
        capsys, "--scores")


def test_scores_for_foreign_ids(small_pool, tmp_path, capsys):
    scores = tmp_path / "s.csv"
    pd.DataFrame({"id": ["a0", "q1", "q2"], "confidence": [0.1, 0.2, 0.3]}).to_csv(scores, index=False)
    bad(["select", small_pool, "--budget", "3", "--scores", scores, "--out", tmp_path / "o"], capsys,
        "2 of 3 scored id(s) are not in the pool")


def test_weighted_task_without_score(small_pool, tmp_path, capsys):
    scores = tmp_path / "s.csv"
    pd.DataFrame({"id": ["a0", "b1"], "confidence": [0.1, 0.2]}).to_csv(scores, index=False)
    bad(["select", small_pool, "--budget", "3", "--scores", scores, "--out", tmp_path / "o"], capsys,
        "no scored prompt: c")


def test_confidence_out_of_range(small_pool, tmp_path, capsys):
    scores = tmp_path / "s.csv"
    pd.DataFrame({"id": ["a0", "b1"], "confidence": [0.1, -0.2]}).to_csv(scores, index=False)
    bad(["select", small_pool, "--budget", "3", "--scores", scores, "--out", tmp_path / "o"], capsys,
        "row 2, field 'confidence'")


def test_a_bad_pool_is_reported_before_bad_scores(tmp_path, capsys):
    # select reads the scores file in a second thread while the pool loads; the pool still speaks first.
    pool = tmp_path / "p.jsonl"
    pool.write_text('{"id": "a", "prompt": "p", "task": "t"}\n{"id": "b", "prompt": " ", "task": "t"}\n')
    scores = tmp_path / "s.csv"
    pd.DataFrame({"id": ["a", "b"], "confidence": [0.1, 7.0]}).to_csv(scores, index=False)
    bad(["select", pool, "--budget", "1", "--scores", scores, "--out", tmp_path / "o"], capsys,
        "p.jsonl, line 2, field 'prompt'")
    pool.write_text('{"id": "a", "prompt": "p", "task": "t"}\n{"id": "b", "prompt": "q", "task": "t"}\n')
    bad(["select", pool, "--budget", "1", "--scores", scores, "--out", tmp_path / "o"], capsys,
        "s.csv, row 2, field 'confidence'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,match", [
    ('{"id": "1", "prompt": "p", "task": "t"}\n{"id": "2", "task": "t"}\n', "line 2, field 'prompt'"),
    ('{"id": "1", "task": "t"}\n', "no prompt field 'prompt'"),
    ('{"id": "1", "prompt": "p", "task": "t"}\n{"id": "2", "prompt": "q", "task": null}\n', "line 2, field 'task'"),
    ('{"id": "1", "prompt": "p", "task": "t"}\n{"id": "1", "prompt": "q", "task": "t"}\n', "duplicate id '1'"),
    ('{"id": "1", "prompt": "", "task": "t"}\n', "missing or empty prompt"),
    ('{"id": "1", "prompt": "p", "task": "t"}\nnot json\n', "line 2: malformed JSON"),
])
def test_bad_pool_rows(tmp_path, capsys, content, match):
    pool = tmp_path / "bad.jsonl"
    pool.write_text(content)
    out = tmp_path / "o"
    err = bad(["select", pool, "--budget", "1", "--strategy", "random", "--out", out], capsys, match)
    assert "bad.jsonl" in err
    assert not out.exists()


def test_unknown_config_key(small_pool, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("strategyy: random\n")
    bad(["select", small_pool, "--config", cfg, "--out", tmp_path / "o"], capsys, "strategyy (did you mean strategy?)")


def test_within_only_for_task_strategies(small_pool, tmp_path, capsys):
    bad(["select", small_pool, "--budget", "3", "--strategy", "random", "--within", "k-center", "--out",
         tmp_path / "o"], capsys, "apply to task strategies")


def test_writes_nothing_over_previous_output_on_error(small_pool, tmp_path, capsys):
    out = tmp_path / "o"
    assert run("select", small_pool, "--budget", "3", "--strategy", "random", "--out", out) == 0
    before = (out / "selection.jsonl").read_text()
    bad(["select", small_pool, "--budget", "99", "--strategy", "random", "--out", out], capsys, "larger than the pool")
    assert (out / "selection.jsonl").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["allocation.csv", "config.yaml", "selection.jsonl"]


def test_task_labels_required_unless_auto(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(4)])
    bad(["select", pool, "--budget", "2", "--strategy", "random", "--out", tmp_path / "o"], capsys, "--tasks auto")


def test_outputs_have_normal_permissions(small_pool, tmp_path):
    import os

    out = tmp_path / "o"
    assert run("select", small_pool, "--budget", "3", "--strategy", "random", "--out", out) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "selection.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask


def test_pool_split_uses_the_sources_rule_and_feeds_evaluate(tmp_path):
    """`taskdiv pool split` on a user's file gives the held-out part the built-in sources give
    for the same items (one rule), is disjoint and deterministic, and its test.jsonl loads
    as an evaluation pool (targets from the responses)."""
    import json

    from taskdiv.evaluation.heldout import load_heldout
    from taskdiv.pool.load import load_pool

    spec = "bbh:navigate,word_sorting?split=all"
    src = tmp_path / "pool.jsonl"
    assert main(["pool", "export", spec, "--out", str(src)]) == 0
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    for r in rows:  # a user's file: no choices or targets
        r.pop("choices", None)
        r.pop("targets", None)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["pool", "split", str(src), "--test-per-task", "0.2", "--seed", "0", "--out", str(tmp_path / "s")]) == 0
    kept = load_pool(str(tmp_path / "s" / "pool.jsonl")).frame
    test = load_heldout(str(tmp_path / "s" / "test.jsonl"), None)
    assert set(test["id"]) == set(load_pool("bbh:navigate,word_sorting?split=test").frame["id"])
    assert not set(kept["id"]) & set(test["id"]) and len(kept) + len(test) == len(rows)
    assert (test["targets"].map(len) == 1).all() and test.groupby("task").size().eq(40).all()
    first = (tmp_path / "s" / "test.jsonl").read_bytes()
    assert main(["pool", "split", str(src), "--test-per-task", "10", "--out", str(tmp_path / "t")]) == 0
    assert load_heldout(str(tmp_path / "t" / "test.jsonl"), None).groupby("task").size().eq(10).all()
    assert main(["pool", "split", str(src), "--test-per-task", "0.2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "test.jsonl").read_bytes() == first
    assert main(["pool", "split", str(src), "--test-per-task", "-1", "--out", str(tmp_path / "u")]) == 1
    assert not (tmp_path / "u").exists()


def test_split_pool_splits_once_into_the_parts_split_tasks_gives(tmp_path, monkeypatch):
    """`split_pool` splits each task once (before: twice, once per part) and its parts are still
    split_tasks' pool and test splits of the same items: rows, order, columns, test targets."""
    from taskdiv.pool import splits
    from taskdiv.pool.container import Pool
    from taskdiv.pool.load import load_pool
    from taskdiv.selection.commands import split_pool

    rows = [{"id": f"{t}{i}", "task": t, "prompt": f"q{i % 7}" if t == "b" else f"{t} q{i}",
             "response": f"r{i % 7}" if t == "b" else f"{t} r{i}"} for t, n in (("a", 3), ("b", 12), ("c", 20))
            for i in range(n)]
    rows += [{"id": "copy", "task": "c", "prompt": "q1", "response": "r1"}]  # an item of b, in c too
    pool = load_pool(str(write_jsonl(tmp_path / "pool.jsonl", rows)))
    options = splits.SplitOptions(test=0.25, seed=3)
    frame = pool.frame.assign(_key=[splits.split_key(p, r) for p, r in zip(pool.frame["prompt"],
                                                                           pool.frame["response"])])
    tasks = dict(list(frame.groupby("task", sort=True)))
    want = {part: set(splits.split_tasks(tasks, splits.SplitOptions(split=part, test=0.25, seed=3),
                                         where="w")["id"]) for part in ("pool", "test")}
    calls = []
    real = splits.split_task
    monkeypatch.setattr(splits, "split_task", lambda frame, **kw: calls.append(1) or real(frame, **kw))
    kept, test = split_pool(Pool(pool.frame, pool.source), options.test, options.seed)
    assert len(calls) == 3, "each task split once"
    assert kept["id"].tolist() == [i for i in pool.frame["id"] if i in want["pool"]]
    assert test["id"].tolist() == [i for i in pool.frame["id"] if i in want["test"]]
    assert kept.equals(pool.frame[pool.frame["id"].isin(want["pool"])].reset_index(drop=True))
    assert test["targets"].tolist() == [[r] for r in test["response"]]
    assert not set(kept["id"]) & set(test["id"])
