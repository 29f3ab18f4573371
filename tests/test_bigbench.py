"""The `bigbench:` source on small task.json files written here, laid out as the sdist's
benchmark_tasks (TASKDIV_BIGBENCH points at them): nothing is fetched."""
import json

import pandas as pd
import pytest

from taskdiv.common.errors import TaskdivError
from taskdiv.pool import bigbench
from taskdiv.pool.load import load_pool


def _write(root, name, spec):
    path = root / name / "task.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec), encoding="utf-8")


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    root = tmp_path / "benchmark_tasks"
    # yes/no by scored choices, with BIG-bench's default prefixes
    _write(root, "navigate", {"preferred_score": "multiple_choice_grade", "examples": [
        {"input": f"Take {i} steps forward. Take {i} steps back.", "target_scores": {"True": int(i % 3 == 0),
                                                                                     "False": int(i % 3 != 0)}}
        for i in range(60)]})
    # generative subtasks (the parent holds only its README and subtasks)
    _write(root, "arithmetic", {"examples": []})
    _write(root, "arithmetic/two_digit", {"task_prefix": "", "examples": [
        {"input": f"What is {10 + i} plus {20 + i}?", "target": str(30 + 2 * i)} for i in range(40)]})
    _write(root, "arithmetic/three_digit", {"examples": [
        {"input": f"What is {100 + i} plus {200 + i}?", "target": [str(300 + 2 * i)]} for i in range(30)]})
    # the content is in the choices: every input is the same
    _write(root, "same_input", {"examples": [
        {"input": "Which is more likely?", "target_scores": {f"cause {i}": 1, f"effect {i}": 0}} for i in range(20)]})
    # nothing shown: empty input and choices not appended
    _write(root, "no_prompt", {"append_choices_to_input": False, "examples": [
        {"input": "", "target_scores": {"a": 1, "b": 0}} for _ in range(5)]})
    # a copy of another task's items (plural_regular_json is in plural_json in the real sdist)
    _write(root, "copy_of_two_digit", {"task_prefix": "", "examples": [
        {"input": f"What is {10 + i} plus {20 + i}?", "target": str(30 + 2 * i)} for i in range(40)]})
    # empty targets are skipped; scored choices without a target are multiple choice whatever the metric
    _write(root, "mixed", {"metrics": ["exact_str_match"], "examples": [
        {"input": "q1", "target": ""}, {"input": "q2", "target": "a2"},
        {"input": "q3", "target_scores": {"x": 1, "y": 0, "z": 0}}]})
    monkeypatch.setenv("TASKDIV_BIGBENCH", str(root))
    return root


def test_formatting_targets_and_choices(tasks):
    frame = load_pool("bigbench:navigate,arithmetic/two_digit?split=all").frame
    nav = frame[frame["task"] == "navigate"].iloc[0]
    assert nav["prompt"].startswith("Q: Take") and nav["prompt"].endswith("A:")
    assert "\n  choice: True" in nav["prompt"] and "\n  choice: False" in nav["prompt"]
    assert sorted(nav["choices"]) == ["False", "True"] and list(nav["targets"]) == [nav["response"]]
    add = frame[frame["task"] == "arithmetic/two_digit"].iloc[0]
    assert add["prompt"].startswith("Q: What is") and add["choices"] is None
    a, b = map(int, add["prompt"].split("What is ")[1].split("?")[0].split(" plus "))
    assert add["response"] == str(a + b)
    mixed = load_pool("bigbench:mixed?split=all").frame.set_index("response")
    assert set(mixed.index) == {"a2", "x"}  # the empty target is skipped
    assert mixed.at["x", "choices"] == ["x", "y", "z"] or sorted(mixed.at["x", "choices"]) == ["x", "y", "z"]


def test_split_is_deterministic_disjoint_and_complete(tasks):
    spec = "bigbench:navigate,arithmetic?test=10"
    pool, test, full = load_pool(spec), load_pool(spec + "&split=test"), load_pool(spec + "&split=all")
    assert list(test.ids) == list(load_pool(spec + "&split=test").ids)
    assert not set(pool.ids) & set(test.ids) and len(pool) + len(test) == len(full)
    assert test.task_sizes().to_dict() == {"arithmetic/three_digit": 10, "arithmetic/two_digit": 10, "navigate": 10}
    assert set(load_pool(spec + "&split=test&seed=1").ids) != set(test.ids)


def test_subtasks_and_caps(tasks):
    pool = load_pool("bigbench:arithmetic?max_pool=10&test=5")
    assert sorted(pool.task_sizes().to_dict().items()) == [("arithmetic/three_digit", 10), ("arithmetic/two_digit", 10)]
    skewed = load_pool("bigbench:navigate,arithmetic/three_digit?test=10&pool_frac=0.5&max_pool=20")
    # navigate: 60 - 10 = 50 -> 25 -> capped at 20; three_digit: 30 - 10 = 20 -> 10
    assert skewed.task_sizes().to_dict() == {"arithmetic/three_digit": 10, "navigate": 20}


def test_unknown_task_suggests_and_unknown_options_are_refused(tasks):
    with pytest.raises(TaskdivError, match="Did you mean 'navigate'"):
        load_pool("bigbench:navigat")
    with pytest.raises(TaskdivError, match="unknown option"):
        load_pool("bigbench:navigate?splits=test")


@pytest.mark.parametrize("option", ["test=-0.1", "test=-3", "test=2.5", "test=inf", "test=nan",
                                    "max_pool=-2", "max_pool=0", "pool_frac=0", "pool_frac=1.5", "pool_frac=nan"])
def test_split_sizes_out_of_range_are_refused(tasks, option):
    name = option.split("=")[0]
    with pytest.raises(TaskdivError, match=rf"bigbench:navigate: {name}=\S+ must be"):
        load_pool(f"bigbench:navigate?{option}")


def test_split_keys_on_what_the_model_sees(tasks):
    # Every example has the same `input` (the content is in the choices): keyed on the input
    # alone, the whole task landed on one side.
    full = load_pool("bigbench:same_input?split=all").frame
    pool, test = load_pool("bigbench:same_input"), load_pool("bigbench:same_input?split=test")
    assert len(pool) + len(test) == len(full) == 20 and len(test) == 4
    assert not set(pool.ids) & set(test.ids)


def test_tasks_whose_prompts_show_nothing_are_not_pools(tasks):
    with pytest.raises(TaskdivError, match=r"bigbench: no examples in"):
        load_pool("bigbench:no_prompt?split=all")


def test_a_copy_of_a_task_never_puts_a_held_out_item_into_the_pool(tasks):
    spec = "bigbench:arithmetic/two_digit,copy_of_two_digit"
    pool, test = load_pool(spec).frame, load_pool(spec + "?split=test").frame
    seen = set(zip(pool["prompt"], pool["response"]))
    assert len(test) == 16 and not [(p, r) for p, r in zip(test["prompt"], test["response"]) if (p, r) in seen]
    # The key is the item, not the task: both copies hold out the same eight items.
    by_task = test.groupby("task")["prompt"].apply(set)
    assert by_task["arithmetic/two_digit"] == by_task["copy_of_two_digit"] and len(pool) == 64


def test_the_sdist_is_not_needed_when_taskdiv_bigbench_is_set(tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("TASKDIV_CACHE", str(tmp_path / "empty-cache"))
    assert bigbench.tasks_dir() == tasks
    assert not (tmp_path / "empty-cache" / "bigbench-1.0.0").exists()
    assert isinstance(load_pool("bigbench:navigate").frame, pd.DataFrame)
