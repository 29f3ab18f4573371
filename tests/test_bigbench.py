"""Integration: real BIG-bench tasks from the bigbench==1.0.0 sdist (fetched once)."""
import pytest

from taskdiv import bigbench
from taskdiv.data import load_pool
from taskdiv.errors import TaskdivError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("bigbench_tasks")]


def test_preset_tasks_exist_and_are_short():
    tasks = bigbench.resolve_tasks(["demo"])
    assert len(tasks) == 30
    pool = load_pool("bigbench:demo?max_pool=40")
    assert pool.frame["task"].nunique() == 30
    lengths = pool.frame.groupby("task")["prompt"].apply(lambda s: s.str.len().median())
    assert lengths.max() < 2000, lengths.idxmax()  # ~4 characters a token: well under 512 tokens


def test_multiple_choice_formatting_and_targets():
    pool = load_pool("bigbench:navigate,arithmetic/2_digit_addition?split=all")
    nav = pool.frame[pool.frame["task"] == "navigate"].iloc[0]
    assert nav["prompt"].startswith("If you follow these instructions, do you return to the starting point?")
    assert nav["prompt"].endswith("A:")
    assert sorted(nav["choices"]) == ["False", "True"] and nav["response"] in nav["choices"]
    assert list(nav["targets"]) == [nav["response"]]
    add = pool.frame[pool.frame["task"] == "arithmetic/2_digit_addition"].iloc[0]
    assert add["prompt"].startswith("Q: What is") and add["choices"] is None
    a, b = map(int, add["prompt"].split("What is ")[1].split("?")[0].split(" plus "))
    assert add["response"] == str(a + b)


def test_split_is_deterministic_disjoint_and_complete():
    spec = "bigbench:hyperbaton,snarks?test=50"
    pool, test = load_pool(spec), load_pool(spec + "&split=test")
    again = load_pool(spec + "&split=test")
    assert list(test.ids) == list(again.ids)
    assert not set(pool.ids) & set(test.ids)
    assert test.task_sizes().to_dict() == {"hyperbaton": 50, "snarks": 50}
    # No input text on both sides.
    assert not set(pool.frame["prompt"]) & set(test.frame["prompt"])
    other_seed = load_pool(spec + "&split=test&seed=1")
    assert set(other_seed.ids) != set(test.ids)


def test_subtasks_and_caps():
    pool = load_pool("bigbench:arithmetic?max_pool=10&test=5")
    assert pool.frame["task"].nunique() == 20
    assert pool.frame["task"].str.startswith("arithmetic/").all()
    assert pool.task_sizes().max() == 10
    skewed = load_pool("bigbench:hyperbaton,snarks?test=20&pool_frac=0.1&max_pool=300")
    # snarks: 181 - 20 = 161 -> 16; hyperbaton: 49,980 -> 4,998 -> capped at 300
    assert skewed.task_sizes().to_dict() == {"hyperbaton": 300, "snarks": 16}


def test_unknown_task_suggests():
    with pytest.raises(TaskdivError, match="Did you mean 'navigate'"):
        load_pool("bigbench:navigat")
    with pytest.raises(TaskdivError, match="unknown option"):
        load_pool("bigbench:navigate?splits=test")


@pytest.mark.parametrize("option", ["test=-0.1", "test=-3", "test=2.5", "test=inf", "test=nan",
                                    "max_pool=-2", "max_pool=0", "pool_frac=0", "pool_frac=1.5", "pool_frac=nan"])
def test_split_sizes_out_of_range_are_refused(option):
    name = option.split("=")[0]
    with pytest.raises(TaskdivError, match=rf"bigbench: {name}=\S+ must be"):
        load_pool(f"bigbench:navigate?{option}")


@pytest.mark.parametrize("task", ["cause_and_effect/one_sentence", "cause_and_effect/two_sentences",
                                  "logical_sequence"])
def test_split_keys_on_what_the_model_sees(task):
    # Every example of these tasks has the same `input` (the content is in the choices):
    # keyed on the input alone, the whole task landed in the test part.
    full = load_pool(f"bigbench:{task}?split=all").frame
    pool, test = load_pool(f"bigbench:{task}"), load_pool(f"bigbench:{task}?split=test")
    assert len(pool) + len(test) == len(full)
    assert 0 < len(test) <= len(full) // 2, (len(test), len(full))
    assert abs(len(test) - round(0.2 * len(full))) <= 1
    assert not set(pool.ids) & set(test.ids)


def test_split_never_puts_one_item_on_both_sides():
    import pandas as pd

    from taskdiv.bigbench import split_task

    # Five copies of one item and five distinct ones: a cut inside the run of copies moves
    # to a boundary of the run, and the test part never exceeds half the task.
    keys = ["same"] * 5 + [f"k{i}" for i in range(5)]
    frame = pd.DataFrame({"task": "t", "_key": keys, "id": range(10)})
    for test in (1, 2, 3, 4, 5):
        pool_part, test_part = split_task(frame, test=test)
        assert len(test_part) <= 5 and len(pool_part) + len(test_part) == 10
        copies_in_test = int((test_part["_key"] == "same").sum())
        assert copies_in_test in (0, 5), (test, copies_in_test)


def test_skewed_study_pool_is_the_papers_regime():
    from pathlib import Path

    from taskdiv import analysis
    from taskdiv.experiments import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "cpu-skewed.yaml")
    pool, test = load_pool(cfg.pool), load_pool(cfg.test)
    sizes = pool.task_sizes()
    assert len(sizes) >= 100 and sizes.max() / sizes.min() >= 50
    assert len(test) >= 1000 and set(test.frame["task"]) == set(sizes.index)  # held-out items from every task
    kinds = analysis.task_kinds(test.frame)["kind"].value_counts()
    assert set(kinds.index) == {"yes/no", "multiple choice", "generative"} and kinds.min() >= 20
    # Budgets of 1x to 3x the number of tasks, where random leaves many tasks with nothing.
    budgets = {int(b) for block in cfg.grid for b in block["budgets"]} - {428, 856}
    assert all(len(sizes) <= b <= 3 * len(sizes) for b in budgets), budgets


@pytest.mark.parametrize("task", ["cause_and_effect/one_sentence_no_prompt", "misconceptions_russian"])
def test_tasks_whose_prompts_show_nothing_are_not_pools(task):
    # Empty input and choices not shown: the formatted prompt is empty, no pool or test item.
    with pytest.raises(TaskdivError, match=r"bigbench: no examples in"):
        load_pool(f"bigbench:{task}?split=all")


def test_no_item_on_both_sides_within_or_across_tasks():
    """Identical examples are formatted alike and split alike, items that differ only in
    their wrong choices count as one, and a task's copy (plural_regular_json is in
    plural_json) never puts a held-out item into the pool."""
    spec = "bigbench:bbq_lite_json/disability_status_ambig,unit_conversion,linguistic_mappings"
    pool = load_pool(spec).frame
    test = load_pool(spec + "?split=test").frame
    seen = set(zip(pool["prompt"], pool["response"]))
    leaked = [(p, r) for p, r in zip(test["prompt"], test["response"]) if (p, r) in seen]
    assert not leaked, leaked[:3]
    assert len(test) > 100 and len(pool) > 1000


def test_empty_targets_are_skipped_and_scored_choices_make_multiple_choice():
    frame = load_pool("bigbench:physics_questions?split=all").frame
    assert frame["response"].str.strip().astype(bool).all()
    social = load_pool("bigbench:social_support?split=all").frame  # macro_f1, target_scores only
    assert len(social) > 800 and social["choices"].notna().all()
