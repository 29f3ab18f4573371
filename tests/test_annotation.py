"""`taskdiv annotate export|import|oracle`: formats, the import rules, rounds, bad input.

Label Studio import is tested on a real export of Label Studio 1.23.2 (tests/data, made
by tests/test_label_studio.py); Argilla round-trips through the argilla SDK's own
classes on disk (no server: Argilla's server needs Elasticsearch).
"""
from __future__ import annotations

import json
import shutil
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import write_jsonl

from taskdiv import cli
from taskdiv.annotate import FORMATS, commands, store
from taskdiv.annotate.answers import read_selection
from taskdiv.pool.load import load_pool
from taskdiv.pool.readers import read_ids

DATA = Path(__file__).parent / "data"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run(*args) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture
def selection(tmp_path, small_pool) -> Path:
    """A scored selection of 6 prompts from the small pool (tasks a, b, c)."""
    rows = _jsonl(small_pool)
    (tmp_path / "scores.csv").write_text("id,confidence\n" + "".join(
        f"{r['id']},{0.1 + 0.05 * k:.2f}\n" for k, r in enumerate(rows)))
    assert _run("select", small_pool, "--budget", 6, "--scores", tmp_path / "scores.csv",
                "--out", tmp_path / "sel", "-q") == 0
    return tmp_path / "sel" / "selection.jsonl"


def _answers(path: Path, rows) -> Path:
    return write_jsonl(path, rows)


def _snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("words", [["annotate"], ["annotate", "export"], ["annotate", "import"],
                                   ["annotate", "oracle"]])
def test_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(words + ["--help"])
    assert e.value.code == 0
    assert "usage: taskdiv annotate" in capsys.readouterr().out


# ----------------------------------------------------------------------------- export


def test_export_label_studio(selection, tmp_path):
    assert _run("annotate", "export", selection, "--format", "label-studio", "--out", tmp_path / "ls") == 0
    sel = _jsonl(selection)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [t["data"]["id"] for t in tasks] == [r["id"] for r in sel]
    assert [t["data"]["prompt"] for t in tasks] == [r["prompt"] for r in sel]
    assert [t["data"]["confidence"] for t in tasks] == [r["confidence"] for r in sel]
    assert all(set(t) == {"data"} for t in tasks), "a tasks file Label Studio imports as is"
    assert all(set(t["data"]) == {"id", "task", "prompt", "confidence", "confidence_text"} for t in tasks), \
        "the pool's reference responses are not shown to annotators"
    view = ET.fromstring((tmp_path / "ls" / "config.xml").read_text())
    area = view.find(".//TextArea")
    assert area.get("name") == "response" and area.get("toName") == "prompt"
    texts = {t.get("name"): t.get("value") for t in view.iter("Text")}
    assert texts == {"task": "$task", "confidence": "$confidence_text", "prompt": "$prompt"}
    # every variable the config uses is in every task
    assert all({v[1:] for v in texts.values()} <= set(t["data"]) for t in tasks)


def test_export_label_studio_unscored(tmp_path, small_pool):
    assert _run("select", small_pool, "--budget", 4, "--strategy", "task-diversity", "--out", tmp_path / "s",
                "-q") == 0
    assert _run("annotate", "export", tmp_path / "s" / "selection.jsonl", "--format", "label-studio",
                "--out", tmp_path / "ls") == 0
    view = ET.fromstring((tmp_path / "ls" / "config.xml").read_text())
    assert {t.get("name") for t in view.iter("Text")} == {"task", "prompt"}
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert all(set(t["data"]) == {"id", "task", "prompt"} for t in tasks)


def test_export_jsonl(selection, tmp_path):
    assert _run("annotate", "export", selection, "--format", "jsonl", "--out", tmp_path / "js") == 0
    rows = _jsonl(tmp_path / "js" / "prompts.jsonl")
    sel = _jsonl(selection)
    assert [r["id"] for r in rows] == [r["id"] for r in sel]
    assert all(r["response"] == "" and set(r) == {"id", "task", "prompt", "confidence", "response"} for r in rows)


def _argilla_load(directory: Path):
    """(settings, records) read back with the argilla SDK's own classes."""
    import argilla as rg

    from taskdiv.annotate.argilla import offline_client

    with offline_client():
        settings = rg.Settings.from_json(directory / ".argilla" / "settings.json")
    records = [rg.Record.from_dict(d) for d in json.loads((directory / "records.json").read_text())]
    return settings, records


