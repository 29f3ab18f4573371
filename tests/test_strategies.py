"""One contract, run against every registered strategy (and every within-task picker)."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskdiv.common.errors import TaskdivError
from taskdiv.pool.container import Pool
from taskdiv.selection.kcenter import k_center, k_center_naive
from taskdiv.selection.strategies import STRATEGIES, Inputs, TaskAllocation, get_strategy

VARIANTS = [(name, {}) for name in STRATEGIES] + [
    (name, {"within": within})
    for name in ("task-diversity", "weighted-task-diversity", "proportional")
    for within in ("k-center", "lowest-confidence")
] + [("weighted-task-diversity", {"min_per_task": 1}), ("task-diversity", {"max_per_task": 50})]


def make_pool(sizes, seed=0):
    rows = [{"id": f"t{t}-{i}", "prompt": f"p {t} {i}", "task": f"t{t}"} for t, n in enumerate(sizes) for i in range(n)]
    frame = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    inputs = Inputs(confidence=rng.uniform(0.05, 1.0, len(frame)),
                    embeddings=rng.normal(size=(len(frame), 8)).astype(np.float32))
    return Pool(frame, "test"), inputs


@st.composite
def pools(draw):
    shape = draw(st.sampled_from(["tiny-tasks", "one-huge", "mixed", "single"]))
    if shape == "tiny-tasks":
        sizes = draw(st.lists(st.integers(1, 3), min_size=5, max_size=60))
    elif shape == "one-huge":
        sizes = [draw(st.integers(100, 400))] + draw(st.lists(st.integers(1, 5), min_size=1, max_size=8))
    elif shape == "single":
        sizes = [draw(st.integers(1, 50))]
    else:
        sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=15))
    n = sum(sizes)
    excluded_frac = draw(st.sampled_from([0.0, 0.0, 0.2]))
    budget_kind = draw(st.sampled_from(["one", "some", "all"]))
    return sizes, excluded_frac, budget_kind, draw(st.integers(0, 2**16)), n


@pytest.mark.parametrize("name,params", VARIANTS, ids=[f"{n}{'-' + '-'.join(map(str, p.values())) if p else ''}"
                                                       for n, p in VARIANTS])
@given(drawn=pools())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_strategy_contract(name, params, drawn):
    sizes, excluded_frac, budget_kind, seed, n = drawn
    pool, inputs = make_pool(sizes, seed)
    rng = np.random.default_rng(seed)
    inputs.excluded = rng.random(n) < excluded_frac
    available = int((~inputs.excluded).sum())
    if available == 0:
        return
    budget = {"one": 1, "some": max(1, available // 3), "all": available}[budget_kind]
    if name == "full":
        budget = available
    if params.get("min_per_task"):
        budget = max(budget, min(available, len(sizes)))
    strategy = get_strategy(name, seed=seed, **params)
    try:
        result = strategy.select(pool, budget, inputs)
    except TaskdivError as e:
        # The only legitimate refusal: a floor or ceiling that the budget cannot satisfy. The
        # arithmetic says whether that is so, so a strategy that refused everything would fail.
        assert isinstance(strategy, TaskAllocation) and ("floor" in str(e) or "exceeds" in str(e)), e
        _, codes = pool.task_codes()
        sizes_t = np.bincount(codes)
        taken = np.bincount(codes[inputs.excluded], minlength=len(sizes_t))
        hi = sizes_t if strategy.max_per_task is None else np.minimum(sizes_t, strategy.max_per_task)
        hi = np.maximum(hi, taken)
        lo = np.minimum(np.maximum(strategy._floor(budget, sizes_t, taken), taken), hi)
        total = budget + taken.sum()
        assert lo.sum() > total or total > hi.sum(), (e, lo.sum(), total, hi.sum())
        return
    ids = list(result.ids)
    assert len(ids) == budget
    assert len(set(ids)) == budget
    pool_ids = set(pool.ids)
    assert set(ids) <= pool_ids
    assert not set(ids) & set(pool.ids[inputs.excluded])
    again = get_strategy(name, seed=seed, **params).select(pool, budget, inputs)
    assert list(again.ids) == ids, "same seed, same selection (and order)"
    if isinstance(strategy, TaskAllocation):
        counts = pool.frame.set_index("id").loc[ids, "task"].value_counts()
        table = result.allocation.set_index("task")
        assert (counts <= table.loc[counts.index, "available"]).all()
        assert table["allocated"].sum() == budget
        assert (table["allocated"] <= table["available"]).all()


@pytest.mark.parametrize("name,params", VARIANTS, ids=[f"{n}{'-' + '-'.join(map(str, p.values())) if p else ''}"
                                                       for n, p in VARIANTS])
def test_other_seed_other_selection(name, params):
    pool, inputs = make_pool([30, 20, 40, 10])
    strategy = get_strategy(name, seed=1, **params)
    budget = len(pool) if name == "full" else 25
    a = list(strategy.select(pool, budget, inputs).ids)
    b = list(get_strategy(name, seed=2, **params).select(pool, budget, inputs).ids)
    random_inside = (name in ("random", "task-diversity", "weighted-task-diversity", "proportional",
                              "sharp-weighted-task-diversity", "kind-diversity", "k-center")
                     and params.get("within") != "lowest-confidence")
    if random_inside:
        assert a != b
    elif name in ("full", "uncertainty"):
        assert a == b  # no randomness involved (continuous confidences have no ties)
    else:
        # within=lowest-confidence: the seed only breaks the allocation's ties and orders the
        # ranking; inside each task, each seed takes that task's least confident prompts.
        assert params.get("within") == "lowest-confidence"
        frame = pool.frame.assign(confidence=inputs.confidence).set_index("id")
        for chosen in (a, b):
            picked = frame.loc[chosen]
            for task, group in picked.groupby("task"):
                lowest = frame[frame["task"] == task].nsmallest(len(group), "confidence").index
                assert set(group.index) == set(lowest), (name, task)


def test_weighted_gives_more_to_unsure_tasks():
    pool, inputs = make_pool([100, 100])
    inputs.confidence = np.where(pool.frame["task"] == "t0", 0.2, 0.8)
    result = get_strategy("weighted-task-diversity", seed=0).select(pool, 50, inputs)
    table = result.allocation.set_index("task")
    assert table.loc["t0", "allocated"] == 40 and table.loc["t1", "allocated"] == 10


def test_sharp_weighting_covers_every_task_then_favours_unsure_ones():
    # Confidences 0.5 / 0.8 (a small model's range). The two tiny tasks are capped at 3; WTD
    # splits the other 56 about 34/22 (1.6x), the sharp variant about 45/11 (0.8^3 / 0.5^3 = 4.1x).
    pool, inputs = make_pool([100, 100, 3, 3])
    inputs.confidence = np.where(pool.frame["task"] == "t0", 0.5, 0.8)
    wtd = get_strategy("weighted-task-diversity", seed=0).select(pool, 62, inputs).allocation.set_index("task")
    sharp = get_strategy("sharp-weighted-task-diversity", seed=0).select(pool, 62, inputs)
    table = sharp.allocation.set_index("task")
    assert (table["allocated"] >= 1).all()
    assert table.loc["t0", "allocated"] / table.loc["t1", "allocated"] > 3.5
    assert wtd.loc["t0", "allocated"] / wtd.loc["t1", "allocated"] < 1.8
    np.testing.assert_allclose(table["weight"], wtd["weight"] ** 3)
    # Budget 5 on 4 tasks: by weight alone one confident task would get nothing (2.9/0.7/0.7/0.7).
    tight = get_strategy("sharp-weighted-task-diversity", seed=0).select(pool, 5, inputs).allocation
    assert (tight["allocated"] >= 1).all()
    # A budget below the number of tasks cannot cover them all: no floor, no error.
    small = get_strategy("sharp-weighted-task-diversity", seed=0).select(pool, 3, inputs)
    assert len(small.ids) == 3


def test_rank_order_interleaves_tasks():
    pool, inputs = make_pool([50, 50, 50])
    result = get_strategy("task-diversity", seed=0).select(pool, 30, inputs)
    first = pool.frame.set_index("id").loc[list(result.ids[:3]), "task"]
    assert sorted(first) == ["t0", "t1", "t2"]


def test_uncertainty_picks_lowest():
    pool, inputs = make_pool([20, 20])
    ids = get_strategy("uncertainty", seed=0).select(pool, 5, inputs).ids
    lowest = pool.ids[np.argsort(inputs.confidence)[:5]]
    assert list(ids) == list(lowest)


def test_weighted_names_tasks_without_scores():
    pool, inputs = make_pool([5, 5, 5])
    inputs.confidence[pool.frame["task"] == "t1"] = np.nan
    with pytest.raises(TaskdivError, match="t1"):
        get_strategy("weighted-task-diversity").select(pool, 5, inputs)


def test_needs_are_enforced():
    pool, _ = make_pool([5, 5])
    with pytest.raises(TaskdivError, match="confidence"):
        get_strategy("uncertainty").select(pool, 3, Inputs())
    with pytest.raises(TaskdivError, match="embeddings"):
        get_strategy("k-center").select(pool, 3, Inputs())


def test_unknown_strategy_suggests():
    with pytest.raises(TaskdivError, match="Did you mean 'task-diversity'"):
        get_strategy("task-diversty")


def test_budget_larger_than_pool_says_pool_size():
    pool, inputs = make_pool([5, 5])
    with pytest.raises(TaskdivError, match="10 prompt"):
        get_strategy("random").select(pool, 11, inputs)


@pytest.mark.parametrize("seed", range(5))
def test_k_center_matches_naive_reference(seed):
    X = np.random.default_rng(seed).normal(size=(200, 16)).astype(np.float32)
    np.testing.assert_array_equal(k_center(X, 25, seed=seed), k_center_naive(X, 25, seed=seed))
    init = X[:5]
    np.testing.assert_array_equal(k_center(X[5:], 10, initial=init), k_center_naive(X[5:], 10, initial=init))


def test_a_misspelt_parameter_is_refused_with_did_you_mean():
    with pytest.raises(TaskdivError, match="parameter of strategy 'task-diversity' 'withn'. Did you mean 'within'"):
        get_strategy("task-diversity", withn="random")
    with pytest.raises(TaskdivError, match="Did you mean 'gamma'"):
        STRATEGIES["sharp-weighted-task-diversity"](gama=2.0)
    with pytest.raises(TaskdivError, match="Did you mean 'seed'"):
        STRATEGIES["random"](sed=1)


def test_task_parameters_are_refused_by_other_strategies():
    """One rule for get_strategy and `taskdiv select`: within/min/max per task belong to task strategies."""
    for name in STRATEGIES:
        if issubclass(STRATEGIES[name], TaskAllocation):
            assert get_strategy(name, within="k-center", min_per_task=1).within == "k-center"
        else:
            with pytest.raises(TaskdivError, match="apply to task strategies"):
                get_strategy(name, within="random")
    with pytest.raises(TaskdivError, match="within-task picker 'kcenter'. Did you mean 'k-center'"):
        get_strategy("task-diversity", within="kcenter")


def test_what_each_strategy_needs():
    needs = {name: get_strategy(name).needs for name in STRATEGIES}
    assert needs == {"random": set(), "full": set(), "proportional": set(), "task-diversity": set(),
                     "weighted-task-diversity": {"confidence"}, "sharp-weighted-task-diversity": {"confidence"},
                     "kind-diversity": set(), "uncertainty": {"confidence"}, "k-center": {"embeddings"}}
    assert get_strategy("proportional", within="k-center").needs == {"embeddings"}
    assert get_strategy("weighted-task-diversity", within="k-center").needs == {"confidence", "embeddings"}
    with pytest.raises(TaskdivError, match="needs prompt confidences: pass --scores"):
        get_strategy("task-diversity", within="lowest-confidence").check_needs(set())


@pytest.mark.parametrize("name,params", VARIANTS, ids=[f"{n}{'-' + '-'.join(map(str, p.values())) if p else ''}"
                                                       for n, p in VARIANTS])
def test_reordering_the_pool_rows_gives_the_same_selection(name, params):
    """Issue 12: a pool re-exported in another row order selects the same ids, in the same rank order."""
    pool, inputs = make_pool([3, 11, 6, 25, 2], seed=4)
    inputs.excluded = np.random.default_rng(1).random(len(pool)) < 0.15
    budget = int((~inputs.excluded).sum()) if name == "full" else 13
    perm = np.random.default_rng(9).permutation(len(pool))
    shuffled = Pool(pool.frame.iloc[perm].reset_index(drop=True), "shuffled")
    shuffled_inputs = Inputs(confidence=inputs.confidence[perm], embeddings=inputs.embeddings[perm],
                             excluded=inputs.excluded[perm])
    for seed in (0, 7):
        a = get_strategy(name, seed=seed, **params).select(pool, budget, inputs)
        b = get_strategy(name, seed=seed, **params).select(shuffled, budget, shuffled_inputs)
        if name == "full":  # the whole pool, ranked in the pool's own order
            assert sorted(a.ids) == sorted(b.ids)
        else:
            assert list(a.ids) == list(b.ids)


def _pick_reference(codes, new, key, excluded):
    """The definition of the within-task random pick: every row sorted by (task, key)."""
    key = np.where(excluded, np.inf, key)
    order = np.lexsort((key, codes))
    sorted_codes = codes[order]
    rank = np.arange(len(codes)) - np.searchsorted(sorted_codes, np.arange(len(new)))[sorted_codes]
    chosen = rank < new[sorted_codes]
    return order[chosen], rank[chosen]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.booleans())
def test_pick_on_likely_rows_equals_sorting_every_row(seed, n_tasks, skew_keys):
    # _pick sorts only the rows under a per-task threshold; the picks and their ranks must be
    # those of the full sort, also when the keys are far from uniform (the fallback path).
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, n_tasks, size=int(rng.integers(1, 3000)))
    excluded = rng.random(len(codes)) < 0.2
    free = np.bincount(codes[~excluded], minlength=n_tasks)
    new = rng.integers(0, free + 1)
    key = rng.random(len(codes)) ** (0.05 if skew_keys else 1)  # skewed: most keys near 1
    strategy = TaskAllocation(seed=0)
    got = strategy._pick(codes, new, Inputs(), excluded, key)
    want = _pick_reference(codes, new, key, excluded)
    order_got, order_want = np.lexsort((got[1], codes[got[0]])), np.lexsort((want[1], codes[want[0]]))
    assert np.array_equal(got[0][order_got], want[0][order_want])
    assert np.array_equal(got[1][order_got], want[1][order_want])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300))
def test_smallest_equals_stable_argsort(seed, n):
    from taskdiv.selection.strategies import _smallest

    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 20, size=n).astype(float)  # many ties: the stable order must hold
    k = int(rng.integers(1, n + 1))
    assert np.array_equal(_smallest(keys, k), np.argsort(keys, kind="stable")[:k])


def test_kind_diversity_spreads_across_kinds_first_then_tasks():
    """Ten generative tasks, one yes/no task and one multiple-choice task: task-diversity
    gives each of the twelve tasks 3 of 36; kind-diversity gives each kind 12 first (the
    yes/no and multiple-choice tasks 12 each, the generative ones 1 or 2)."""
    rows = []
    for t in range(12):
        choices = None if t < 10 else (["yes", "no"] if t == 10 else ["a", "b", "c", "d"])
        rows += [{"id": f"t{t:02d}-{i}", "prompt": f"p {t} {i}", "task": f"t{t:02d}", "choices": choices}
                 for i in range(40)]
    pool = Pool(pd.DataFrame(rows), "test")
    even = get_strategy("task-diversity", seed=0).select(pool, 36).allocation.set_index("task")["allocated"]
    assert even.eq(3).all()
    kinds = get_strategy("kind-diversity", seed=0).select(pool, 36).allocation.set_index("task")["allocated"]
    assert kinds["t10"] == 12 and kinds["t11"] == 12
    assert kinds[[f"t{t:02d}" for t in range(10)]].sum() == 12 and kinds[[f"t{t:02d}" for t in range(10)]].between(1, 2).all()
    # A kind with too few prompts passes its share on; round 2 counts what round 1 took.
    small = Pool(pd.DataFrame(rows[:400] + rows[400:403] + rows[440:480]), "test")
    alloc = get_strategy("kind-diversity", seed=0).select(small, 36).allocation.set_index("task")["allocated"]
    assert alloc["t10"] == 3 and alloc.sum() == 36
    excluded = np.zeros(len(pool), bool)
    excluded[400:410] = True  # ten yes/no prompts already annotated
    alloc = get_strategy("kind-diversity", seed=0).select(pool, 26, Inputs(excluded=excluded)).allocation
    assert alloc.set_index("task").loc["t10", "allocated"] == 2  # 12 in all for the kind


def test_weighted_task_diversity_needs_no_confidence_for_an_exhausted_task():
    pool, inputs = make_pool([3, 20, 40])
    excluded = np.zeros(len(pool), bool)
    excluded[:3] = True  # task t0 annotated in full in an earlier round, and never scored again
    conf = inputs.confidence.copy()
    conf[:3] = np.nan
    alloc = get_strategy("weighted-task-diversity", seed=0).select(
        pool, 10, Inputs(confidence=conf, excluded=excluded)).allocation.set_index("task")
    assert alloc.loc["t0", "allocated"] == 0 and alloc["allocated"].sum() == 10
    conf[3:23] = np.nan  # a task with prompts left and no confidence is still an error
    with pytest.raises(TaskdivError, match="1 task\\(s\\) have no scored prompt: t1"):
        get_strategy("weighted-task-diversity", seed=0).select(pool, 10, Inputs(confidence=conf, excluded=excluded))
