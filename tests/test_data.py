"""Loading pools: formats, shapes, field mapping, ids, and bad input."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import write_jsonl

from taskdiv.common.errors import DataError, TaskdivError
from taskdiv.pool.container import stable_id
from taskdiv.pool.fields import FieldMap
from taskdiv.pool.load import load_pool
from taskdiv.pool.readers import read_ids
from taskdiv.selection.scores import read_scores

ROWS = [{"id": "x1", "prompt": "Add 2 and 2.", "task": "math", "response": "4"},
        {"id": "x2", "prompt": "Capital of France?", "task": "geo", "response": "Paris"},
        {"id": "x3", "prompt": "Add 3 and 3.", "task": "math", "response": None}]


def check(pool):
    assert list(pool.frame["id"]) == ["x1", "x2", "x3"]
    assert list(pool.frame["task"]) == ["math", "geo", "math"]
    assert pool.frame["response"].iloc[1] == "Paris" and pool.frame["response"].iloc[2] is None
    assert pool.task_sizes().to_dict() == {"geo": 1, "math": 2}


def test_jsonl(tmp_path):
    check(load_pool(str(write_jsonl(tmp_path / "p.jsonl", ROWS))))


def test_json_list_and_wrapped(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    check(load_pool(str(tmp_path / "a.json")))
    check(load_pool(str(tmp_path / "b.json")))


def test_csv(tmp_path):
    pd.DataFrame(ROWS).to_csv(tmp_path / "p.csv", index=False)
    pool = load_pool(str(tmp_path / "p.csv"))
    assert pool.frame["response"].iloc[0] == "4"


def test_parquet(tmp_path):
    pd.DataFrame(ROWS).to_parquet(tmp_path / "p.parquet")
    check(load_pool(str(tmp_path / "p.parquet")))


def test_datasets_save_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    check(load_pool(str(tmp_path / "ds")))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(TaskdivError, match="several splits"):
        load_pool(str(tmp_path / "dd"))
    check(load_pool(str(tmp_path / "dd" / "train")))


def test_field_mapping_and_template(tmp_path):
    rows = [{"instruction": "Summarise.", "context": "Long text.", "category": "summarization", "response": "Short."},
            {"instruction": "Name a colour.", "context": "", "category": "brainstorming", "response": "Red"}]
    path = write_jsonl(tmp_path / "dolly.jsonl", rows)
    pool = load_pool(str(path), FieldMap(task_field="category", prompt_template="{instruction}\n\n{context}"))
    assert list(pool.frame["prompt"]) == ["Summarise.\n\nLong text.", "Name a colour."]
    assert list(pool.frame["task"]) == ["summarization", "brainstorming"]
    assert pool.frame["id"].iloc[0] == stable_id("summarization", "Summarise.\n\nLong text.")


def test_alpaca_shape(tmp_path):
    rows = [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "task": "mt"},
            {"instruction": "Say hi.", "input": "", "output": "Hi", "task": "chat"}]
    pool = load_pool(str(write_jsonl(tmp_path / "a.jsonl", rows)))
    assert list(pool.frame["prompt"]) == ["Translate.\n\nBonjour", "Say hi."]
    assert list(pool.frame["response"]) == ["Hello", "Hi"]


def test_chat_shapes(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}], "task": "greet"}]
    pool = load_pool(str(write_jsonl(tmp_path / "m.jsonl", rows)))
    assert pool.frame.iloc[0][["prompt", "response"]].tolist() == ["Hi?", "Hello."]
    rows = [{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "task": "m"}]
    pool = load_pool(str(write_jsonl(tmp_path / "s.jsonl", rows)))
    assert pool.frame.iloc[0][["prompt", "response"]].tolist() == ["2+2?", "4"]


def test_generated_ids_are_stable_and_unique(tmp_path):
    rows = [{"prompt": "same", "task": "t"}, {"prompt": "same", "task": "t"}, {"prompt": "other", "task": "t"}]
    a = load_pool(str(write_jsonl(tmp_path / "a.jsonl", rows)))
    b = load_pool(str(write_jsonl(tmp_path / "b.jsonl", rows)))
    assert list(a.ids) == list(b.ids)
    assert a.ids[1] == a.ids[0] + "-1" and len(set(a.ids)) == 3


# --------------------------------------------------------------------------- bad input


def test_missing_prompt_names_line_and_field(tmp_path):
    rows = [ROWS[0], {"id": "y", "task": "t"}]
    with pytest.raises(DataError, match=r"p.jsonl, line 2, field 'prompt': missing or empty prompt"):
        load_pool(str(write_jsonl(tmp_path / "p.jsonl", rows)))


@pytest.mark.parametrize("head,sep", [("", "\n\n"), ("", "\n   \n"), ("", "\r\n\r\n"), ("  \n", "\n\n")])
def test_empty_prompt_after_blank_line(tmp_path, head, sep):
    path = tmp_path / "p.jsonl"
    path.write_bytes((head + json.dumps(ROWS[0]) + sep + json.dumps({"id": "y", "prompt": "  ", "task": "t"})
                      + "\n").encode())
    line = 3 + head.count("\n")
    with pytest.raises(DataError, match=rf"line {line}, field 'prompt'"):
        load_pool(str(path))


def test_missing_task(tmp_path):
    rows = [ROWS[0], {"id": "y", "prompt": "p", "task": ""}]
    with pytest.raises(DataError, match=r"line 2, field 'task'"):
        load_pool(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    rows = [{"id": "y", "prompt": "p"}]
    with pytest.raises(DataError, match="--tasks auto"):
        load_pool(str(write_jsonl(tmp_path / "q.jsonl", rows)))
    assert len(load_pool(str(tmp_path / "q.jsonl"), require_tasks=False)) == 1


def test_duplicate_ids(tmp_path):
    rows = [ROWS[0], ROWS[1], dict(ROWS[2], id="x1")]
    with pytest.raises(DataError, match=r"line 1, field 'id': duplicate id 'x1' \(also at line 3"):
        load_pool(str(write_jsonl(tmp_path / "p.jsonl", rows)))


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{\"id\": \"y\", \"prompt\": \n")
    with pytest.raises(DataError, match=r"p.jsonl, line 2: malformed JSON"):
        load_pool(str(path))


def test_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"id": "y", "prompt": "caf\xe9", "task": "t"}\n')
    with pytest.raises(DataError, match=r"line 2: not UTF-8"):
        load_pool(str(path))
    csv = tmp_path / "p.csv"
    csv.write_bytes(b"id,prompt,task\n1,ok,t\n2,caf\xe9,t\n")
    with pytest.raises(DataError, match=r"p.csv, line 3: not UTF-8"):
        load_pool(str(csv))


def test_unknown_path_and_format(tmp_path):
    with pytest.raises(TaskdivError, match="no such file"):
        load_pool(str(tmp_path / "nope.jsonl"))
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(TaskdivError, match="unknown pool format"):
        load_pool(str(tmp_path / "p.txt"))


def test_empty_pool(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match=r"e.jsonl: the file is empty"):
        load_pool(str(tmp_path / "e.jsonl"))


@pytest.mark.parametrize("name,content,message", [
    ("e.csv", "", "the file is empty"), ("w.csv", "\n  \n", "the file is empty"),
    ("h.csv", "id,prompt,task\n", "the pool is empty: the source has no rows"),
    ("w.jsonl", "\n \n", "the pool is empty: the source has no rows"),
    ("e.json", "", "the file is empty"), ("l.json", "[]", "the pool is empty: the source has no rows")])
def test_empty_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=rf"{name}: {message}"):
        load_pool(str(tmp_path / name))


def test_blank_and_null_prompts_point_at_the_first_and_count_both(tmp_path):
    rows = [ROWS[0], {"id": "b", "prompt": "  ", "task": "t"}, {"id": "n", "prompt": None, "task": "t"}]
    with pytest.raises(DataError, match=r"line 2, field 'prompt': missing or empty prompt \(2 such row"):
        load_pool(str(write_jsonl(tmp_path / "p.jsonl", rows)))


def test_blank_task_is_no_task_when_tasks_are_optional(tmp_path):
    rows = [{"id": "a", "prompt": "p", "task": " "}, {"id": "b", "prompt": "q", "task": None},
            {"id": "c", "prompt": "r", "task": "t"}]
    pool = load_pool(str(write_jsonl(tmp_path / "p.jsonl", rows)), require_tasks=False)
    assert pool.frame["task"].isna().tolist() == [True, True, False]


def test_chat_row_without_messages(tmp_path):
    path = tmp_path / "c.jsonl"
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "task": "t"}
    # The blank line sends the file through the line-by-line reader, where a missing field is NaN.
    path.write_text(json.dumps(chat) + "\n\n" + json.dumps({"task": "t", "other": 1}) + "\n")
    with pytest.raises(DataError, match=r"line 3, field 'messages': expected a list of turns, got nothing"):
        load_pool(str(path))
    path.write_text(json.dumps(chat) + "\n" + json.dumps({"task": "t", "messages": "Hi"}) + "\n")
    with pytest.raises(DataError, match=r"line 2, field 'messages': expected a list of turns, got str"):
        load_pool(str(path))


@pytest.mark.parametrize("template,message", [
    ("{instruction", r"--prompt-template '\{instruction' is not a valid template"),
    ("{instruction}{}", r"--prompt-template .*every \{\} must name a field"),
    ("{instruction:d}", r"p.jsonl, line 1, field 'instruction': --prompt-template cannot format")])
def test_bad_prompt_template(tmp_path, template, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Say hi.", "task": "t"}])
    with pytest.raises(DataError, match=message):
        load_pool(str(path), FieldMap(prompt_template=template))


# --------------------------------------------------------------------------- scores and ids


def test_read_scores_validates(tmp_path, small_pool):
    pool = load_pool(str(small_pool))
    good = tmp_path / "s.csv"
    pd.DataFrame({"id": ["a0", "b1"], "confidence": [0.5, 0.25]}).to_csv(good, index=False)
    conf = read_scores(good, pool)
    assert conf[0] == 0.5 and conf[3] == 0.25 and np.isnan(conf).sum() == 14
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": ["a0", "b1"], "confidence": [0.5, 1.5]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"row 2, field 'confidence'"):
        read_scores(bad, pool)
    nan = tmp_path / "nan.csv"
    pd.DataFrame({"id": ["a0", "b1"], "confidence": [float("nan"), 0.1]}).to_csv(nan, index=False)
    with pytest.raises(DataError, match=r"row 1, field 'confidence'"):
        read_scores(nan, pool)
    foreign = tmp_path / "foreign.csv"
    pd.DataFrame({"id": ["a0", "zz", "yy"], "confidence": [0.5, 0.1, 0.2]}).to_csv(foreign, index=False)
    with pytest.raises(DataError, match="2 of 3 scored id"):
        read_scores(foreign, pool)
    with pytest.raises(TaskdivError, match=r"scores.csv: no such scores file"):
        read_scores(tmp_path, pool)  # a directory without scores.csv
    (tmp_path / "scores.csv").write_text("")
    with pytest.raises(DataError, match=r"scores.csv: the file is empty"):
        read_scores(tmp_path, pool)
    (tmp_path / "scores.csv").write_text('id,confidence\n"a0,0.5\n')
    with pytest.raises(DataError, match=r"scores.csv: not a readable CSV"):
        read_scores(tmp_path, pool)


def test_read_ids_formats(tmp_path):
    (tmp_path / "ids.txt").write_text("a\nb\n\n")
    assert read_ids(tmp_path / "ids.txt") == ["a", "b"]
    write_jsonl(tmp_path / "sel.jsonl", [{"id": "c", "prompt": "p"}])
    assert read_ids(tmp_path / "sel.jsonl") == ["c"]


def test_hub_loader_with_sampling(tmp_path):
    # load_dataset on a local data directory takes the same code path as a hub name, offline.
    data = tmp_path / "hubdata"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"id": f"r{i}", "prompt": f"p{i}", "task": f"t{i % 3}"} for i in range(50)])
    full = load_pool(f"hf:{data}?split=train")
    assert len(full) == 50
    a = load_pool(f"hf:{data}?split=train&sample=10&seed=1")
    b = load_pool(f"hf:{data}?split=train&sample=10&seed=1")
    c = load_pool(f"hf:{data}?split=train&sample=10&seed=2")
    assert len(a) == 10 and list(a.ids) == list(b.ids) and list(a.ids) != list(c.ids)
    with pytest.raises(TaskdivError, match="unknown option"):
        load_pool(f"hf:{data}?splt=train")


def test_task_codes_and_id_ranks_on_a_chunked_arrow_pool(tmp_path):
    # A Parquet pool of several row groups loads as chunked pyarrow-backed columns; the Arrow
    # fast paths (task codes, id ranks) must agree with pandas on it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 5_000
    tasks = np.array([f"task-{i}" for i in rng.integers(0, 37, size=n)])
    ids = np.array([f"p{i}" for i in rng.permutation(n)])
    pq.write_table(pa.table({"id": ids, "prompt": [f"q {i}" for i in range(n)], "task": tasks}),
                   tmp_path / "pool.parquet", row_group_size=700)
    pool = load_pool(str(tmp_path / "pool.parquet"))
    names, codes = pool.task_codes()
    want_codes, want_names = pd.factorize(pd.Series(tasks), sort=True)
    assert list(names) == list(want_names) and np.array_equal(codes, want_codes)
    order = np.argsort(ids, kind="stable")
    assert np.array_equal(pool.id_rank[order], np.arange(n))
    keys = pool.random_keys(5)
    want = np.empty(n)
    want[order] = np.random.default_rng(5).random(n)
    assert np.array_equal(keys, want)


@pytest.mark.parametrize("labels", ["plain", "padded", "blank", "numbers"])
def test_task_labels_checked_once_per_label_agree_with_the_row_by_row_path(tmp_path, labels):
    # The loader checks and strips each distinct task label once (Arrow dictionary); labels
    # it cannot take that way (padded, blank, numbers) go the row-by-row way. Either way the
    # labels, the task codes handed to Pool and an error for a blank one are the same.
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    n = 3_000
    names = [f"task-{i}" for i in range(29)]
    if labels == "padded":
        names[3] = " task-3 "  # the same task as "task-3" once stripped
        names[4] = "task-3"
    tasks = [names[i] for i in rng.integers(0, len(names), size=n)]
    if labels == "blank":
        tasks[1234] = "  "
    table = {"id": [f"p{i}" for i in rng.permutation(n)], "prompt": [f"q {i}" for i in range(n)],
             "task": rng.integers(0, 9, size=n) if labels == "numbers" else tasks}
    pq.write_table(pa.table(table), tmp_path / "pool.parquet", row_group_size=700)
    if labels == "blank":
        with pytest.raises(DataError, match=r"row 1235, field 'task': missing or empty task label \(1 such row"):
            load_pool(str(tmp_path / "pool.parquet"))
        pool = load_pool(str(tmp_path / "pool.parquet"), require_tasks=False)
        assert pool.frame["task"].isna().sum() == 1
        return
    pool = load_pool(str(tmp_path / "pool.parquet"))
    want = pd.Series(table["task"]).astype(str).str.strip()
    assert pool.frame["task"].tolist() == want.tolist()
    assert pool.codes is not None or labels != "plain"  # the plain column's codes come with the load
    got_names, got_codes = pool.task_codes()
    want_codes, want_names = pd.factorize(want, sort=True)
    assert list(got_names) == list(want_names) and np.array_equal(got_codes, want_codes)


def test_jsonl_line_numbers_hold_with_a_blank_last_line_and_two_objects_on_a_line(tmp_path):
    path = tmp_path / "p.jsonl"
    good = json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n   "  # a blank last line, no newline
    path.write_text(good)
    assert len(load_pool(str(path))) == 2
    # Two objects on line 2: pyarrow would read three rows from two lines; the error names line 2.
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + " " + json.dumps(ROWS[2]) + "\n")
    with pytest.raises(DataError, match=r"line 2"):
        load_pool(str(path))


def test_chunk_by_chunk_take_equals_take():
    import pyarrow as pa

    from taskdiv.pool.container import _take

    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 20, size=rng.integers(1, 6))
        chunked = pa.chunked_array([pa.array([f"s{i}-{j}" for j in range(n)], pa.large_string())
                                    for i, n in enumerate(sizes)], type=pa.large_string())
        if len(chunked) == 0:
            continue
        pos = rng.integers(0, len(chunked), size=rng.integers(0, 30))
        assert _take(chunked, pos).to_pylist() == [chunked[int(p)].as_py() for p in pos]


@pytest.mark.parametrize("value,kind", [(["a", "b"], "a list"), (True, "the boolean true"), ({"x": 1}, "an object")])
def test_a_response_that_is_not_text_names_its_line(tmp_path, value, kind):
    rows = [dict(ROWS[0], response="fine"), dict(ROWS[1], response=value)]
    with pytest.raises(DataError, match=rf"line 2, field 'response': response is {kind}"):
        load_pool(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    rows[1]["response"] = 42  # a number is its text
    assert load_pool(str(write_jsonl(tmp_path / "q.jsonl", rows))).frame["response"].tolist() == ["fine", "42"]


def test_newline_count_across_blocks():
    from taskdiv.pool.jsonl import _scan_lines

    rng = np.random.default_rng(0)
    data = rng.choice(np.frombuffer(b"ab\n", np.uint8), size=(3 << 20) + 17).tobytes()  # 3 blocks and a bit
    data = b"\n" + data[1:(1 << 20) - 1] + b"\n\n" + data[(1 << 20) + 1:-1] + b"\n"  # at both ends of a block
    assert _scan_lines(data)[0] == data.count(b"\n")
    assert _scan_lines(b"")[0] == 0 and _scan_lines(b"x")[0] == 0


@pytest.mark.parametrize("layout, bracketed", [
    ("short lines", False), ("a line of 3000 brackets", True), ("a 1 MB line of brackets spread thin", True),
    ("a few brackets a line", False)])
def test_the_bracket_bound_finds_every_line_that_could_nest_too_deep(layout, bracketed):
    """_scan_lines' cheap bound (brackets per 16 KB) never misses a line with CRASH_BRACKETS of
    them, wherever the line starts and however long it is."""
    from taskdiv.pool.jsonl import CRASH_BRACKETS, _scan_lines

    line = b'{"id": "a", "x": 1}\n'
    if layout == "short lines":
        data = line * 100_000
    elif layout == "a line of 3000 brackets":
        data = line * 1000 + b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}\n" + line * 1000
    elif layout == "a 1 MB line of brackets spread thin":  # crosses stretches without a line break
        data = line * 1000 + b'{"x": "' + (b"[" + b"." * 400) * CRASH_BRACKETS + b'"}\n' + line
    else:
        data = b'{"id": "a1", "prompt": "What is [x]?", "choices": ["a", "b"], "task": "t"}\n' * 50_000
    scanned = _scan_lines(data)
    assert scanned == (data.count(b"\n"), True, bracketed)


def test_jsonl_read_in_pieces_equals_one_read(tmp_path, monkeypatch):
    # Pieces of a few lines: types inferred per piece are unified (int then float, a column that
    # only some pieces have, a line longer than a piece), as one reading of the file gives them.
    import taskdiv.pool.jsonl as data

    rows = [{"id": f"r{i}", "prompt": f"prompt {i} " + ("long " * 40 if i == 7 else ""), "task": f"t{i % 3}"}
            for i in range(40)]
    for i, row in enumerate(rows):
        if i % 5 == 0:
            row["score"] = i if i < 20 else i + 0.5
        if i >= 30:
            row["response"] = f"answer {i}"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    whole = data._read_jsonl_arrow(path)
    monkeypatch.setattr(data, "JSONL_PIECE", 150)
    pieces = data._read_jsonl_arrow(path)
    assert pieces.num_rows == 40
    assert pieces.select(whole.column_names).equals(whole)
    pool = load_pool(str(path))
    assert pool.frame["response"].isna().sum() == 30 and pool.frame["prompt"].iloc[7].startswith("prompt 7 long")
    # A bad line in a later piece still names its line.
    path.write_text(path.read_text() + '{"id": "x", "prompt": " ", "task": "t"}\n')
    with pytest.raises(DataError, match=r"line 41, field 'prompt'"):
        load_pool(str(path))


def test_jsonl_without_memory_maps_is_read_whole(tmp_path, monkeypatch):
    import mmap

    import taskdiv.pool.jsonl as data

    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    expected = load_pool(str(path)).frame

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap says on a file system that cannot map

    monkeypatch.setattr(mmap, "mmap", refuse)
    monkeypatch.setattr(data, "JSONL_PIECE", 40)
    pd.testing.assert_frame_equal(load_pool(str(path)).frame, expected)