def test_export_argilla(selection, tmp_path):
    import argilla as rg

    out = tmp_path / "ar"
    assert _run("annotate", "export", selection, "--format", "argilla", "--out", out, "--name", "round-1") == 0
    settings, records = _argilla_load(out)
    assert [f.name for f in settings.fields] == ["prompt"]
    assert [(q.name, q.type) for q in settings.questions] == [("response", "text")]
    assert {m.name: type(m) for m in settings.metadata} == {"task": rg.TermsMetadataProperty,
                                                           "confidence": rg.FloatMetadataProperty}
    assert settings.metadata["task"].options == sorted({r["task"] for r in _jsonl(selection)})
    assert json.loads((out / ".argilla" / "dataset.json").read_text())["name"] == "round-1"
    sel = _jsonl(selection)
    assert [str(r.id) for r in records] == [r["id"] for r in sel]
    assert [r.fields["prompt"] for r in records] == [r["prompt"] for r in sel]
    assert [r.metadata["confidence"] for r in records] == [r["confidence"] for r in sel]
    assert all(len(r.responses) == 0 for r in records)
    # exporting again replaces the dataset; a foreign non-empty directory is refused
    assert _run("annotate", "export", selection, "--format", "argilla", "--out", out) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ar")) == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert _run("annotate", "export", selection, "--format", "argilla", "--out", tmp_path / "other") == 1
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"
    (tmp_path / "file").write_text("x")
    assert _run("annotate", "export", selection, "--format", "argilla", "--out", tmp_path / "file") == 1
    assert (tmp_path / "file").read_text() == "x"


def test_argilla_round_trip_through_sdk(selection, tmp_path):
    """export -> load with the SDK -> responses as rg.Response -> save with the SDK -> import."""
    import argilla as rg
    from argilla.records._io import JsonIO

    from taskdiv.annotate.argilla import offline_client

    assert _run("annotate", "export", selection, "--format", "argilla", "--out", tmp_path / "ar") == 0
    settings, records = _argilla_load(tmp_path / "ar")
    alice, bob = uuid.UUID(int=1), uuid.UUID(int=2)
    ids = [str(r.id) for r in records]
    records[0].responses.add(rg.Response("response", "Alice's answer", user_id=alice, status="submitted"))
    records[1].responses.add(rg.Response("response", "Alice again", user_id=alice, status="submitted"))
    records[1].responses.add(rg.Response("response", "Bob's answer", user_id=bob, status="submitted"))
    records[2].responses.add(rg.Response("response", None, user_id=alice, status="discarded"))
    records[3].responses.add(rg.Response("response", "  padded  \n", user_id=bob, status="submitted"))
    annotated = tmp_path / "annotated"
    annotated.mkdir()
    with offline_client():
        ds = rg.Dataset(name="annotated", settings=settings, workspace=rg.Workspace(name="argilla"))
        ds.to_disk(str(annotated), with_records=False)
    JsonIO.to_json(records, annotated / "records.json")

    out = tmp_path / "ann" / "sft.jsonl"
    assert _run("annotate", "import", annotated, "--format", "argilla", "--selection", selection, "--out", out) == 0
    rows = {r["id"]: r["response"] for r in _jsonl(out)}
    # no submission times in Argilla's records file: the last answer in file order wins
    assert rows == {ids[0]: "Alice's answer", ids[1]: "Bob's answer", ids[3]: "padded"}
    report = json.loads((tmp_path / "ann" / "import-round-1.json").read_text())
    assert report["empty"] == [ids[2]] and list(report["superseded"]) == [ids[1]]
    assert report["not_annotated"] == ids[4:]
    # the records file alone is accepted too, and adds nothing new
    assert _run("annotate", "import", annotated / "records.json", "--format", "argilla", "--selection", selection,
                "--out", out) == 0
    assert len(_jsonl(tmp_path / "ann" / "annotations.jsonl")) == 3


# ----------------------------------------------------------------------------- import rules


