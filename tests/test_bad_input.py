"""Issue 12: hostile input, round 2. Every command turns operating-system errors into one
taskdiv error line, writes its files as one unit, and checks its inputs before working.

The read-only cases run the CLI as user `nobody` (setpriv), because root ignores directory
modes; they are skipped, saying so, only where setpriv is missing or not permitted.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import write_jsonl

from taskdiv import cli
from taskdiv.common.errors import DataError
from taskdiv.pool.fields import FieldMap
from taskdiv.pool.load import load_pool

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("taskdiv: error:")]


def pool_rows():
    rows = []
    for task, n in (("a", 3), ("b", 5), ("c", 4)):
        rows += [{"id": f"{task}{i}", "prompt": f"Question {i} of task {task}?", "task": task,
                  "response": f"answer {i}", "choices": ["yes", "no"], "targets": ["yes"]} for i in range(n)]
    return rows


# ----------------------------------------------------------------------------- the sweep


def _can_drop_privileges() -> str | None:
    if os.geteuid() != 0:
        return None  # not root: chmod alone makes a directory read-only
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing, and root ignores directory modes"
    probe = subprocess.run([*NOBODY, "true"], capture_output=True)
    if probe.returncode != 0:
        return f"setpriv cannot drop to uid 65534 here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def world(tiny_model_dir):
    """Inputs for every command in a directory `nobody` can read (pytest's tmp dir is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="taskdiv-i12-"))
    os.chmod(root, 0o755)
    w = {"root": root}
    w["pool"] = write_jsonl(root / "pool.jsonl", pool_rows())
    w["model"] = root / "model"
    shutil.copytree(tiny_model_dir, w["model"])
    assert run("select", w["pool"], "--budget", 4, "--strategy", "random", "--out", root / "sel", "-q") == 0
    w["selection"] = root / "sel" / "selection.jsonl"
    sel = [json.loads(line) for line in w["selection"].read_text().splitlines()]
    w["answers"] = write_jsonl(root / "answers.jsonl", [{"id": r["id"], "response": "yes"} for r in sel])
    w["data"] = write_jsonl(root / "sft.jsonl", [{"id": r["id"], "prompt": r["prompt"], "response": "yes"}
                                                 for r in sel])
    w["experiment"] = root / "exp.yaml"
    w["experiment"].write_text(yaml.safe_dump({
        "pool": str(w["pool"]), "test": str(w["pool"]), "model": str(w["model"]), "strategies": ["random"],
        "budgets": [4], "seeds": [0], "train": {"epochs": 1}}))
    w["results"] = root / "results"
    w["results"].mkdir()
    pd.DataFrame([{"run": "random-b4-s0", "strategy": "random", "budget": "4", "budget_n": 4, "seed": 0,
                   "accuracy": 0.5}]).to_csv(w["results"] / "results.csv", index=False)
    w["file"] = root / "a-file"
    w["file"].write_text("keep me\n")
    w["readonly"] = root / "readonly"  # also an experiment directory, for `report`
    w["readonly"].mkdir()
    shutil.copy(w["results"] / "results.csv", w["readonly"] / "results.csv")
    for d in ("home", "cache"):
        (root / d).mkdir()
        os.chmod(root / d, 0o777)
    for p in root.rglob("*"):
        if p.is_dir():
            os.chmod(p, 0o777 if p.name in ("home", "cache") else 0o755)
        elif p.is_file():
            os.chmod(p, 0o644)
    os.chmod(w["readonly"], 0o555)
    yield w
    shutil.rmtree(root, ignore_errors=True)


def commands(w, out_dir: Path, out_file: Path):
    """Each command with its output at `out_dir` (a directory output) or `out_file` (a file output)."""
    model = str(w["model"])
    return {
        "select": ["select", w["pool"], "--budget", 4, "--strategy", "random", "--out", out_dir],
        "score": ["score", w["pool"], "--model", model, "--max-new-tokens", 2, "--out", out_dir],
        "annotate export": ["annotate", "export", w["selection"], "--format", "label-studio", "--out", out_dir],
        "annotate import": ["annotate", "import", w["answers"], "--format", "jsonl", "--selection", w["selection"],
                            "--out", out_file],
        "annotate oracle": ["annotate", "oracle", w["selection"], "--pool", w["pool"], "--out", out_file],
        "train": ["train", w["data"], "--model", model, "--epochs", 1, "--out", out_dir],
        "evaluate": ["evaluate", model, "--suite", "heldout", "--heldout", w["pool"], "--out", out_dir],
        "experiment": ["experiment", w["experiment"], "--out", out_dir],
        "report": ["report", out_dir],
        "pool export": ["pool", "export", w["pool"], "--out", out_file],
    }


SWEPT = ["select", "score", "annotate export", "annotate import", "annotate oracle", "train", "evaluate",
         "experiment", "report", "pool export"]


@pytest.mark.parametrize("command", SWEPT)
def test_out_that_is_an_existing_file(world, command, capsys):
    """--out is a regular file (for file outputs: a file where their directory should be)."""
    before = world["file"].read_bytes()
    argv = commands(world, world["file"], world["file"] / "sft.jsonl")[command]
    assert run(*argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and str(world["file"]) in lines[0], err
    assert world["file"].read_bytes() == before


@pytest.mark.parametrize("command", SWEPT)
def test_out_in_a_read_only_directory(world, command):
    """As user nobody, so that the directory mode really stops the write (root ignores it)."""
    reason = _can_drop_privileges()
    if reason:
        pytest.skip(reason)
    ro = world["readonly"]
    out_dir = ro if command == "report" else ro / "out"  # a report is written into its experiment directory
    argv = [str(a) for a in commands(world, out_dir, ro / "sft.jsonl")[command]]
    root = world["root"]
    env = dict(os.environ, HOME=str(root / "home"), TASKDIV_CACHE=str(root / "cache"),
               HF_HOME=str(root / "cache" / "hf"), TASKDIV_NO_PROGRESS="1", XDG_CACHE_HOME=str(root / "cache"))
    prefix = NOBODY if os.geteuid() == 0 else []
    before = sorted(p.name for p in ro.iterdir())
    proc = subprocess.run([*prefix, sys.executable, "-m", "taskdiv.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc.stderr)
    named = ro / "sft.jsonl" if command in ("annotate import", "annotate oracle", "pool export") else out_dir
    assert len(lines) == 1 and str(named) in lines[0], proc.stderr
    assert sorted(p.name for p in ro.iterdir()) == before


# ----------------------------------------------------------------------------- case 5: one unit


def test_select_rerun_that_cannot_write_selection_leaves_the_previous_run(small_pool, tmp_path, capsys):
    out = tmp_path / "sel"
    assert run("select", small_pool, "--budget", 4, "--strategy", "random", "--out", out) == 0
    (out / "selection.jsonl").unlink()
    (out / "selection.jsonl").mkdir()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert run("select", small_pool, "--budget", 6, "--strategy", "task-diversity", "--seed", 3, "--out", out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out / "selection.jsonl") in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_annotate_import_writes_its_three_files_as_one_unit(small_pool, tmp_path, capsys):
    assert run("select", small_pool, "--budget", 4, "--strategy", "random", "--out", tmp_path / "sel") == 0
    selection = tmp_path / "sel" / "selection.jsonl"
    ids = [json.loads(line)["id"] for line in selection.read_text().splitlines()]
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": i, "response": "yes"} for i in ids])
    out = tmp_path / "ann" / "sft.jsonl"
    (tmp_path / "ann" / "import-round-1.json").mkdir(parents=True)  # in the way of the round report
    assert run("annotate", "import", answers, "--format", "jsonl", "--selection", selection, "--out", out) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["import-round-1.json"]


# ----------------------------------------------------------------------------- case 6: types


@pytest.mark.parametrize("row,field,kind", [
    ({"id": "x", "prompt": "p", "task": ["t"]}, "task", "a list"),
    ({"id": "x", "prompt": True, "task": "t"}, "prompt", "the boolean true"),
    ({"id": "x", "prompt": ["x", "y"], "task": "t"}, "prompt", "a list"),
    ({"id": "x", "prompt": "p", "task": {"name": "t"}}, "task", "an object"),
])
def test_a_list_or_bool_as_task_or_prompt_is_refused(tmp_path, row, field, kind):
    good = {"id": "g", "prompt": "fine", "task": "t"}
    path = write_jsonl(tmp_path / "pool.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        load_pool(str(path))
    msg = str(e.value)
    assert "line 2" in msg and f"field '{field}'" in msg and kind in msg and "accepted: text" in msg


def test_every_row_a_list_is_refused_too(tmp_path):
    """pyarrow's fast path turns an all-list column into numpy arrays ("['x' 'y']")."""
    path = write_jsonl(tmp_path / "pool.jsonl", [{"id": str(i), "prompt": ["x", "y"], "task": "t"} for i in range(3)])
    with pytest.raises(DataError, match=r"line 1, field 'prompt': prompt is a list; accepted: text"):
        load_pool(str(path))


def test_a_list_in_a_template_field_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": "do", "input": ["a"], "output": "o", "task": "t"}])
    with pytest.raises(DataError, match=r"line 1, field 'input': template field 'input' is a list"):
        load_pool(str(path))


def test_numbers_as_task_labels_stay(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "prompt": "p", "task": 3},
                                                 {"id": "b", "prompt": "q", "task": 4}])
    assert load_pool(str(path)).frame["task"].tolist() == ["3", "4"]


def test_task_labels_are_stripped(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "p", "task": " t "}, {"prompt": "q", "task": "t"}])
    assert load_pool(str(path)).task_sizes().to_dict() == {"t": 2}


# ----------------------------------------------------------------------------- case 7: seeds


@pytest.mark.parametrize("command", ["select", "score"])
def test_negative_seed_is_one_error_for_every_command(small_pool, tmp_path, capsys, command):
    extra = ["--budget", 3, "--strategy", "random"] if command == "select" else ["--model", "x"]
    assert run(command, small_pool, *extra, "--seed", -1, "--out", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "--seed -1: a seed must be a whole number from 0 to 4294967295" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_experiment_seeds_follow_the_same_rule(tmp_path, capsys):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({"pool": "p.jsonl", "seeds": [0, -1]}))
    assert run("experiment", cfg, "--out", tmp_path / "e", "--dry-run") == 1
    assert "--seeds -1: a seed must be a whole number" in capsys.readouterr().err


# ----------------------------------------------------------------------------- case 8: per-task limits


@pytest.mark.parametrize("flags,message", [
    (["--min-per-task", 3, "--max-per-task", 2], "--max-per-task 2 is below --min-per-task 3"),
    (["--min-per-task", -3], "--min-per-task must be 0 or more, got -3"),
    (["--max-per-task", 0], "--max-per-task must be at least 1, got 0"),
])
def test_crossed_or_negative_per_task_limits_are_refused(small_pool, tmp_path, capsys, flags, message):
    assert run("select", small_pool, "--budget", 6, "--strategy", "task-diversity", *flags,
               "--out", tmp_path / "o") == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- case 9: train


def _long_rows(n_cut: int, n: int = 4):
    rows = [{"id": f"r{i}", "prompt": f"Say {i}.", "response": f"ok {i}"} for i in range(n)]
    for r in rows[:n_cut]:
        r["prompt"] = "word " * 80 + "?"
    return rows


def test_train_drops_examples_cut_entirely_and_counts_what_it_trained(tiny_model_dir, tmp_path, caplog):
    data = write_jsonl(tmp_path / "d.jsonl", _long_rows(1))
    run_dir = tmp_path / "run"
    assert run("train", data, "--model", tiny_model_dir, "--out", run_dir, "--epochs", 1, "--max-length", 32,
               "--no-chat-template", "--no-progress") == 0
    assert json.loads((run_dir / "train_metrics.json").read_text())["examples"] == 3
    assert "1 of them lost their whole response and were dropped (ids r0)" in caplog.text


def test_train_refuses_data_cut_entirely_before_making_run(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", _long_rows(4))
    assert run("train", data, "--model", tiny_model_dir, "--out", tmp_path / "run", "--max-length", 32,
               "--no-chat-template") == 1
    err = capsys.readouterr().err
    assert "no response token is left to train on" in err and str(data) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- case 10: experiment checks


def _experiment(tmp_path, tiny_model_dir, test_rows, pool_rows_=None):
    pool = write_jsonl(tmp_path / "pool.jsonl", pool_rows_ or pool_rows())
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({"pool": str(pool), "test": str(test), "model": str(tiny_model_dir),
                                   "strategies": ["random"], "budgets": [4], "seeds": [0]}))
    return cfg, test


@pytest.mark.parametrize("dry_run", [True, False])
def test_experiment_checks_the_test_set_before_the_first_run(tiny_model_dir, tmp_path, capsys, dry_run):
    cfg, test = _experiment(tmp_path, tiny_model_dir, [{"id": "t1", "task": "a", "prompt": "q?"}])
    exp = tmp_path / "exp"
    assert run("experiment", cfg, "--out", exp, *(["--dry-run"] if dry_run else [])) == 1
    err = capsys.readouterr().err
    assert str(test) in err and "no 'targets' field" in err
    assert not exp.exists(), "a run started before the inputs were checked"


def test_experiment_checks_the_pool_responses_before_the_first_run(tiny_model_dir, tmp_path, capsys):
    rows = pool_rows()
    rows[5]["response"] = " "
    cfg, _ = _experiment(tmp_path, tiny_model_dir, pool_rows(), rows)
    assert run("experiment", cfg, "--out", tmp_path / "exp", "--dry-run") == 1
    err = capsys.readouterr().err
    assert "1 prompt(s) have no reference response (ids 'b2')" in err and "field 'response'" in err


def test_experiment_checks_train_options_before_the_first_run(tiny_model_dir, tmp_path, capsys):
    cfg, _ = _experiment(tmp_path, tiny_model_dir, pool_rows())
    data = yaml.safe_load(cfg.read_text())
    data["train"] = {"max_length": 1}
    cfg.write_text(yaml.safe_dump(data))
    assert run("experiment", cfg, "--out", tmp_path / "exp", "--dry-run") == 1
    assert "--max-length >= 2" in capsys.readouterr().err


# ----------------------------------------------------------------------------- case 11: template escapes


def test_prompt_template_escapes_on_the_command_line_match_yaml(tmp_path, capsys):
    rows = [{"instruction": "Add.", "input": "1 and 2", "output": "3", "category": "math"},
            {"instruction": "Greet.", "input": "", "output": "hi", "category": "chat"}]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    template = r"{instruction}\n\n{input}"  # what the shell passes for '{instruction}\n\n{input}'
    assert run("pool", "export", pool, "--task-field", "category", "--prompt-template", template,
               "--out", tmp_path / "cli.jsonl") == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text('prompt_template: "{instruction}\\n\\n{input}"\ntask_field: category\n')
    assert run("pool", "export", pool, "--config", cfg, "--out", tmp_path / "yaml.jsonl") == 0
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "cli.jsonl").read_text().splitlines()]
    assert prompts == ["Add.\n\n1 and 2", "Greet."]
    assert (tmp_path / "cli.jsonl").read_text() == (tmp_path / "yaml.jsonl").read_text()


