"""The Python API (`import taskdiv`): its docstring examples run, and a notebook's whole job
on a DataFrame and on a datasets.Dataset gives what the CLI gives on the same files."""
import doctest
import json

import pandas as pd
import pytest

import taskdiv
from taskdiv import api
from taskdiv.cli import main
from taskdiv.common.errors import DataError, TaskdivError


def test_every_public_name_has_a_docstring_with_an_example_and_the_examples_pass(monkeypatch):
    monkeypatch.setenv("TASKDIV_SHARED_SCORES", "0")
    for name in ("load_pool", "score", "select", "allocate"):
        assert ">>> " in (getattr(taskdiv, name).__doc__ or ""), name
    assert set(taskdiv.__all__) >= {"load_pool", "score", "select", "allocate"}
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0, result
    # Every public name is the API's, even once the subpackages are imported (a subpackage's
    # import sets an attribute of its name on the package: `taskdiv.report` is a module).
    import importlib
    import types

    for module in ("evaluation.commands", "experiments.runner", "report.commands", "training"):
        importlib.import_module(f"taskdiv.{module}")
    for name in set(taskdiv.__all__) - {"__version__"}:
        assert not isinstance(getattr(taskdiv, name), types.ModuleType), name


def _rows():
    sizes = {"refunds": 3, "billing": 6, "shipping": 10}
    return [{"id": f"{t}-{i}", "prompt": f"Customer message {i} about {t}: what do we answer?", "task": t,
             "response": f"answer {i}"} for t, n in sizes.items() for i in range(n)]


def test_load_pool_validates_in_memory_rows_as_the_cli_validates_files():
    frame = pd.DataFrame(_rows())
    assert len(taskdiv.load_pool(frame)) == 19
    with pytest.raises(DataError, match=r"DataFrame, row 3, field 'task'"):
        taskdiv.load_pool(frame.assign(task=["t", "t", None] + ["t"] * 16))
    with pytest.raises(DataError, match=r"field 'prompt'"):
        taskdiv.load_pool(frame.drop(columns="prompt"))
    with pytest.raises(DataError, match="duplicate id"):
        taskdiv.load_pool(frame.assign(id="same"))
    with pytest.raises(TaskdivError, match="cannot read a pool from a int"):
        taskdiv.load_pool(3)
    datasets = pytest.importorskip("datasets")
    with pytest.raises(TaskdivError, match="several splits"):
        taskdiv.load_pool(datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows())}))


