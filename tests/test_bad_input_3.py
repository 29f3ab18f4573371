"""Issue 27: hostile input, round 3. Secrets in addresses never reach output; an output
never replaces an input; input that was accepted silently is refused naming file, line
and field; CSV files for people are safe to open in a spreadsheet.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl

from taskdiv import cli
from taskdiv.common.errors import DataError, TaskdivError

SECRET = "wJalr/XUtnFEMI/K7MDENG+bPxRfiCY"  # an AWS-shaped secret: it holds '/'


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def files_holding(root: Path, text: str, *, skip=()) -> list[Path]:
    """Every file under `root` (but `skip`) whose bytes hold `text`, or any part of it between slashes."""
    parts = [p.encode() for p in text.split("/") if len(p) >= 4]
    return [p for p in root.rglob("*") if p.is_file() and p not in skip
            and any(part in p.read_bytes() for part in parts)]


def assert_no_secret(text: str) -> None:
    for part in SECRET.split("/"):
        assert part not in text, text


# ----------------------------------------------------------------------------- 1. secrets


@pytest.mark.parametrize("address, shown", [
    ("s3://AKIA:" + SECRET + "@bucket/run/shards", "s3://AKIA:***@bucket/run/shards"),
    ("s3://AKIA:s3cr3t@runs/x?endpoint_override=127.0.0.1:9&scheme=http", "s3://AKIA:***@runs/x?endpoint_override"),
    ("admin:" + SECRET + "@127.0.0.1:6399", "admin:***@127.0.0.1:6399"),
    ("admin:p@ss" + SECRET + "@head:6379", "admin:***@head:6379"),
])
def test_every_address_form_is_masked(address, shown):
    from taskdiv.common.redact import display_uri, redact

    assert display_uri(address).startswith(shown)
    assert_no_secret(display_uri(address))
    # Remembered: the secret is masked wherever it shows up later, in any text.
    assert_no_secret(redact(f"pyarrow said: cannot parse {address!r}; secret {SECRET} again"))


@pytest.mark.parametrize("text", ["/data/pool.jsonl", "hf:org/name?split=train", "bigbench:notes12",
                                  "Q: {prompt} (mail me@example.org)", "s3://bucket/run@v1/shards", "127.0.0.1:6379"])
def test_text_without_credentials_is_left_alone(text):
    from taskdiv.common.redact import display_uri

    assert display_uri(text) == text


def test_a_secret_in_free_text_is_masked():
    from taskdiv.common.redact import redact

    assert redact("Invalid port in s3://KEY:Zq9" + SECRET + "@bucket/x") == "Invalid port in s3://KEY:***@bucket/x"


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_ray_address_password_is_never_shown(small_pool, tiny_model_dir, tmp_path, capsys, monkeypatch, given):
    """Before: 'score --engine ray --ray-address admin:Pa55word@127.0.0.1:6399' (or the
    same $RAY_ADDRESS) echoed the password in its error."""
    address = f"admin:{SECRET}@127.0.0.1:6399"
    flags = ["--ray-address", address]
    if given == "environment":
        monkeypatch.setenv("RAY_ADDRESS", address)
        flags = []
    assert run("score", small_pool, "--model", tiny_model_dir, "--engine", "ray", *flags,
               "--out", tmp_path / "s") == 1
    captured = capsys.readouterr()
    name = "--ray-address" if given == "flag" else "$RAY_ADDRESS"
    assert f"taskdiv: error: {name} admin:***@127.0.0.1:6399: a Ray cluster's address is HOST:PORT, with no user " \
           f"or password" in captured.err
    assert_no_secret(captured.out + captured.err)
    assert files_holding(tmp_path, SECRET) == []


def test_an_s3_secret_holding_a_slash_is_refused_unshown(small_pool, tiny_model_dir, tmp_path, capsys):
    """Before: a traceback from pyarrow that printed the URI whole."""
    assert run("score", small_pool, "--model", tiny_model_dir, "--engine", "ray",
               "--shards", f"s3://AKIA:{SECRET}@bucket/run/shards", "--out", tmp_path / "s") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "--shards s3://AKIA:***@bucket/run/shards: the secret holds a character" in err
    assert "AWS_SECRET_ACCESS_KEY" in err
    assert_no_secret(err)


def test_a_config_file_with_credentials_is_refused(small_pool, tmp_path, capsys):
    cfg = tmp_path / "score.yaml"
    cfg.write_text(yaml.safe_dump({"engine": "ray", "shards": f"s3://AKIA:{SECRET}@bucket/x"}))
    assert run("score", small_pool, "--config", cfg, "--out", tmp_path / "s") == 1
    err = capsys.readouterr().err
    assert f"{cfg}: key 'shards': s3://AKIA:***@bucket/x holds credentials" in err
    assert_no_secret(err)


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_experiment_config_takes_credentials_from_the_environment(small_pool, tiny_model_dir, tmp_path, capsys,
                                                                     caplog, dry_run):
    """Before: the experiment wrote the plaintext secret into EXP/config.yaml, a file the
    README says to commit. Every file under tmp_path but the config itself is grepped."""
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({
        "pool": str(small_pool), "test": str(small_pool), "model": str(tiny_model_dir),
        "strategies": ["random"], "budgets": [2], "seeds": [0],
        "score": {"engine": "ray", "shards": f"s3://AKIA:{SECRET}@bucket/run/shards"}}))
    exp = tmp_path / "exp"
    with caplog.at_level(logging.DEBUG):
        assert run("experiment", cfg, "--out", exp, *(["--dry-run"] if dry_run else [])) == 1
    captured = capsys.readouterr()
    assert f"{cfg}: key 'score.shards': s3://AKIA:***@bucket/run/shards holds credentials, which a config file " \
           f"must not" in captured.err
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in captured.err
    assert_no_secret(captured.out + captured.err + caplog.text)
    assert files_holding(tmp_path, SECRET, skip={cfg}) == []
    assert not exp.exists()


def test_a_recorded_config_masks_the_password():
    from taskdiv.common.config import to_dict
    from taskdiv.scoring.commands import ScoreConfig

    written = to_dict(ScoreConfig(pool="p.jsonl", out="o", engine="ray", shards=f"s3://AKIA:{SECRET}@b/x"))
    assert written["shards"] == "s3://AKIA:***@b/x"
    assert written["pool"] == "p.jsonl"


def test_log_lines_and_tracebacks_are_redacted(capsys):
    """The CLI's log handler and excepthook mask every remembered secret: Ray's or pyarrow's
    own messages may quote an address."""
    from taskdiv.common.redact import display_uri

    display_uri(f"s3://AKIA:{SECRET}@bucket/x")
    cli.configure_logging(0, False)
    logging.getLogger("some.library").warning("cannot reach s3://AKIA:%s@bucket/x", SECRET)
    try:
        raise ValueError(f"Invalid URI s3://AKIA:{SECRET}@bucket")
    except ValueError as e:
        logging.getLogger("some.library").exception("failed")
        cli._redacted_traceback(type(e), e, e.__traceback__)
    err = capsys.readouterr().err
    assert "ValueError: Invalid URI s3://AKIA:***@bucket" in err
    assert_no_secret(err)


# ----------------------------------------------------------------------------- 2. an output that is an input


def _rows(n=8):
    return [{"id": f"{t}{i}", "task": t, "prompt": f"Question {i} of {t}?", "response": f"answer {i}"}
            for t in "ab" for i in range(n // 2)]


@pytest.fixture
def selected(tmp_path):
    """A pool of 8, and a selection of all 8 in S/."""
    pool = write_jsonl(tmp_path / "pool.jsonl", _rows())
    assert run("select", pool, "--budget", 8, "--strategy", "random", "--out", tmp_path / "S", "-q") == 0
    return pool, tmp_path / "S" / "selection.jsonl"


def _refused(capsys, output, input_) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"taskdiv: error: {output}: this output would replace the input {input_}; choose another output" in err, err
    return err


def test_import_onto_its_own_selection_is_refused(selected, tmp_path, capsys):
    """Before: the selection went from 8 rows to 1."""
    _, sel = selected
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": "a0", "response": "yes"}])
    before = sel.read_bytes()
    assert run("annotate", "import", answers, "--format", "jsonl", "--selection", sel, "--out", sel) == 1
    _refused(capsys, sel, sel)
    assert sel.read_bytes() == before
    assert not (sel.parent / "annotations.jsonl").exists()


def test_import_of_the_store_itself_is_refused(selected, tmp_path, capsys):
    _, sel = selected
    store = write_jsonl(tmp_path / "annotations.jsonl", [{"id": "a0", "response": "yes"}])
    assert run("annotate", "import", store, "--format", "jsonl", "--selection", sel,
               "--out", tmp_path / "sft.jsonl") == 1
    _refused(capsys, store, store)


def test_select_into_the_directory_of_its_pool_is_refused(selected, tmp_path, capsys):
    """Before: `select D/selection.jsonl --out D` replaced the pool by the 4 selected rows."""
    _, sel = selected
    before = sel.read_bytes()
    assert run("select", sel, "--budget", 4, "--strategy", "random", "--out", sel.parent) == 1
    _refused(capsys, sel, sel)
    assert sel.read_bytes() == before


def test_export_onto_its_own_selection_is_refused(selected, tmp_path, capsys):
    """Before: `annotate export D/prompts.jsonl --format jsonl --out D` lost responses, rank and seed."""
    _, sel = selected
    prompts = sel.parent / "prompts.jsonl"
    prompts.write_bytes(sel.read_bytes())
    assert run("annotate", "export", prompts, "--format", "jsonl", "--out", sel.parent) == 1
    _refused(capsys, prompts, prompts)
    assert prompts.read_bytes() == sel.read_bytes()


def test_a_hard_link_to_the_input_is_the_input(selected, tmp_path, capsys):
    pool, _ = selected
    link = tmp_path / "copy.jsonl"
    os.link(pool, link)
    before = pool.read_bytes()
    assert run("pool", "export", pool, "--out", link) == 1
    _refused(capsys, link, pool)
    assert pool.read_bytes() == before


def test_a_symbolic_link_to_the_scores_is_an_input(selected, tmp_path, capsys):
    pool, _ = selected
    out = tmp_path / "sel2"
    out.mkdir()
    (out / "allocation.csv").symlink_to(tmp_path / "scores.csv")
    (tmp_path / "scores.csv").write_text("id,confidence\na0,0.5\n")
    assert run("select", pool, "--budget", 2, "--strategy", "random", "--scores", tmp_path / "scores.csv",
               "--out", out) == 1
    _refused(capsys, out / "allocation.csv", tmp_path / "scores.csv")


def test_an_argilla_export_replacing_the_directory_of_its_selection_is_refused(selected, capsys):
    pytest.importorskip("argilla")
    _, sel = selected
    assert run("annotate", "export", sel, "--format", "argilla", "--out", sel.parent) == 1
    err = capsys.readouterr().err
    assert f"{sel.parent}: this output directory is replaced whole, and holds the input {sel}" in err


def test_oracle_and_score_check_their_inputs_too(selected, tiny_model_dir, tmp_path, capsys):
    pool, sel = selected
    assert run("annotate", "oracle", sel, "--pool", pool, "--out", pool) == 1
    _refused(capsys, pool, pool)
    scores_dir = tmp_path / "sc"
    scores_dir.mkdir()
    pool_copy = scores_dir / "scores.csv"
    pool_copy.write_text("id,task,prompt\na1,t,first\n")
    assert run("score", pool_copy, "--model", tiny_model_dir, "--out", scores_dir) == 1
    _refused(capsys, pool_copy, pool_copy)


def test_outputs_beside_their_inputs_are_fine(selected, tmp_path):
    """The usual layouts stay allowed: a selection's directory holds the export, the dataset and the store."""
    _, sel = selected
    assert run("annotate", "export", sel, "--format", "jsonl", "--out", sel.parent, "-q") == 0
    assert run("annotate", "oracle", sel, "--pool", tmp_path / "pool.jsonl", "--out", sel.parent / "sft.jsonl",
               "-q") == 0