def test_label_studio_real_export(tmp_path, capsys):
    """A Label Studio 1.23.2 export: one skip, one task untouched, one answered twice, one corrected."""
    out = tmp_path / "ann" / "sft.jsonl"
    assert _run("annotate", "import", DATA / "label_studio_export.json", "--format", "label-studio",
                "--selection", DATA / "label_studio_selection.jsonl", "--out", out) == 0
    sel = [r["id"] for r in _jsonl(DATA / "label_studio_selection.jsonl")]
    rows = _jsonl(out)
    skipped, untouched, twice, fixed = sel[:4]
    assert [r["id"] for r in rows] == [i for i in sel if i not in (skipped, untouched)]
    answers = {r["id"]: r["response"] for r in rows}
    assert answers[twice] == f"second answer to {twice}"
    assert answers[fixed] == f"corrected answer to {fixed}"
    assert all(answers[i] == f"first answer to {i}" for i in sel[4:])
    printed = capsys.readouterr().out
    assert f"skipped by the annotator: {skipped!r}" in printed
    assert f"in the export without an answer: {untouched!r}" in printed
    store = _jsonl(tmp_path / "ann" / "annotations.jsonl")
    assert {r["annotator"] for r in store} == {"1"} and all(r["submitted_at"] for r in store)


def test_latest_submitted_wins(selection, tmp_path):
    a, b, c, d = [r["id"] for r in _jsonl(selection)][:4]
    answers = _answers(tmp_path / "answers.jsonl", [
        {"id": a, "response": "late", "submitted_at": "2025-01-02T10:00:00Z"},
        {"id": a, "response": "early", "submitted_at": "2025-01-01T10:00:00Z"},
        {"id": b, "response": "first"}, {"id": b, "response": "second"},
        {"id": c, "response": "   "}, {"id": c, "response": None, "status": "skipped"},
        {"id": d, "status": "skipped"}])
    out = tmp_path / "sft.jsonl"
    assert _run("annotate", "import", answers, "--format", "jsonl", "--selection", selection, "--out", out) == 0
    assert {r["id"]: r["response"] for r in _jsonl(out)} == {a: "late", b: "second"}
    report = json.loads((tmp_path / "import-round-1.json").read_text())
    assert report["superseded"] == {a: {"kept": "line 1", "dropped": ["line 2"]},
                                    b: {"kept": "line 4", "dropped": ["line 3"]}}
    assert report["skipped"] == [c, d] and report["empty"] == []
    assert report["not_in_export"] == [r["id"] for r in _jsonl(selection)][4:]


def test_rounds_store_and_exclude(selection, tmp_path, small_pool):
    ids = [r["id"] for r in _jsonl(selection)]
    out = tmp_path / "ann" / "sft.jsonl"
    first = _answers(tmp_path / "r1.jsonl", [{"id": i, "response": f"answer {i}",
                                              "submitted_at": "2025-01-01T00:00:00Z"} for i in ids[:3]])
    assert _run("annotate", "import", first, "--format", "jsonl", "--selection", selection, "--out", out) == 0
    store = tmp_path / "ann" / "annotations.jsonl"
    assert sorted(read_ids(store)) == sorted(ids[:3])

    # Round 2: a new selection that excludes the store; its answers add to the same dataset.
    assert _run("select", small_pool, "--budget", 4, "--strategy", "random", "--exclude", store,
                "--out", tmp_path / "sel2", "-q") == 0
    sel2 = tmp_path / "sel2" / "selection.jsonl"
    ids2 = [r["id"] for r in _jsonl(sel2)]
    assert not set(ids2) & set(ids[:3])
    second = _answers(tmp_path / "r2.jsonl", [
        *[{"id": i, "response": f"answer {i}"} for i in ids2],
        {"id": ids[0], "response": f"answer {ids[0]}"},  # same answer again: unchanged
        {"id": ids[1], "response": "a correction", "submitted_at": "2025-02-01T00:00:00Z"},  # newer: replaces
        {"id": ids[2], "response": "stale", "submitted_at": "2024-12-01T00:00:00Z"}])  # older: kept stored
    assert _run("annotate", "import", second, "--format", "jsonl", "--selection", sel2, "--out", out) == 0
    report = json.loads((tmp_path / "ann" / "import-round-2.json").read_text())
    assert report["imported"] == ids2 and report["replaced"] == [ids[1]]
    assert report["unchanged"] == [ids[0]] and report["kept_stored"] == [ids[2]]
    assert report["earlier_round"] == ids[:3]
    rows = _jsonl(out)
    assert [r["id"] for r in rows] == ids[:3] + ids2, "each prompt once, in the order first annotated"
    assert {r["id"]: r["response"] for r in rows}[ids[1]] == "a correction"
    assert {r["id"]: r["response"] for r in rows}[ids[2]] == f"answer {ids[2]}"
    assert [r["round"] for r in _jsonl(store)] == [1, 1, 1] + [2] * (len(ids2) + 1)
    sft = load_pool(out).frame  # how `taskdiv train` reads a dataset
    assert sft["id"].tolist() == ids[:3] + ids2 and sft["response"].str.strip().astype(bool).all()