@pytest.mark.parametrize("kind", ["DataFrame", "Dataset"])
def test_a_notebook_does_the_whole_job_and_matches_the_cli(kind, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TASKDIV_SHARED_SCORES", "1")
    monkeypatch.setenv("TASKDIV_CACHE", str(tmp_path / "cache"))
    rows = _rows()
    if kind == "DataFrame":
        data = pd.DataFrame(rows)
    else:
        datasets = pytest.importorskip("datasets")
        data = datasets.Dataset.from_list(rows)
    pool = taskdiv.load_pool(data)
    scores, tasks = taskdiv.score(pool, model=str(tiny_model_dir), max_new_tokens=3, per_task=4)
    assert len(scores) == 3 + 4 + 4 and tasks.set_index("task")["available"].to_dict() == {
        "billing": 6, "refunds": 3, "shipping": 10}
    chosen, allocation = taskdiv.select(data, 9, scores=scores, seed=3)
    if kind == "Dataset":
        assert type(chosen).__name__ == "Dataset"
        chosen, allocation = chosen.to_pandas(), allocation.to_pandas()
    # The CLI on the same files: the same scores (from the shared cache) and the same selection.
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(path), "--model", str(tiny_model_dir), "--max-new-tokens", "3", "--per-task", "4",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    cli_scores = pd.read_csv(tmp_path / "s" / "scores.csv")
    assert cli_scores["id"].tolist() == scores["id"].tolist()
    assert cli_scores["confidence"].round(6).tolist() == scores["confidence"].round(6).tolist()
    assert main(["select", str(path), "--budget", "9", "--scores", str(tmp_path / "s" / "scores.csv"), "--seed", "3",
                 "--out", str(tmp_path / "sel")]) == 0
    cli_ids = [json.loads(x)["id"] for x in (tmp_path / "sel" / "selection.jsonl").read_text().splitlines()]
    assert chosen["id"].tolist() == cli_ids
    assert allocation["allocated"].sum() == 9
    # Scores from a column of the pool, and ids to exclude as a list.
    with_conf = pd.DataFrame(rows).merge(scores[["id", "confidence"]], on="id", how="left")
    again, _ = taskdiv.select(with_conf, 9, scores="confidence", seed=3)
    assert again["id"].tolist() == cli_ids
    rest, _ = taskdiv.select(pd.DataFrame(rows), 5, strategy="task-diversity", exclude=cli_ids[:4])
    assert not set(rest["id"]) & set(cli_ids[:4])
    # A list naming none of the pool's prompts: the error names the list, not a temporary file.
    with pytest.raises(TaskdivError) as err:
        taskdiv.select(pd.DataFrame(rows), 5, strategy="task-diversity", exclude=["not-an-id", "nor-this"])
    assert str(err.value).startswith("exclude (a list of 2 id(s)): none of its 2 id(s) is in the pool")
    assert "taskdiv-select-" not in str(err.value)
    # ... nor all of them (the ids as a pandas Series, as a caller would pass a column).
    with pytest.raises(TaskdivError, match=r"^exclude \(a list of 19 id\(s\)\) names every prompt of the pool \(19\)"):
        taskdiv.select(pd.DataFrame(rows), 5, strategy="task-diversity", exclude=pd.DataFrame(rows)["id"])
    # A second round's scoring leaves round 1's prompts out: as a list, or as its selection file.
    round1 = [r["id"] for r in rows if r["task"] == "refunds"] + cli_ids[:2]
    rest_scores, rest_tasks = taskdiv.score(pool, model=str(tiny_model_dir), max_new_tokens=3, per_task=4,
                                            exclude=round1, out=tmp_path / "round2")
    assert f"exclude: <a list of {len(round1)} id(s)>" in (tmp_path / "round2" / "config.yaml").read_text()
    assert not set(rest_scores["id"]) & set(round1) and "refunds" not in set(rest_tasks["task"])
    (tmp_path / "round1.txt").write_text("".join(f"{i}\n" for i in round1))
    from_file, _ = taskdiv.score(pool, model=str(tiny_model_dir), max_new_tokens=3, per_task=4,
                                 exclude=tmp_path / "round1.txt")
    assert from_file["id"].tolist() == rest_scores["id"].tolist()


def test_the_error_types_are_names_of_the_package():
    """A notebook catches taskdiv's errors without knowing its layout."""
    import taskdiv

    assert taskdiv.TaskdivError is TaskdivError and taskdiv.DataError is DataError
    assert issubclass(taskdiv.DataError, taskdiv.TaskdivError)
    with pytest.raises(taskdiv.DataError):
        taskdiv.load_pool([{"id": "x", "prompt": "p", "task": "t"}, {"id": "x", "prompt": "q", "task": "t"}])


def test_a_notebook_closes_the_loop_train_evaluate_experiment_report(tiny_model_dir, tmp_path, capsys):
    """taskdiv.train on rows in memory trains what `taskdiv train` trains on the same rows in a
    file; called again it returns at once, and other options on its directory are refused.
    taskdiv.evaluate, experiment and write_report give what their commands write."""
    import torch
    from safetensors.torch import load_file

    rows = _rows()
    options = {"epochs": 1, "lr": 1e-2, "batch_size": 4, "save_steps": 100}
    run = taskdiv.train(pd.DataFrame(rows), model=str(tiny_model_dir), out=tmp_path / "api", **options)
    assert run == tmp_path / "api" and (run / "done").exists()
    config = (run / "config.yaml").read_text()
    assert "data: <DataFrame>" in config and "data_sha256: " in config
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", str(path), "--model", str(tiny_model_dir), "--out", str(tmp_path / "cli"), "--epochs", "1",
                 "--lr", "0.01", "--batch-size", "4", "--save-steps", "100", "--no-progress"]) == 0
    ours, cli = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (run, tmp_path / "cli"))
    assert ours.keys() == cli.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], cli[k])
    made = (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    assert taskdiv.train(rows, model=str(tiny_model_dir), out=run, **options) == run  # a list of dicts: the same rows
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == made
    with pytest.raises(TaskdivError, match="was trained with different options"):
        taskdiv.train(rows[:-1], model=str(tiny_model_dir), out=run, **options)
    with pytest.raises(DataError, match="no 'response' field"):
        taskdiv.train([{k: v for k, v in r.items() if k != "response"} for r in rows], model=str(tiny_model_dir),
                      out=tmp_path / "none")
    assert not (tmp_path / "none").exists()

    spec = "bbh:navigate,snarks?test=4&max_pool=8&split=test"
    results = taskdiv.evaluate(run, out=tmp_path / "eval", heldout=spec, batch_size=4, n_boot=50)
    assert results == json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["tasks"]) == {"bbh/navigate", "bbh/snarks"} and results["macro"]["n"] == 8
    # The held-out items in memory: the same answers; rows without targets are refused, nothing written.
    items = taskdiv.load_pool(spec).frame
    in_memory = taskdiv.evaluate(run, out=tmp_path / "eval-rows", heldout=items, batch_size=4, n_boot=50)
    assert in_memory["macro"] == results["macro"] and in_memory["tasks"] == results["tasks"]
    assert (tmp_path / "eval-rows" / "heldout.jsonl").exists()
    with pytest.raises(DataError, match="no 'targets' field"):
        taskdiv.evaluate(run, out=tmp_path / "eval-bad", heldout=items.drop(columns=["targets"]))
    assert not (tmp_path / "eval-bad").exists()

    config_yaml = tmp_path / "grid.yaml"
    config_yaml.write_text(json.dumps({
        "name": "notebook", "pool": "bbh:navigate,snarks?test=4&max_pool=8", "model": str(tiny_model_dir),
        "test": spec, "strategies": ["random"], "budgets": [4], "seeds": [0], "full": False,
        "train": {"epochs": 1, "batch_size": 4, "save_steps": 100}, "evaluate": {"batch_size": 4, "n_boot": 50}}))
    table = taskdiv.experiment(config_yaml, out=tmp_path / "exp")
    assert sorted(table["run"]) == ["base", "random-b4-s0"]
    assert table.equals(pd.read_csv(tmp_path / "exp" / "results.csv", dtype=table.dtypes.to_dict()))
    text = taskdiv.write_report(tmp_path / "exp")
    assert text == (tmp_path / "exp" / "report.md").read_text() and "| random |" in text