# ----------------------------------------------------------------------------- 3. accepted silently


def _pool_csv(tmp_path, text: str) -> Path:
    path = tmp_path / "pool.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    # Before: loaded as {"id": "first", "prompt": "M", "task": "E"}.
    ("id,task,prompt\na1,t,first,E,M\n", "line 2, row 1: 5 fields, the header has 3 (id, task, prompt)"),
    ("id,task,prompt\na1,t,first\n\na2,t,second,E\n", "line 4, row 2: 4 fields, the header has 3"),
    ("id,task,prompt\na1,t,\"first, quoted\",E\n", "line 2, row 1: 4 fields"),
    # Before: the second column was kept as 'prompt.1' and never read.
    ("id,task,prompt,prompt\na1,t,first,second\n", "line 1, field 'prompt': the header names column 'prompt' twice"),
])
def test_a_csv_row_wider_than_its_header_or_a_repeated_column_is_refused(tmp_path, capsys, text, message):
    pool = _pool_csv(tmp_path, text)
    assert run("pool", "info", pool) == 1
    err = capsys.readouterr().err
    assert f"taskdiv: error: {pool}, {message}" in err, err


def test_a_scores_csv_with_two_confidence_columns_is_refused(selected, tmp_path, capsys):
    pool, _ = selected
    scores = tmp_path / "scores.csv"
    scores.write_text("id,confidence,confidence\na0,0.1,0.9\n")
    assert run("select", pool, "--budget", 2, "--strategy", "random", "--scores", scores, "--out", tmp_path / "o") == 1
    assert f"{scores}, line 1, field 'confidence': the header names column 'confidence' twice" in capsys.readouterr().err


