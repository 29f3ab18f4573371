"""Properties of the budget allocation (allocation.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskdiv.common.errors import TaskdivError
from taskdiv.selection.allocation import allocate, parse_budget, round_robin, water_level


@st.composite
def sizes_and_budget(draw, max_tasks=40):
    sizes = draw(st.lists(st.integers(1, 60), min_size=1, max_size=max_tasks))
    budget = draw(st.integers(1, sum(sizes)))
    return np.array(sizes), budget


@given(sizes_and_budget(), st.integers(0, 5))
@settings(max_examples=300, deadline=None)
def test_uniform_total_caps_and_evenness(sb, seed):
    sizes, budget = sb
    b = allocate(sizes, budget, seed=seed)
    assert b.sum() == budget
    assert np.all(b <= sizes) and np.all(b >= 0)
    # No task gets more than one prompt above another task that is not full.
    not_full = b < sizes
    if not_full.any():
        assert b.max() <= b[not_full].min() + 1


@given(sizes_and_budget(), st.integers(0, 5))
@settings(max_examples=300, deadline=None)
def test_uniform_equals_round_robin(sb, seed):
    sizes, budget = sb
    b = allocate(sizes, budget, seed=seed)
    ref = round_robin(sizes, budget, seed=seed)
    # The same water level: every task capped below it gets its whole size in both, the
    # others get L or L + 1 in both, and the same number of them get L + 1; only which
    # of the tied tasks get the extra slots differs (both break ties at random).
    assert sorted(b) == sorted(ref)
    diff = b != ref
    assert np.all(np.abs(b - ref) <= 1)
    if diff.any():
        low = np.minimum(b, ref)[diff]
        assert np.all(low == low[0]) and np.all(sizes[diff] > low[0])


@given(sizes_and_budget(), st.lists(st.floats(0.05, 1.0), min_size=40, max_size=40), st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_inverse_confidence_monotone_for_equal_sizes(sb, conf, seed):
    sizes, budget = sb
    conf = np.array(conf[: len(sizes)])
    b = allocate(sizes, budget, weights=1 / conf, seed=seed)
    assert b.sum() == budget and np.all(b <= sizes)
    for i in range(len(sizes)):
        for j in range(len(sizes)):
            if sizes[i] == sizes[j] and conf[i] < conf[j]:
                # A less confident task never gets fewer prompts (up to the rounding of ties).
                assert b[i] >= b[j] or np.isclose(conf[i], conf[j])


def test_inverse_weights_exact_values():
    # C = 0.25, 0.5 -> weights 4, 2 -> shares 2/3, 1/3 of 30 = 20, 10.
    b = allocate([100, 100], 30, weights=[4.0, 2.0])
    assert b.tolist() == [20, 10]


def test_capped_excess_is_redistributed():
    # Task 0 would get 2/3 * 30 = 20 but has 5 prompts: the 15 left go to the others.
    b = allocate([5, 100, 100], 30, weights=[4.0, 1.0, 1.0])
    assert b.tolist() == [5, 13, 12] or b.tolist() == [5, 12, 13]


def test_proportional_is_stratified():
    b = allocate([10, 30, 60], 50, weights=[10, 30, 60])
    assert b.tolist() == [5, 15, 30]


def test_floor_and_ceiling():
    b = allocate([50, 50, 50], 20, weights=[100.0, 1.0, 1.0], floor=2)
    assert b.min() >= 2 and b.sum() == 20
    b = allocate([50, 50, 50], 20, ceilings=8, weights=[5.0, 1.0, 1.0])
    assert b.tolist() == [8, 6, 6]


def test_taken_counts_towards_allocation():
    # 10 of task 0 already annotated; 10 more to spend: the water level is 10, task 1 gets all.
    b = allocate([20, 20], 10, taken=[10, 0])
    assert b.tolist() == [10, 10]


def test_ties_are_seeded():
    outs = {tuple(allocate([5] * 10, 7, seed=s)) for s in range(20)}
    assert len(outs) > 1
    assert allocate([5] * 10, 7, seed=3).tolist() == allocate([5] * 10, 7, seed=3).tolist()


def test_water_level_exact():
    lam = water_level(30, [4.0, 1.0, 1.0], [0, 0, 0], [5, 100, 100])
    assert lam == pytest.approx(12.5)


@pytest.mark.parametrize("text,n,expected", [("500", 1000, 500), ("20%", 1000, 200), ("0.5%", 1000, 5),
                                             (" 7 ", 10, 7)])
def test_parse_budget(text, n, expected):
    assert parse_budget(text, n) == expected


@pytest.mark.parametrize("text", ["abc", "1.5", "0%", "-5%", "%"])
def test_parse_budget_rejects(text):
    with pytest.raises(TaskdivError):
        parse_budget(text, 100)


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e400", "inf%", "nan%", "1e400%"])
def test_parse_budget_rejects_non_finite(text):
    with pytest.raises(TaskdivError, match="not a finite number"):
        parse_budget(text, 100)


def test_water_level_at_the_floor_despite_rounding():
    """(lo / w) * w rounds above lo here: the level is still lo / w, and the allocation the floor."""
    w = 0.021
    assert (24 / w) * w > 24
    assert water_level(24, [w], [24], [29]) == 24 / w
    assert allocate([29], 24, weights=[w], floor=24).tolist() == [24]


def test_allocate_rejects_bad_budgets():
    with pytest.raises(TaskdivError, match="exceeds"):
        allocate([3, 4], 8)
    with pytest.raises(TaskdivError, match="positive"):
        allocate([3, 4], 0)
    with pytest.raises(TaskdivError, match="floor"):
        allocate([3, 4, 5], 2, floor=1)