def test_other_backslashes_in_a_template_stay():
    from taskdiv.pool.normalise import template_escapes

    assert template_escapes(r"{a}\n{b}\t\\n\frac") == "{a}\n{b}\t\\n\\frac"


# ----------------------------------------------------------------------------- smaller items


def test_malformed_json_message_says_at_once(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"id": "a", "prompt": "p", "task": "t"}\n{"id": "b", "prompt": "unterminated')
    with pytest.raises(DataError) as e:
        load_pool(str(path))
    assert "starting at column" in str(e.value) and "at at" not in str(e.value)


def test_bad_confidence_is_shown_plainly(small_pool, tmp_path, capsys):
    scores = tmp_path / "s.csv"
    scores.write_text("id,confidence\na0,\n")
    assert run("select", small_pool, "--budget", 3, "--scores", scores, "--out", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "confidence nan is not a number" in err and "np.float64" not in err


def test_evaluate_on_a_missing_run_directory_says_so(tmp_path, capsys):
    missing = tmp_path / "runs" / "ft"
    assert run("evaluate", missing, "--suite", "heldout", "--out", tmp_path / "e") == 1
    err = capsys.readouterr().err
    assert f"{missing}: no such run or model directory" in err and "unknown model" not in err


def test_a_symlinked_annotation_store_is_written_through(small_pool, tmp_path):
    assert run("select", small_pool, "--budget", 4, "--strategy", "random", "--out", tmp_path / "sel") == 0
    selection = tmp_path / "sel" / "selection.jsonl"
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "proj").mkdir()
    link = tmp_path / "proj" / "annotations.jsonl"
    link.symlink_to(shared / "annotations.jsonl")
    assert run("annotate", "oracle", selection, "--pool", small_pool, "--out", tmp_path / "proj" / "sft.jsonl") == 0
    assert link.is_symlink(), "the link was replaced by a regular file"
    assert len((shared / "annotations.jsonl").read_text().splitlines()) == 4
    assert (shared / "import-round-1.json").exists()


def test_same_seed_and_reordered_pool_give_the_same_selection(tmp_path):
    rows = pool_rows()
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", rows[::-1])
    for strategy in ("random", "task-diversity"):
        for pool, out in ((a, "sa"), (b, "sb")):
            assert run("select", pool, "--budget", 5, "--strategy", strategy, "--seed", 4,
                       "--out", tmp_path / out) == 0
        ids = [[json.loads(line)["id"] for line in (tmp_path / o / "selection.jsonl").read_text().splitlines()]
               for o in ("sa", "sb")]
        assert ids[0] == ids[1], strategy


def test_fieldmap_help_documents_the_escapes():
    help_text = FieldMap.__dataclass_fields__["prompt_template"].metadata["help"]
    assert "newline" in help_text


def test_experiment_checks_mmlu_files_before_the_first_run(tiny_model_dir, tmp_path, capsys):
    cfg, _ = _experiment(tmp_path, tiny_model_dir, pool_rows())
    data = yaml.safe_load(cfg.read_text())
    data.update(suites=["heldout", "mmlu"], suite_options={"mmlu": {"mmlu_dir": str(tmp_path / "no-mmlu")}})
    cfg.write_text(yaml.safe_dump(data))
    assert run("experiment", cfg, "--out", tmp_path / "exp", "--dry-run") == 1
    assert f"{tmp_path / 'no-mmlu'}: no such MMLU directory" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_chat_content_parts_are_read_as_text_and_other_lists_refused(tmp_path):
    # OpenAI's content parts: the text parts are the text.
    turns = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": turns, "task": "t"}])
    row = load_pool(str(path)).frame.iloc[0]
    assert (row["prompt"], row["response"]) == ("hi\nthere", "yo")
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["a", "b"]}]
    path = write_jsonl(tmp_path / "chat2.jsonl", [{"messages": turns, "task": "t"}] * 2)
    with pytest.raises(DataError, match=r"line 1, field 'messages': a turn's content is a list; accepted: text"):
        load_pool(str(path))