def test_a_quoted_comma_and_a_short_row_still_load(tmp_path):
    from taskdiv.pool.load import load_pool

    pool = load_pool(str(_pool_csv(tmp_path, "id,task,prompt,response\na1,t,\"first, quoted\",x\na2,t,second\n")),
                     require_tasks=True)
    assert pool.frame["prompt"].tolist() == ["first, quoted", "second"]


@pytest.mark.parametrize("budget", ["101%", "21"])
def test_a_budget_above_the_pool_is_refused_as_a_count_or_a_percentage(tmp_path, capsys, budget):
    """Before: 101% selected the whole pool while 21 of 20 prompts was refused."""
    pool = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "task": "ab"[i % 2], "prompt": f"q{i}?"}
                                              for i in range(20)])
    assert run("select", pool, "--budget", budget, "--strategy", "random", "--out", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert ("budget 101% is more than the whole pool; at most 100%" if budget == "101%"
            else "budget 21 is larger than the pool: 20 prompt(s) can be chosen") in err
    assert not (tmp_path / "o").exists()


def _answers(tmp_path, rows) -> Path:
    return write_jsonl(tmp_path / "answers.jsonl", rows)


@pytest.mark.parametrize("value", ["not a date", 12345, ["2026-01-01"]])
def test_an_answer_time_that_is_no_date_is_refused(selected, tmp_path, capsys, value):
    """Before: it sorted as 'no time' and replaced a newer answer."""
    _, sel = selected
    answers = _answers(tmp_path, [{"id": "a0", "response": "new", "submitted_at": "2026-01-02T00:00:00Z"},
                                  {"id": "a1", "response": "old", "submitted_at": value}])
    assert run("annotate", "import", answers, "--format", "jsonl", "--selection", sel,
               "--out", tmp_path / "sft.jsonl") == 1
    err = capsys.readouterr().err
    assert f"{answers}, line 2, field 'submitted_at': {value!r} is not a date and time" in err, err
    assert not (tmp_path / "sft.jsonl").exists()


@pytest.mark.parametrize("status", ["SKIPPED ", 7, "done"])
def test_an_unknown_answer_status_is_refused(selected, tmp_path, capsys, status):
    """Before: an unknown status was imported as an answer."""
    _, sel = selected
    answers = _answers(tmp_path, [{"id": "a0", "response": "x", "status": status}])
    assert run("annotate", "import", answers, "--format", "jsonl", "--selection", sel,
               "--out", tmp_path / "sft.jsonl") == 1
    err = capsys.readouterr().err
    assert f"{answers}, line 1, field 'status': status {status!r} is none of submitted, skipped, cancelled, " \
           f"discarded" in err, err


def test_label_studio_times_are_checked_too(selected, tmp_path, capsys):
    _, sel = selected
    first = json.loads(sel.read_text().splitlines()[0])
    export = tmp_path / "ls.json"
    export.write_text(json.dumps([{"id": 1, "data": {"id": first["id"], "prompt": first["prompt"]},
                                   "annotations": [{"id": 5, "updated_at": "yesterday-ish",
                                                    "result": [{"from_name": "response", "type": "textarea",
                                                                "value": {"text": ["x"]}}]}]}]))
    assert run("annotate", "import", export, "--format", "label-studio", "--selection", sel,
               "--out", tmp_path / "sft.jsonl") == 1
    assert f"{export}, row 1, field 'annotations[0].updated_at': 'yesterday-ish' is not a date and time" \
           in capsys.readouterr().err


def _finished_experiment(tmp_path) -> Path:
    """An experiment directory as `taskdiv experiment` leaves it, without training: two runs."""
    exp = tmp_path / "exp"
    for run_id, strategy, acc in (("base", "base", 0.4), ("random-b4-s0", "random", 0.5)):
        d = exp / "runs" / run_id
        (d / "eval").mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"run": run_id, "strategy": strategy, "budget": "4",
                                                   "budget_n": 4 if strategy != "base" else 0, "seed": 0,
                                                   "suite": "heldout", "accuracy": acc, "ci_low": acc - 0.1,
                                                   "ci_high": acc + 0.1, "n_test": 12, "heldout_accuracy": acc}))
        (d / "eval" / "per_task.csv").write_text("task,n,accuracy\na,12,0.5\nmacro,12,0.5\n")
        (d / "done").write_text("x\n")
    return exp