def test_oracle(selection, tmp_path, small_pool):
    out = tmp_path / "ann" / "sft.jsonl"
    assert _run("annotate", "oracle", selection, "--pool", small_pool, "--out", out) == 0
    pool = {r["id"]: r for r in _jsonl(small_pool)}
    rows = _jsonl(out)
    assert [r["id"] for r in rows] == [r["id"] for r in _jsonl(selection)]
    assert all(r["response"] == pool[r["id"]]["response"] and r["prompt"] == pool[r["id"]]["prompt"] for r in rows)
    assert all(set(r) == {"id", "task", "prompt", "response"} for r in rows)


def test_oracle_missing_reference(selection, tmp_path, small_pool, capsys):
    rows = _jsonl(small_pool)
    first = _jsonl(selection)[0]["id"]
    for r in rows:
        if r["id"] == first:
            r["response"] = ""
    pool = write_jsonl(tmp_path / "pool-gaps.jsonl", rows)
    assert _run("annotate", "oracle", selection, "--pool", pool, "--out", tmp_path / "ann" / "sft.jsonl") == 1
    err = capsys.readouterr().err
    assert "no reference response" in err and repr(first) in err and "pool-gaps.jsonl" in err
    assert not (tmp_path / "ann").exists()
    other = write_jsonl(tmp_path / "other-pool.jsonl", [{"id": "zz", "prompt": "p", "task": "t", "response": "r"}])
    assert _run("annotate", "oracle", selection, "--pool", other, "--out", tmp_path / "ann" / "sft.jsonl") == 1
    assert "not in the pool" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input


def _import(tmp_path, selection, file, fmt="label-studio", *extra) -> int:
    return _run("annotate", "import", file, "--format", fmt, "--selection", selection,
                "--out", tmp_path / "ann" / "sft.jsonl", *extra)


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"[]", "holds no tasks"),
    (b'[{"data": {"id": "x"}, "annotations": [}]', "line 1: malformed JSON"),
    (b'{"tasks": 1}', "expected a list of tasks"),
    (b'[{"prompt": "p", "response": "r"}]', "row 1: not a Label Studio task"),
    (b'[{"id": 7, "data": {"prompt": "p"}, "annotations": []}]', "task 7 has no data.id"),
])
def test_bad_label_studio_file(selection, tmp_path, capsys, content, message):
    bad = tmp_path / "export.json"
    bad.write_bytes(content)
    assert _import(tmp_path, selection, bad) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and message in err
    assert not (tmp_path / "ann").exists(), "nothing written"


def test_bad_jsonl_and_argilla_files(selection, tmp_path, capsys):
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"id": "a0", "response": "ok"}\n{"id": "a1", "response": 3}\n')
    assert _import(tmp_path, selection, bad, "jsonl") == 1
    assert f"{bad}, line 2, field 'response'" in capsys.readouterr().err
    (tmp_path / "empty-dataset").mkdir()
    assert _import(tmp_path, selection, tmp_path / "empty-dataset", "argilla") == 1
    assert "no records.json" in capsys.readouterr().err
    assert not (tmp_path / "ann").exists()


def test_bad_store_is_named_by_line(selection, tmp_path, capsys):
    ids = [r["id"] for r in _jsonl(selection)]
    assert _import(tmp_path, selection, _answers(tmp_path / "r1.jsonl", [{"id": ids[0], "response": "x"}]),
                   "jsonl") == 0
    store = tmp_path / "ann" / "annotations.jsonl"
    store.write_bytes(store.read_bytes() + b'{"id": "q", "response": "caf\xe9"}\n')
    answers = _answers(tmp_path / "r2.jsonl", [{"id": ids[1], "response": "y"}])
    assert _import(tmp_path, selection, answers, "jsonl") == 1
    assert f"{store}, line 2: not UTF-8" in capsys.readouterr().err
    store.write_text(store.read_text(encoding="latin-1").splitlines()[0] + "\n[1]\n")
    assert _import(tmp_path, selection, answers, "jsonl") == 1
    assert f"{store}, line 2: expected a JSON object, got a list" in capsys.readouterr().err


