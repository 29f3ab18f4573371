"""Pool files as users have them: numbers with gaps, dates, byte-order marks, blank CSV
cells, mixed chat shapes, Alpaca without `input`, explicit field names that are absent."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from taskdiv import cli
from taskdiv.common.errors import DataError
from taskdiv.pool.fields import FieldMap
from taskdiv.pool.load import load_pool
from taskdiv.pool.readers import read_ids


def _rows(n=3, **extra):
    return [{"id": f"p{i}", "prompt": f"question {i}", "task": "t", **{k: v[i] for k, v in extra.items()}}
            for i in range(n)]


@pytest.mark.parametrize("blank_line", [False, True])  # Arrow's reader, then the line-by-line one
def test_whole_numbers_with_a_gap_stay_whole(tmp_path, blank_line):
    path = write_jsonl(tmp_path / "pool.jsonl", _rows(response=[42, None, 7], year=[1990, None, 2001]))
    if blank_line:
        path.write_text(path.read_text() + "\n\n")
    frame = load_pool(str(path)).frame
    assert frame["response"].tolist() == ["42", None, "7"]
    templated = load_pool(str(path), FieldMap(prompt_template="{prompt} in {year}")).frame
    assert templated["prompt"].tolist() == ["question 0 in 1990", "question 1", "question 2 in 2001"]


def test_whole_numbers_with_a_gap_stay_whole_in_parquet(tmp_path):
    table = pa.table({"id": ["a", "b"], "prompt": ["x", "y"], "task": ["t", "t"], "response": pa.array([10, None])})
    pq.write_table(table, tmp_path / "pool.parquet")
    assert load_pool(str(tmp_path / "pool.parquet")).frame["response"].tolist() == ["10", None]


@pytest.mark.parametrize("blank_line", [False, True])
def test_strings_that_look_like_times_stay_as_written(tmp_path, blank_line):
    stamps = ["2024-01-05T10:00:00Z", "2024-01-06", "2024-01-07 08:30"]
    turns = [[{"role": "user", "content": "hi", "at": s}, {"role": "assistant", "content": s}] for s in stamps]
    path = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": s, "prompt": f"when {i}?", "task": "2024-01-01", "response": s, "meta": {"at": s}, "turns": turns[i]}
        for i, s in enumerate(stamps)])
    if blank_line:
        path.write_text(path.read_text() + "\n\n")
    frame = load_pool(str(path)).frame
    assert frame["id"].tolist() == stamps and frame["response"].tolist() == stamps
    assert set(frame["task"]) == {"2024-01-01"}


def test_an_explicit_id_or_response_field_that_is_absent_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", _rows())
    for fields, name in ((FieldMap(id_field="uuid"), "--id-field"),
                         (FieldMap(response_field="answer"), "--response-field")):
        with pytest.raises(DataError, match=rf"{tmp_path / 'pool.jsonl'}: no field '\w+' \({name}\); the source has"):
            load_pool(str(path), fields)
    assert len(load_pool(str(path))) == 3  # the default names may be absent: ids are generated


def test_blank_csv_cells_are_no_id_and_no_response(tmp_path, capsys):
    path = tmp_path / "pool.csv"
    path.write_text("id,prompt,task,response\na,p1,t,r1\n,p2,t,r2\n")
    with pytest.raises(DataError, match=r"pool.csv, row 2, field 'id': missing id"):
        load_pool(str(path))
    path.write_text("id,prompt,task,response\na,p1,t,r1\nb,p2,t,\nc,p3,t,  \n")
    assert load_pool(str(path)).frame["response"].tolist() == ["r1", None, None]
    assert cli.main(["pool", "info", str(path)]) == 0
    assert "with reference response: 1" in capsys.readouterr().out


def test_byte_order_marks(tmp_path):
    bom = "\ufeff"
    rows = _rows()
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text(bom + "".join(json.dumps(r) + "\n" for r in rows) + "\n\n", encoding="utf-8")  # slow path
    assert load_pool(str(jsonl)).frame["id"].tolist() == ["p0", "p1", "p2"]
    whole = tmp_path / "pool.json"
    whole.write_text(bom + json.dumps(rows), encoding="utf-8")
    assert len(load_pool(str(whole))) == 3
    ids = tmp_path / "done.txt"
    ids.write_bytes(b"\xef\xbb\xbfp0\r\np1\r\n")
    assert read_ids(ids) == ["p0", "p1"]


def test_exclude_file_with_an_upper_case_extension(tmp_path, small_pool):
    prev = write_jsonl(tmp_path / "PREV.JSONL", [{"id": "c0"}, {"id": "c1"}])
    assert read_ids(prev) == ["c0", "c1"]


def test_mixed_openai_and_sharegpt_turns(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "task": "t"},
        {"conversations": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "yo"}], "task": "t"}])
    frame = load_pool(str(path)).frame
    assert frame["prompt"].tolist() == ["hi", "hey"] and frame["response"].tolist() == ["hello", "yo"]


def test_alpaca_without_input_and_with_a_list_output(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Say hi", "output": "hi", "task": "t"}])
    assert load_pool(str(path)).frame["prompt"].tolist() == ["Say hi"]
    path = write_jsonl(tmp_path / "alpaca2.jsonl", [{"instruction": "Say hi", "input": "", "output": ["hi", "hello"],
                                                     "task": "t"}])
    with pytest.raises(DataError, match=r"line 1, field 'output': response is a list"):
        load_pool(str(path))


def test_pool_info_and_export_without_task_labels(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    assert cli.main(["pool", "info", str(path)]) == 0
    assert "tasks: none (no task field; `taskdiv select --tasks auto`" in capsys.readouterr().out
    assert cli.main(["pool", "export", str(path), "--out", str(tmp_path / "out.parquet")]) == 0
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 2