@pytest.mark.parametrize("field, value, message", [
    ("accuracy", "high", "'high' is not a number"),
    ("budget_n", [3], "[3] is not a number"),
    ("accuracy", 7.5, "7.5 is not in [0, 1]"),
    ("seed", -1, "-1 is not a whole number from 0"),
])
def test_a_tampered_result_json_is_refused(tmp_path, field, value, message):
    """Before: copied into results.csv as it was."""
    from taskdiv.common.errors import DataError
    from taskdiv.experiments.grid import ExperimentConfig, Run
    from taskdiv.experiments.runner import Experiment

    exp = _finished_experiment(tmp_path)
    path = exp / "runs" / "random-b4-s0" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    e = Experiment(ExperimentConfig(pool="x"), exp)
    e.runs = [Run("base", "base", "0", 0, 0), Run("random-b4-s0", "random", "4", 4, 0)]
    with pytest.raises(DataError) as err:
        e.collect()
    assert str(err.value) == f"{path}, field '{field}': {message}"
    assert not (exp / "results.csv").exists()


RESULTS_HEADER = "run,strategy,budget,budget_n,seed,accuracy\n"


@pytest.mark.parametrize("rows, message", [
    ("base,base,0,0,0,0.4\nrandom-b4-s0,random,4,4,0,7.5\n", ", row 2, field 'accuracy': 7.5 is not in [0, 1]"),
    ("base,base,0,0,0,inf\n", ", row 1, field 'accuracy': inf is not a finite number"),
    ("base,base,0,0,0,nan\n", ", row 1, field 'accuracy': nan is not a finite number"),
    ("base,base,0,0,0,0.4\nrandom-b4-s0,random,4,-3,0,0.5\n", ", row 2, field 'budget_n': -3 is not a whole number"),
    ("base,base,0,0,0,0.4\nrandom-b4-s0,random,4,4,0,high\n", ", row 2, field 'accuracy': 'high' is not a number"),
    ("", ": no runs: the file holds its header only"),
])
def test_report_refuses_values_no_run_can_have(tmp_path, capsys, rows, message):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.csv").write_text(RESULTS_HEADER + rows)
    assert run("report", exp) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"taskdiv: error: {exp / 'results.csv'}{message}" in err, err
    assert not (exp / "report.md").exists()