def test_line_separator_inside_an_answer_survives_the_store(selection, tmp_path):
    """The store is JSON lines split on '\\n' only: U+2028 written raw in a response is no line break."""
    ids = [r["id"] for r in _jsonl(selection)]
    answer = "first\u2028second"
    assert _import(tmp_path, selection, _answers(tmp_path / "r1.jsonl", [{"id": ids[0], "response": answer}]),
                   "jsonl") == 0
    assert _import(tmp_path, selection, _answers(tmp_path / "r2.jsonl", [{"id": ids[1], "response": "y"}]),
                   "jsonl") == 0
    rows = store.read_store(tmp_path / "ann" / "annotations.jsonl")
    assert rows["response"].tolist() == [answer, "y"]


def test_export_of_another_selection(selection, tmp_path, capsys):
    """The real Label Studio export belongs to another selection: every id is named as unknown."""
    assert _import(tmp_path, selection, DATA / "label_studio_export.json") == 1
    err = capsys.readouterr().err
    assert "label_studio_export.json" in err and "12 of 12 id(s) are not in the selection" in err
    assert "'chess-1'" in err and "another selection" in err
    assert not (tmp_path / "ann").exists()


def test_unknown_ids_skipped_on_request(selection, tmp_path, capsys):
    ids = [r["id"] for r in _jsonl(selection)]
    answers = _answers(tmp_path / "a.jsonl", [{"id": ids[0], "response": "ok"}, {"id": "ghost", "response": "boo"}])
    assert _import(tmp_path, selection, answers, "jsonl") == 1
    assert "'ghost'" in capsys.readouterr().err
    assert _import(tmp_path, selection, answers, "jsonl", "--skip-unknown") == 0
    assert "not in the selection (dropped): 'ghost'" in capsys.readouterr().out
    assert [r["id"] for r in _jsonl(tmp_path / "ann" / "sft.jsonl")] == [ids[0]]


def test_prompt_differs_from_selection(selection, tmp_path, capsys):
    pid = _jsonl(selection)[0]["id"]
    answers = _answers(tmp_path / "a.jsonl", [{"id": pid, "prompt": "a different prompt", "response": "r"}])
    assert _import(tmp_path, selection, answers, "jsonl") == 1
    assert "differ from the selection's text" in capsys.readouterr().err


def test_nothing_to_import(selection, tmp_path, capsys):
    ids = [r["id"] for r in _jsonl(selection)]
    answers = _answers(tmp_path / "a.jsonl", [{"id": ids[0], "status": "skipped"}, {"id": ids[1], "response": ""}])
    assert _import(tmp_path, selection, answers, "jsonl") == 1
    err = capsys.readouterr().err
    assert "no answers to import (1 skipped, 1 empty" in err and "a.jsonl" in err
    assert not (tmp_path / "ann").exists()


@pytest.mark.parametrize("command", ["export", "import"])
def test_unknown_format(selection, tmp_path, capsys, command):
    args = ["annotate", command, selection, "--format", "labelstudio", "--out", tmp_path / "x"]
    if command == "import":
        args = ["annotate", "import", selection, "--format", "argila", "--selection", selection,
                "--out", tmp_path / "x.jsonl"]
    assert _run(*args) == 1
    err = capsys.readouterr().err
    assert "unknown annotation format" in err and "Did you mean" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.jsonl").exists()


def test_failed_write_leaves_store_untouched(selection, tmp_path, monkeypatch):
    ids = [r["id"] for r in _jsonl(selection)]
    out = tmp_path / "ann" / "sft.jsonl"
    assert _import(tmp_path, selection, _answers(tmp_path / "r1.jsonl", [{"id": ids[0], "response": "x"}]),
                   "jsonl") == 0
    before = _snapshot(tmp_path / "ann")
    calls = []

    def failing(path, records):
        calls.append(path)
        if len(calls) == 2:  # the store was written to its temporary file; the SFT data fails
            raise OSError("disk full")
        return real(path, records)

    real = store.dump_jsonl
    monkeypatch.setattr(store, "dump_jsonl", failing)
    with pytest.raises(OSError):
        commands.run_import(commands.ImportConfig(
            file=str(_answers(tmp_path / "r2.jsonl", [{"id": ids[1], "response": "y"}])), format="jsonl",
            selection=str(selection), out=str(out)))
    assert _snapshot(tmp_path / "ann") == before, "no file changed, no temporary left behind"