def test_experiment_with_a_missing_model_directory_says_so(tmp_path, capsys):
    cfg, _ = _experiment(tmp_path, tmp_path / "runs" / "ft", pool_rows())
    assert run("experiment", cfg, "--out", tmp_path / "exp", "--dry-run") == 1
    assert f"key 'model': {tmp_path / 'runs' / 'ft'}: no such run or model directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- config files: values checked


def test_config_values_are_checked_like_flags(tmp_path, small_pool, capsys):
    """An empty key, a value outside a flag's choices, a seed that is not whole: one-line errors
    naming the key, as the same values on the command line get."""
    cases = [("seed:\n", "key 'seed': has no value"),
             ("seed: true\n", "key 'seed': expected a whole number, got true"),
             ("within: randm\n", "key 'within': 'randm' is not one of random")]
    for i, (line, message) in enumerate(cases):
        cfg = tmp_path / f"c{i}.yaml"
        cfg.write_text(f"pool: {small_pool}\nbudget: 5\n{line}")
        assert run("select", "--config", cfg, "--out", tmp_path / f"o{i}") == 1
        err = capsys.readouterr().err
        assert message in err and str(cfg) in err and "Traceback" not in err, err
        assert not (tmp_path / f"o{i}").exists()


@pytest.mark.parametrize("change, message", [
    ({"seeds": None}, "key 'seeds': has no value"),
    ({"seeds": [0.7, 1.9]}, "key 'seeds': expected a whole number, got 0.7"),
    ({"seeds": [True]}, "key 'seeds': expected a whole number, got true"),
    ({"train": {"method": "LoRA"}}, "key 'train.method': 'LoRA' is not one of lora, full"),
    ({"train": {"batch_size": "eight"}}, "key 'train.batch_size': invalid literal"),
    ({"train": 5}, "key 'train': expected a mapping"),
    ({"pool_fields": "prompt"}, "key 'pool_fields': expected a mapping"),
    ({"suite_options": {"heldout": 5}}, "key 'suite_options.heldout': expected a mapping"),
    ({"grid": [{"strategies": ["random"], "budgets": [4]}]}, "key 'grid' replaces 'strategies' and 'budgets'"),
])
def test_experiment_config_values_are_checked(tiny_model_dir, tmp_path, capsys, change, message):
    cfg, _ = _experiment(tmp_path, tiny_model_dir, pool_rows())
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), **change}))
    assert run("experiment", cfg, "--out", tmp_path / "exp", "--dry-run") == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