def test_report_on_an_empty_results_file(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.csv").write_text("")
    assert run("report", exp) == 1
    assert f"taskdiv: error: {exp / 'results.csv'}: the file is empty" in capsys.readouterr().err


def test_the_studies_results_still_read():
    from taskdiv.report.tables import _read_results

    for study in ("cpu-small", "cpu-skewed"):
        assert len(_read_results(Path(__file__).resolve().parents[1] / "results" / study)) > 10


@pytest.mark.parametrize("option, value, message", [
    ("max_new_tokens", 0, "--max-new-tokens must be at least 1, got 0"),
    ("batch_size", 0, "--batch-size must be at least 1, got 0"),
    ("target_ci", 5, "--target-ci must be in (0, 1], got 5"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_experiment_checks_score_options_before_writing_anything(small_pool, tiny_model_dir, tmp_path, capsys,
                                                                 option, value, message, dry_run):
    """Before: --dry-run passed them, and the real run refused them only after writing
    EXP/config.yaml, which then blocked the fixed config."""
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({"pool": str(small_pool), "test": str(small_pool), "model": str(tiny_model_dir),
                                   "strategies": ["weighted-task-diversity"], "budgets": [4], "seeds": [0],
                                   "base": False, "full": False, "score": {option: value}}))
    exp = tmp_path / "exp"
    assert run("experiment", cfg, "--out", exp, *(["--dry-run"] if dry_run else [])) == 1
    assert f"experiment config: key 'score': {message}" in capsys.readouterr().err
    assert not exp.exists()


# ----------------------------------------------------------------------------- 4. parser errors reach the user
# Each case by name; tests/test_fuzz.py draws every reader's input at random.


def isolated(*args, timeout: float = 120) -> tuple[int, str]:
    """`taskdiv ARGS` in a child process with 2 GB of address space: the cases that crashed the
    process (a segfault) or read until the kernel killed it (/dev/zero, an alias bomb)."""
    import resource
    import sys

    def bounded():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run([sys.executable, "-m", "taskdiv.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=bounded)
    return done.returncode, done.stderr


def _one_line_error(capsys, *args) -> str:
    assert run(*args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("taskdiv: error: "), err
    return err.strip()


POOL_ROW = '{"id": "a1", "prompt": "Question?", "task": "t"}'


@pytest.mark.parametrize("name, text, where", [
    ("pool.jsonl", '{"id": "a1", "prompt": "\\ud800", "task": "t"}\n', "line 1, field 'prompt'"),
    ("pool.jsonl", POOL_ROW + '\n{"id": "\\ud800", "prompt": "Q?", "task": "t"}\n', "line 2, field 'id'"),
    ("pool.json", '[{"id": "\\udfff", "prompt": "Q?", "task": "t"}]', "line 1, field '[0].id'"),
])
def test_a_lone_surrogate_is_refused_naming_line_and_field(tmp_path, capsys, name, text, where):
    """Before: a UnicodeEncodeError traceback when the pool was written, or ranked."""
    pool = tmp_path / name
    pool.write_text(text)
    err = _one_line_error(capsys, "select", pool, "--budget", 1, "--strategy", "random", "--out", tmp_path / "s")
    assert err.startswith(f"taskdiv: error: {pool}, {where}: holds a lone surrogate"), err


def test_a_surrogate_pair_is_a_character(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a1", "prompt": "Q \\ud83d\\ude00?", "task": "t"}\n')
    assert run("select", pool, "--budget", 1, "--strategy", "random", "--out", tmp_path / "s", "-q") == 0
    assert "Q \U0001F600?" in (tmp_path / "s" / "selection.jsonl").read_text(encoding="utf-8")


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("name, text, line", [
    ("pool.jsonl", POOL_ROW + '\n{"id": "a2", "prompt": "Q?", "task": "t", "unused": ' + _deep(1000) + "}\n", 2),
    ("pool.json", '[\n{"id": "a2", "prompt": "Q?", "task": "t",\n"unused": ' + _deep(1000) + "}]", 3),
])
def test_json_nested_past_the_bound_is_refused(tmp_path, capsys, name, text, line):
    """Before: a RecursionError traceback, for a field no stage reads."""
    pool = tmp_path / name
    pool.write_text(text)
    err = _one_line_error(capsys, "pool", "info", pool)
    assert err == f"taskdiv: error: {pool}, line {line}: values nested deeper than 100 levels"


def test_json_nested_20000_deep_is_refused_not_a_crash(tmp_path):
    """Before: a segfault in pyarrow's JSON reader, with no message at all."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text(POOL_ROW + '\n{"id": "a2", "prompt": "Q?", "task": "t", "unused": ' + _deep(20000) + "}\n")
    code, err = isolated("pool", "info", pool)
    assert (code, err.strip()) == (1, f"taskdiv: error: {pool}, line 2: values nested deeper than 100 levels")


def test_a_jsonl_line_that_is_null_is_refused_not_a_crash(tmp_path):
    """Found by the fuzz test: pyarrow 26's JSON reader segfaults on a first line `null`."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("null\n" + POOL_ROW + "\n")
    code, err = isolated("pool", "info", pool)
    assert (code, err.strip()) == (1, f"taskdiv: error: {pool}, line 1: expected a JSON object, got null")


def test_a_truncated_parquet_pool_or_scores_file_is_refused(tmp_path, capsys):
    """Before: pyarrow's ArrowInvalid traceback."""
    import pandas as pd

    whole = tmp_path / "whole.parquet"
    pd.DataFrame({"id": ["a1", "a2"], "prompt": ["Q?", "R?"], "task": ["t", "t"]}).to_parquet(whole)
    for cut in (len(whole.read_bytes()) // 2, len(whole.read_bytes()) - 9):
        pool = tmp_path / f"pool-{cut}.parquet"
        pool.write_bytes(whole.read_bytes()[:cut])
        err = _one_line_error(capsys, "pool", "info", pool)
        assert err.startswith(f"taskdiv: error: {pool}: not a readable Parquet file ("), err
    scores = tmp_path / "scores.parquet"
    scores.write_bytes(whole.read_bytes()[:100])
    err = _one_line_error(capsys, "select", whole, "--budget", 1, "--scores", scores, "--out", tmp_path / "s")
    assert err.startswith(f"taskdiv: error: {scores}: not a readable Parquet file ("), err


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]
                 + [f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]" for p, k in zip("abcdefg", "bcdefgh")]
                 + ["budget: [*h, *h, *h, *h, *h, *h, *h, *h, *h]"])


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Before: 387 million values from 400 bytes; the process hung at 6 GB."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMB)
    pool = write_jsonl(tmp_path / "pool.jsonl", _rows())
    code, err = isolated("select", pool, "--out", tmp_path / "s", "--config", cfg, timeout=60)
    assert (code, err.strip()) == (1, f"taskdiv: error: {cfg}, line 6: expands to more than 100,000 values "
                                      f"(its aliases counted as copies); write the values out")


def test_a_few_yaml_aliases_still_work(tmp_path):
    from taskdiv.common import config
    from taskdiv.selection.commands import SelectConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: &s 3\nbudget: *s\n")
    built = config.build(SelectConfig, {"pool": "p", "out": "o"}, cfg)
    assert (built.seed, built.budget) == (3, "3")


@pytest.mark.parametrize("content, message", [
    ("budget: " + _deep(3000), ", line 1: invalid YAML (values nested deeper than 100 levels)"),
    ("budget: 2\nstrategy: caf\xe9\n".encode("latin-1"), ", line 2: not UTF-8 (byte 23: b'\\xe9')"),
    ("seed: &s [*s]\n", ", line 1: an alias names a value that holds it"),
    ("budget: 2026-13-45\n", ": invalid YAML (month must be in 1..12)"),
    ('strategy: "\\ud800"\n', ", field 'strategy': holds a lone surrogate"),
])
def test_yaml_a_parser_chokes_on_is_refused(tmp_path, capsys, content, message):
    """Before: RecursionError, UnicodeDecodeError and ValueError tracebacks."""
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    pool = write_jsonl(tmp_path / "pool.jsonl", _rows())
    err = _one_line_error(capsys, "select", pool, "--out", tmp_path / "s", "--config", cfg)
    assert err.startswith(f"taskdiv: error: {cfg}{message}"), err


def test_special_files_are_refused_before_reading(tmp_path):
    """Before: --config /dev/zero read until the kernel killed it; a FIFO as --exclude waited
    forever; /dev/zero as a pool was 'empty'."""
    pool = write_jsonl(tmp_path / "pool.jsonl", _rows())
    fifo = tmp_path / "ids.txt"
    os.mkfifo(fifo)
    for args, path in ((["--config", "/dev/zero"], "/dev/zero"), (["--exclude", fifo], fifo)):
        code, err = isolated("select", pool, "--budget", 2, "--strategy", "random", "--out", tmp_path / "s", *args,
                             timeout=60)
        assert (code, err.strip()) == (1, f"taskdiv: error: {path}: not a regular file (a device, a pipe or a "
                                          f"socket); give a file")


def test_a_special_file_as_pool_or_export_is_refused(tmp_path, capsys):
    fifo = tmp_path / "export.json"
    os.mkfifo(fifo)
    assert _one_line_error(capsys, "pool", "info", "/dev/zero") == \
        "taskdiv: error: /dev/zero: not a regular file (a device, a pipe or a socket); give a file"
    pool = write_jsonl(tmp_path / "pool.jsonl", _rows())
    assert run("select", pool, "--budget", 2, "--strategy", "random", "--out", tmp_path / "s", "-q") == 0
    err = _one_line_error(capsys, "annotate", "import", fifo, "--format", "label-studio", "--selection",
                          tmp_path / "s" / "selection.jsonl", "--out", tmp_path / "sft.jsonl")
    assert err == f"taskdiv: error: {fifo}: not a regular file (a device, a pipe or a socket); give a file"


def test_a_config_too_large_for_a_config_is_refused(tmp_path, capsys):
    """A YAML config is a few KB; PyYAML reads about 1 MB a second. Before: read, however large."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("budget: 2\n" + "# padding\n" * 120_000)
    pool = write_jsonl(tmp_path / "pool.jsonl", _rows())
    err = _one_line_error(capsys, "select", pool, "--out", tmp_path / "s", "--config", cfg)
    assert err == f"taskdiv: error: {cfg}: 1,200,010 bytes is too large for a YAML file (at most 1,048,576)"


@pytest.mark.parametrize("name, text, message", [
    ("per_task.csv", "run,task,n,accuracy\nbase,a,12,high\n",
     ", row 1, field 'accuracy': 'high' is not a number in [0, 1]"),
    ("per_task.csv", "run,task,n\nbase,a,12\n", ": missing column(s) accuracy (it has run, task, n)"),
    ("allocations.csv", "run,strategy,budget,budget_n,seed,task,allocated,confidence\nr,random,4,4,0,a,-1,0.5\n",
     ", row 1, field 'allocated': -1 is not a whole number from 0"),
    ("task_kinds.csv", "task,kind\na,yes/no\na,generative\n", ", row 2, field 'task': 'a' is named twice"),
])
def test_report_refuses_damaged_tables_beside_results(tmp_path, capsys, name, text, message):
    """Before: TypeError or KeyError tracebacks from pandas, for a table report reads beside results.csv."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.csv").write_text(RESULTS_HEADER + "base,base,0,0,0,0.4\nrandom-b4-s0,random,4,4,0,0.5\n")
    (exp / "per_task.csv").write_text("run,task,n,accuracy\nbase,a,12,0.4\nrandom-b4-s0,a,12,0.5\n")
    (exp / name).write_text(text)
    assert _one_line_error(capsys, "report", exp) == f"taskdiv: error: {exp / name}{message}"


# Found by the fuzz test (tests/test_fuzz.py) beyond the cases.


@pytest.mark.parametrize("row, where", [
    ({"id": "a1", "task": "t", "prompt": "Q?", "response": ["A."], "round": 1}, "field 'response': ['A.'] is no text"),
    ({"id": "a1", "task": "t", "prompt": "Q?", "response": "A.", "round": True}, "field 'round': True is not a round"),
    ({"id": "a1", "task": "t", "prompt": "Q?", "response": "A.", "round": 1, "submitted_at": 5},
     "field 'submitted_at': 5 is not a date and time"),
])
def test_an_annotation_store_row_of_the_wrong_kind_is_refused(tmp_path, row, where):
    """Before: imported into the next round as it was (a list as the answer), or a TypeError."""
    from taskdiv.annotate.store import read_store
    from taskdiv.common.errors import DataError

    store = write_jsonl(tmp_path / "annotations.jsonl", [row])
    with pytest.raises(DataError, match=f"line 1, {re.escape(where)}"):
        read_store(store)


def test_a_csv_column_of_text_and_other_values_reads_back(tmp_path):
    """Before: pandas' AttributeError ('.str accessor with string values, not boolean') from the
    formula escape's reverse, for a column pandas reads as an empty cell and false."""
    from taskdiv.common.inputs import read_csv

    path = tmp_path / "t.csv"
    path.write_text('x,y\n"",\'=1\nfalse,b\n')
    frame = read_csv(path, neutralised=True)
    assert frame["x"].tolist()[1] is False and frame["y"].tolist() == ["=1", "b"]


def test_report_with_no_run_in_common_between_its_tables(tmp_path, capsys):
    """Before: a TypeError from pandas (an empty gain kept the task names' text type)."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.csv").write_text(RESULTS_HEADER + "base,base,0,0,0,0.4\nrandom-b4-s0,random,4,4,0,0.5\n")
    (exp / "per_task.csv").write_text("run,task,n,accuracy\nbase,a,12,0.4\nrandom-b4-s0,a,12,0.5\n")
    (exp / "allocations.csv").write_text("run,strategy,budget,budget_n,seed,task,allocated,confidence\n"
                                         "other,random,4,4,0,a,4,0.5\n")
    assert run("report", exp) == 0


# ----------------------------------------------------------------------------- 5. full disk and killed runs

# Runs taskdiv's commands, in one process, with their outputs on a full disk: DISK, a small tmpfs
# filled up before each command. Prints, as JSON, each command's exit code, what it said, and
# what it left on DISK.
DISK_DRIVER = r"""
import contextlib, io, json, shutil, sys
from pathlib import Path
from taskdiv import cli

disk, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
results = {}
for name, args, copied in cases:
    for source in copied:  # an input that lies on the full disk (report writes beside results.csv)
        shutil.copytree(source, disk / Path(source).name)
    with open(disk / "filler", "ab", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(bytes(4096))
    before = set(disk.rglob("*"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(args)
    results[name] = {"code": code, "err": err.getvalue(),
                     "left": sorted(str(p.relative_to(disk)) for p in set(disk.rglob("*")) - before)}
    for p in disk.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
print(json.dumps(results))
"""


def on_full_disk(disk: Path, script: str, *args, size: str = "256k") -> subprocess.CompletedProcess:
    """`python -c SCRIPT DISK ARGS` in a mount namespace of its own with a tmpfs of `size` on DISK
    (the test is skipped where mount namespaces are not allowed)."""
    import shutil
    import sys

    disk.mkdir(exist_ok=True)
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0"', disk],
                                                     capture_output=True).returncode:
        pytest.skip("needs a disk of its own: a tmpfs in a mount namespace (unshare -m, as root)")
    return subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"',
                           disk, sys.executable, "-c", script, disk, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TASKDIV_NO_PROGRESS": "1"}, timeout=900)


# (name, command with DISK for the full disk, inputs copied onto it, the path the error names)
FULL_DISK = [
    ("select", ["select", "POOL", "--budget", "4", "--strategy", "random", "--out", "DISK/new/sel"], [], "new/sel"),
    ("pool export", ["pool", "export", "POOL", "--out", "DISK/new/pool.jsonl"], [], "new/pool.jsonl"),
    ("pool export parquet", ["pool", "export", "POOL", "--out", "DISK/new/pool.parquet"], [], "new/pool.parquet"),
    ("annotate export jsonl", ["annotate", "export", "SEL", "--format", "jsonl", "--out", "DISK/new/x"], [],
     "new/x/prompts.jsonl"),
    ("annotate export label-studio", ["annotate", "export", "SEL", "--format", "label-studio", "--out", "DISK/new/x"],
     [], "new/x"),
    ("annotate export argilla", ["annotate", "export", "SEL", "--format", "argilla", "--out", "DISK/new/x"], [],
     "new/x"),
    ("annotate import", ["annotate", "import", "ANSWERS", "--format", "jsonl", "--selection", "SEL",
                         "--out", "DISK/new/sft.jsonl"], [], "new"),
    ("annotate oracle", ["annotate", "oracle", "SEL", "--pool", "POOL", "--out", "DISK/new/sft.jsonl"], [], "new"),
    ("report", ["report", "DISK/exp"], ["EXP"], "exp"),
]


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    base = tmp_path_factory.mktemp("full-disk")
    pool = write_jsonl(base / "pool.jsonl", _rows(40))
    assert run("select", pool, "--budget", 8, "--strategy", "random", "--out", base / "S", "-q") == 0
    sel = base / "S" / "selection.jsonl"
    answers = write_jsonl(base / "answers.jsonl", [{"id": r["id"], "response": "yes"} for r in map(
        json.loads, sel.read_text().splitlines())])
    exp = base / "exp"
    exp.mkdir()
    (exp / "results.csv").write_text(RESULTS_HEADER + "base,base,0,0,0,0.4\nrandom-b4-s0,random,4,4,0,0.5\n")
    names = {"POOL": pool, "SEL": sel, "ANSWERS": answers, "EXP": exp}
    disk = base / "disk"
    cases = [[name, [str(names.get(a, a)).replace("DISK", str(disk)) for a in args], [str(names[c]) for c in copied]]
             for name, args, copied, _ in FULL_DISK]
    done = on_full_disk(disk, DISK_DRIVER, json.dumps(cases))
    assert done.returncode == 0, done.stderr[-3000:]
    return disk, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, named", [(name, named) for name, _, _, named in FULL_DISK])
def test_a_full_disk_is_named_and_leaves_nothing_behind(full_disk, name, named):
    """Before: 'taskdiv: error: No space left on device' without the path (pyarrow's words for a
    Parquet file), and select, pool export and annotate export left their empty output folders."""
    disk, results = full_disk
    result = results[name]
    assert "Traceback" not in result["err"]
    assert (result["code"], result["err"].strip()) == (1, f"taskdiv: error: {disk / named}: No space left on device")
    assert result["left"] == [], "nothing left behind: no empty folder, no temporary"


TRAIN_ON_FULL_DISK = r"""
import contextlib, io, json, sys
from pathlib import Path
from taskdiv import cli

disk, data, model = map(Path, sys.argv[1:4])
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = cli.main(["train", str(data), "--model", str(model), "--out", str(disk / "run"), "--epochs", "2",
                     "--batch-size", "2", "--save-steps", "2", "-q"])
print(json.dumps({"code": code, "err": err.getvalue(), "checkpoints": sorted(
    [p.name for p in (disk / "run" / "checkpoints").glob("checkpoint-*")])}))
"""


def test_train_on_a_full_disk_says_so_in_one_line_and_keeps_no_partial_checkpoint(tiny_model_dir, tmp_path):
    """Before: a SafetensorError traceback, and checkpoint-2/ holding only a README. The disk (128 KB)
    holds the run's config and log but not the first checkpoint's adapter."""
    data = write_jsonl(tmp_path / "sft.jsonl", _rows(8))
    done = on_full_disk(tmp_path / "disk", TRAIN_ON_FULL_DISK, data, tiny_model_dir, size="128k")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Traceback" not in result["err"] and "SafetensorError" not in result["err"]
    assert result["err"].strip().splitlines()[-1] == \
        f"taskdiv: error: {tmp_path / 'disk' / 'run' / 'checkpoints'}: No space left on device"
    assert result["code"] == 1 and result["checkpoints"] == []


def _checkpoint(d: Path, step: int, **broken) -> Path:
    """A checkpoint as the Trainer writes one for a LoRA run; `broken`: file -> bytes it holds instead."""
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True)
    (d / "README.md").write_text("model card\n")
    (d / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(4, 4)}, d / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"x": 1}, d / name)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name, content in broken.items():
        if content is None:
            (d / name).unlink()
        else:
            (d / name).write_bytes(content)
    return d


@pytest.mark.parametrize("broken", [
    {"adapter_model.safetensors": None, "optimizer.pt": None, "scheduler.pt": None, "rng_state.pth": None,
     "training_args.bin": None, "trainer_state.json": None, "adapter_config.json": None},  # a README only
    {"trainer_state.json": b""},  # its write failed
    {"adapter_model.safetensors": None},
    {"adapter_model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{}"},  # cut short
    {"optimizer.pt": b"PK\x03\x04"},
])
def test_resume_never_picks_an_incomplete_checkpoint(tmp_path, broken):
    """Resuming picks the newest checkpoint holding whole what resuming reads; an incomplete one is
    removed. Before: any checkpoint-N with a trainer_state.json, even an empty one, or one whose
    weights were cut short, was resumed from (and failed, or trained on a broken state)."""
    from taskdiv.training import last_checkpoint

    ckpts = tmp_path / "checkpoints"
    good = _checkpoint(ckpts / "checkpoint-2", 2)
    if "adapter_model.safetensors" in broken and broken["adapter_model.safetensors"]:
        whole = (good / "adapter_model.safetensors").read_bytes()
        broken["adapter_model.safetensors"] = whole[:len(whole) - 7]
    bad = _checkpoint(ckpts / "checkpoint-4", 4, **broken)
    assert last_checkpoint(ckpts) == str(good)
    assert not bad.exists()


def test_a_killed_import_leaves_temporaries_the_next_one_clears(tmp_path):
    """SIGKILL while the store's new version is being written (after its temporary is written, before
    the rename). Before: .annotations.jsonl.*.tmp (86 MB in the issue) and the others stayed for good."""
    import signal
    import sys

    pool = write_jsonl(tmp_path / "pool.jsonl", _rows(40))
    assert run("select", pool, "--budget", 10, "--strategy", "random", "--out", tmp_path / "S", "-q") == 0
    sel = tmp_path / "S" / "selection.jsonl"
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": r["id"], "response": "yes"} for r in map(
        json.loads, sel.read_text().splitlines())])
    out = tmp_path / "A" / "sft.jsonl"
    killed = ("import os, signal, sys\n"
              "from taskdiv import cli\n"
              "from taskdiv.annotate import store\n"
              "write = store.dump_jsonl\n"
              "def write_then_die(path, records):\n"
              "    write(path, records)\n"
              "    if '.sft.jsonl.' in str(path):  # every temporary of the set written: the last one\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "store.dump_jsonl = write_then_die\n"
              "cli.main(sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-c", killed, "annotate", "import", answers, "--format", "jsonl",
                           "--selection", sel, "--out", out], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = sorted(p.name for p in out.parent.iterdir())
    assert [n for n in left if n.endswith(".tmp")] and not out.exists(), left
    assert run("annotate", "import", answers, "--format", "jsonl", "--selection", sel, "--out", out) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["annotations.jsonl", "import-round-1.json", "sft.jsonl"]


# ----------------------------------------------------------------------------- 6. files for spreadsheets


# (A carriage return inside a cell does not survive pandas' CSV round trip at all, escaped or not:
# to_csv leaves it unquoted and read_csv ends the row there. Not a formula matter; left out.)
TRICKY = ["=cmd|' /C calc'!A0", "=1+00", "+1", "-3", "@SUM(A1)", "\tx", "'=already", "''-3", "'plain",
          "plain", "a=b", ""]


def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_read_back_exactly(tmp_path):
    import numpy as np
    import pandas as pd

    from taskdiv.common.inputs import read_csv
    from taskdiv.common.writers import dump_table

    frame = pd.DataFrame({"task": TRICKY, "n": np.arange(len(TRICKY)) - 5, "x": np.linspace(-1, 1, len(TRICKY))})
    path = tmp_path / "t.csv"
    dump_table(path, frame, ".csv")
    raw = pd.read_csv(path, dtype={"task": str}, keep_default_na=False, na_values=[])  # a spreadsheet's view
    for cell in raw["task"]:
        assert not cell or cell[0] not in "=+-@\t\r", cell
    assert raw["n"].tolist() == frame["n"].tolist()  # numbers stay numbers: -5 is no formula
    back = read_csv(path, neutralised=True, dtype={"task": str}, keep_default_na=False)
    assert back["task"].tolist() == TRICKY
    np.testing.assert_array_equal(back["x"], frame["x"])


def test_selection_and_scores_round_trip_with_formula_names(tmp_path):
    """allocation.csv and scores.csv neutralised; select --scores reads the ids back exactly."""
    import pandas as pd

    from taskdiv.common.writers import dump_table
    from taskdiv.selection.scores import read_score_file

    rows = [{"id": f"=1+0{i}", "task": TRICKY[i % 3], "prompt": f"Question {i}?"} for i in range(6)]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    scores = tmp_path / "scores.csv"
    dump_table(scores, pd.DataFrame({"id": [r["id"] for r in rows], "task": [r["task"] for r in rows],
                                     "confidence": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}), ".csv")
    assert "'=1+00" in scores.read_text()
    assert read_score_file(scores).ids.tolist() == [r["id"] for r in rows]
    assert run("select", pool, "--budget", 3, "--strategy", "weighted-task-diversity", "--scores", scores,
               "--out", tmp_path / "sel", "-q") == 0
    alloc = (tmp_path / "sel" / "allocation.csv").read_text()
    assert "\n'=cmd|' /C calc'!A0," in alloc.replace('"', "") and "\n=" not in alloc.replace('"', "")
    chosen = [json.loads(line)["confidence"]
              for line in (tmp_path / "sel" / "selection.jsonl").read_text().splitlines()]
    assert len(chosen) == 3 and all(c == c for c in chosen)  # every chosen id found its score


def test_report_escapes_names_it_pastes_into_markdown(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.csv").write_text(RESULTS_HEADER + "base,base,0,0,0,0.4\nrandom-b4-s0,random,4,4,0,0.5\n"
                                     "x-b4-s0,\"=cmd|' /C calc'!A0\",4,4,0,0.6\n"
                                     "y-b4-s0,\"two\nlines`code`\",4,4,0,0.55\n")
    run("report", exp)
    report = (exp / "report.md").read_text()
    assert "\\=cmd\\|' /C calc'!A0" in report and "=cmd|" not in report.replace("\\=cmd\\|", "")
    assert "two lines\\`code\\`" in report and "two\nlines" not in report


def test_a_run_directory_whose_config_is_no_mapping_is_refused_by_name(tmp_path):
    """train's and the model resolver's read of RUN/config.yaml go through the bounded YAML
    reader: a config.yaml that is a list, or an alias bomb, is a one-line error naming it."""
    from taskdiv import training
    from taskdiv.engines import models

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text("- a\n- b\n")
    with pytest.raises(TaskdivError, match="config.yaml"):
        models.resolve(str(run))
    with pytest.raises(TaskdivError, match="config.yaml|training run"):
        training.check_existing(run, {"model": "m"})
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg"))
    (run / "config.yaml").write_text(bomb)
    for call in (lambda: models.resolve(str(run)), lambda: training.check_existing(run, {"model": "m"})):
        with pytest.raises(DataError, match="config.yaml"):
            call()