def test_out_must_not_be_the_store(selection, tmp_path, capsys):
    answers = _answers(tmp_path / "a.jsonl", [{"id": _jsonl(selection)[0]["id"], "response": "r"}])
    assert _run("annotate", "import", answers, "--format", "jsonl", "--selection", selection,
                "--out", tmp_path / "annotations.jsonl") == 1
    assert "is the annotation store" in capsys.readouterr().err


def test_config_file(selection, tmp_path):
    """Options from --config YAML, as for every command."""
    cfg = tmp_path / "export.yaml"
    cfg.write_text(f"format: jsonl\nout: {tmp_path / 'js'}\n")
    assert _run("annotate", "export", selection, "--config", cfg) == 0
    assert (tmp_path / "js" / "prompts.jsonl").exists()
    shutil.rmtree(tmp_path / "js")


def test_argilla_export_leaves_logging_as_it_was(selection, tmp_path, caplog):
    """The SDK's INFO chatter on the root logger is dropped during the export only: other
    loggers are heard, logging is not disabled for the process, and the root logger keeps
    its handlers and filters."""
    import logging

    from taskdiv.annotate import argilla

    with caplog.at_level(logging.INFO):
        with argilla._quiet_sdk():
            logging.info("sdk chatter")
            logging.getLogger("taskdiv.elsewhere").info("ours")
    messages = [r.getMessage() for r in caplog.records]
    assert "ours" in messages and "sdk chatter" not in messages
    root = logging.getLogger()
    before = (logging.root.manager.disable, list(root.handlers), list(root.filters))
    argilla.write(tmp_path / "ds", read_selection(selection), "n")
    assert (tmp_path / "ds" / "records.json").exists()
    assert (logging.root.manager.disable, list(root.handlers), list(root.filters)) == before


def test_argilla_export_shows_no_sdk_info_lines(selection, tmp_path, caplog):
    """The SDK's own logger ('argilla.sdk: TextField title is Prompt') is quiet under the CLI
    unless -vv, as transformers' and datasets' are."""
    import logging

    caplog.set_level(logging.INFO)
    assert _run("annotate", "export", selection, "--format", "argilla", "--out", tmp_path / "ar") == 0
    assert [r.getMessage() for r in caplog.records if r.name.startswith("argilla")] == []


# ----------------------------------------------------------------------------- the format contract


def _answer_label_studio(out: Path, answers: dict, tmp_path: Path) -> Path:
    """Label Studio's JSON export of the exported tasks, `answers` typed into the response area."""
    tasks = json.loads((out / "tasks.json").read_text(encoding="utf-8"))
    export = []
    for n, task in enumerate(tasks, 1):
        pid = task["data"]["id"]
        annotations = [{"id": n, "completed_by": 1, "was_cancelled": False, "updated_at": "2025-01-01T00:00:00Z",
                        "result": [{"from_name": "response", "to_name": "prompt", "type": "textarea",
                                    "value": {"text": [answers[pid]]}}]}] if pid in answers else []
        export.append({"id": n, "data": task["data"], "annotations": annotations})
    path = tmp_path / "label-studio-export.json"
    path.write_text(json.dumps(export), encoding="utf-8")
    return path


def _answer_argilla(out: Path, answers: dict, tmp_path: Path) -> Path:
    """The exported dataset with `answers` as the SDK's responses, saved as Dataset.to_disk saves it."""
    import argilla as rg
    from argilla.records._io import JsonIO

    _, records = _argilla_load(out)
    for record in records:
        if str(record.id) in answers:
            record.responses.add(rg.Response("response", answers[str(record.id)], user_id=uuid.UUID(int=1),
                                             status="submitted"))
    annotated = tmp_path / "argilla-annotated"
    shutil.copytree(out, annotated, ignore=shutil.ignore_patterns("records.json"))
    JsonIO.to_json(records, annotated / "records.json")
    return annotated


def _answer_jsonl(out: Path, answers: dict, tmp_path: Path) -> Path:
    rows = [dict(r, response=answers.get(r["id"], "")) for r in _jsonl(out / "prompts.jsonl")]
    return write_jsonl(tmp_path / "answered.jsonl", rows)


# How an annotator answers in each tool: one entry per registered format.
ANSWER = {"label-studio": _answer_label_studio, "argilla": _answer_argilla, "jsonl": _answer_jsonl}


def test_every_format_is_under_the_contract():
    assert set(ANSWER) == set(FORMATS)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_contract(name, selection, tmp_path):
    """Every FORMATS entry: write a selection, answer some of it in the tool, read it back:
    the same ids with the same prompts, and exactly the answers given."""
    fmt, rows = FORMATS[name], read_selection(selection)
    out = tmp_path / "exported"
    fmt.check_out(out)
    written = fmt.write(out, rows, "contract")
    assert written and all(Path(p).exists() for p in written)
    answers = {pid: f"answer to {pid}" for pid in rows["id"][::2]}
    items = fmt.read(_answer := ANSWER[name](out, answers, tmp_path))
    assert [it.id for it in items] == rows["id"].tolist()
    assert [it.prompt for it in items] == rows["prompt"].tolist()
    submitted = {it.id: [a.response for a in it.answers if a.status == "submitted"] for it in items}
    assert submitted == {pid: [answers[pid]] if pid in answers else [] for pid in rows["id"]}
    # ... and through `taskdiv annotate import`, the SFT dataset holds exactly those answers.
    sft = tmp_path / "ann" / "sft.jsonl"
    assert _run("annotate", "import", _answer, "--format", name, "--selection", selection, "--out", sft) == 0
    assert {r["id"]: r["response"] for r in _jsonl(sft)} == answers


# ----------------------------------------------------------------------------- review fixes


def test_answer_without_time_replaces_a_timed_one_but_an_old_file_reimported_does_not(selection, tmp_path):
    ids = [r["id"] for r in _jsonl(selection)]
    out = tmp_path / "ann" / "sft.jsonl"
    timed = _answers(tmp_path / "ls.jsonl", [{"id": ids[0], "response": "6", "submitted_at": "2024-01-02T10:00:00Z"}])
    assert _import(tmp_path, selection, timed, "jsonl") == 0
    # A correction from a tool that records no time: the latest thing the user did, so it wins.
    fix = _answers(tmp_path / "fix.jsonl", [{"id": ids[0], "response": "3 + 3 = 6"}])
    assert _import(tmp_path, selection, fix, "jsonl") == 0
    assert json.loads((tmp_path / "ann" / "import-round-2.json").read_text())["replaced"] == [ids[0]]
    # Timeless rounds: r1, then r2 corrects it, then r1 is imported again by mistake.
    r1 = _answers(tmp_path / "r1.jsonl", [{"id": ids[1], "response": "yes"}])
    r2 = _answers(tmp_path / "r2.jsonl", [{"id": ids[1], "response": "Yes."}])
    for f in (r1, r2):
        assert _import(tmp_path, selection, f, "jsonl") == 0
    assert _import(tmp_path, selection, r1, "jsonl") == 0
    answers = {r["id"]: r["response"] for r in _jsonl(out)}
    assert answers == {ids[0]: "3 + 3 = 6", ids[1]: "Yes."}, "the re-import of r1 rolled r2 back"
    assert not (tmp_path / "ann" / "import-round-5.json").exists()
    # An earlier answer with a newer time than the stored one is a deliberate revert: it wins.
    revert = _answers(tmp_path / "rev.jsonl", [{"id": ids[0], "response": "6", "submitted_at": "2030-01-01T00:00:00Z"}])
    assert _import(tmp_path, selection, revert, "jsonl") == 0
    assert {r["id"]: r["response"] for r in _jsonl(out)}[ids[0]] == "6"


def test_import_keeps_the_mode_of_the_files_it_replaces(selection, tmp_path):
    ids = [r["id"] for r in _jsonl(selection)]
    assert _import(tmp_path, selection, _answers(tmp_path / "a.jsonl", [{"id": ids[0], "response": "x"}]),
                   "jsonl") == 0
    store_file, sft = tmp_path / "ann" / "annotations.jsonl", tmp_path / "ann" / "sft.jsonl"
    store_file.chmod(0o664)  # a store shared by a group
    sft.chmod(0o640)
    assert _import(tmp_path, selection, _answers(tmp_path / "b.jsonl", [{"id": ids[1], "response": "y"}]),
                   "jsonl") == 0
    assert len(_jsonl(store_file)) == 2
    assert (store_file.stat().st_mode & 0o777, sft.stat().st_mode & 0o777) == (0o664, 0o640)


def test_two_imports_into_one_store_at_once_both_land(selection, tmp_path):
    """The import holds a lock from reading the store to writing it: a second import that
    holds it (here this test, in the middle of its own read-modify-write) is waited for."""
    import threading

    from taskdiv.common.locks import locked

    ids = [r["id"] for r in _jsonl(selection)]
    assert _import(tmp_path, selection, _answers(tmp_path / "a.jsonl", [{"id": ids[0], "response": "x"}]),
                   "jsonl") == 0
    store_file = tmp_path / "ann" / "annotations.jsonl"
    other = {**_jsonl(store_file)[0], "id": ids[1], "response": "from the other import", "round": 2}
    finished = threading.Event()

    def second_import():
        _import(tmp_path, selection, _answers(tmp_path / "b.jsonl", [{"id": ids[2], "response": "z"}]), "jsonl")
        finished.set()

    with locked(tmp_path / "ann", "a concurrent import"):
        worker = threading.Thread(target=second_import)
        worker.start()
        # An import that did not wait would finish (and set the event) while the lock is held.
        assert not finished.wait(2.0), "the import did not wait for the lock"
        store_file.write_text(store_file.read_text() + json.dumps(other) + "\n")  # the other import's write
    assert finished.wait(60), "the import never finished after the lock was released"
    worker.join(30)
    assert [r["id"] for r in _jsonl(store_file)] == [ids[0], ids[1], ids[2]]
    assert [r["round"] for r in _jsonl(store_file)] == [1, 2, 3]


def test_a_first_import_locks_the_store_directory_it_makes(selection, tmp_path):
    """Two first imports into a store whose directory does not exist yet: the first locks the
    nearest parent, makes the directory and locks it too, so an import that arrives once the
    directory exists (and locks it) waits as well. A refused first import removes what it made."""
    import fcntl
    import os
    import threading

    directory = tmp_path / "shared" / "store"
    inside, release = threading.Event(), threading.Event()

    def first_import():
        with store.store_lock(directory, "a first import"):
            inside.set()
            release.wait(30)

    worker = threading.Thread(target=first_import)
    worker.start()
    assert inside.wait(30) and directory.is_dir()
    fd = os.open(directory, os.O_RDONLY)  # what a second import, finding the directory, locks
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        release.set()
        worker.join(30)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the first is done
    finally:
        os.close(fd)
    assert not (tmp_path / "shared").exists()  # nothing landed: no trace
    # A refused first import (nothing to import) leaves no directory behind either.
    ids = [r["id"] for r in _jsonl(selection)]
    answers = _answers(tmp_path / "a.jsonl", [{"id": ids[0], "response": ""}])
    assert cli.main(["annotate", "import", str(answers), "--format", "jsonl", "--selection", str(selection),
                     "--out", str(tmp_path / "new" / "ann" / "sft.jsonl")]) == 1
    assert not (tmp_path / "new").exists()


def test_label_studio_csv_export_and_renamed_textarea_are_named(selection, tmp_path, capsys):
    csv = tmp_path / "export.csv"
    csv.write_text("id,prompt,response,annotator\n1,What is 2+2?,4,1\n")
    assert _import(tmp_path, selection, csv) == 1
    err = capsys.readouterr().err
    assert str(csv) in err and "CSV or TSV" in err and "JSON format" in err
    export = json.loads((DATA / "label_studio_export.json").read_text())
    for task in export:
        for ann in task["annotations"]:
            for res in ann["result"]:
                res["from_name"] = "answer"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(export))
    assert _run("annotate", "import", renamed, "--format", "label-studio", "--selection",
                DATA / "label_studio_selection.jsonl", "--out", tmp_path / "ann" / "sft.jsonl") == 1
    err = capsys.readouterr().err
    assert str(renamed) in err and "from 'answer'" in err and 'name="response"' in err
    assert not (tmp_path / "ann").exists()


def test_argilla_export_into_a_symlinked_directory(selection, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert _run("annotate", "export", selection, "--format", "argilla", "--out", tmp_path / "link") == 0
    assert (tmp_path / "link").is_symlink() and (real / "records.json").exists()
