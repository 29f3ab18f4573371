"""analysis.py: the report's statistics on small tables with known answers."""
import numpy as np
import pandas as pd
import pytest

from taskdiv.report import statistics as analysis


def test_sign_and_permutation_tests_exact_values():
    # 5 of 5 positive: both tests give 2 / 2^5 two-sided.
    assert analysis.sign_test([0.01, 0.02, 0.03, 0.01, 0.05]) == pytest.approx(0.0625)
    assert analysis.permutation_test([0.01, 0.01, 0.01, 0.01, 0.01]) == pytest.approx(0.0625)
    # Ties drop out of the sign test; an even split is p = 1.
    assert analysis.sign_test([0.0, 0.1, -0.1]) == pytest.approx(1.0)
    # Four large gains and one small loss: the sign test counts 4 of 5 (p = 12/32), the
    # permutation test weighs sizes: only 4 of the 32 sign flips reach |sum| >= 0.56.
    d = [0.2, 0.1, 0.15, 0.12, -0.01]
    assert analysis.sign_test(d) == pytest.approx(0.375)
    assert analysis.permutation_test(d) == pytest.approx(4 / 32)
    assert np.isnan(analysis.sign_test([])) and np.isnan(analysis.permutation_test([]))


def test_permutation_test_monte_carlo_above_exact_limit_is_seeded():
    d = np.random.default_rng(0).normal(0.01, 0.02, 30)
    a, b = analysis.permutation_test(d, seed=1), analysis.permutation_test(d, seed=1)
    assert a == b and 0 < a < 1


def test_random_budget_to_match_interpolates_in_log_budget():
    random = {100: np.array([0.40]), 200: np.array([0.44]), 400: np.array([0.48])}
    assert analysis.random_budget_to_match(0.46, random) == pytest.approx(200 * np.sqrt(2))
    assert analysis.random_budget_to_match(0.44, random) == pytest.approx(200)
    assert analysis.random_budget_to_match(0.39, random) == -np.inf   # at the smallest budget or below
    assert analysis.random_budget_to_match(0.50, random) == np.inf


def test_saving_vs_random_with_interval():
    rng = np.random.default_rng(0)
    random = {100: 0.40 + rng.normal(0, 0.005, 5), 200: 0.44 + rng.normal(0, 0.005, 5),
              400: 0.48 + rng.normal(0, 0.005, 5)}
    out = analysis.saving_vs_random(0.44 + rng.normal(0, 0.005, 5), 100, random, n_boot=500)
    assert 150 < out["match"] < 270 and out["low"] <= out["match"] <= out["high"]
    assert out["saving"] == pytest.approx(1 - 100 / out["match"])
    assert out["saving_low"] <= out["saving"] <= out["saving_high"]
    # Better than random at every budget: no match, and the upper end of the saving is 100%.
    never = analysis.saving_vs_random([0.60, 0.61, 0.62], 100, random, n_boot=200)
    assert never["match"] == np.inf and np.isnan(never["saving"]) and never["saving_high"] == 1.0
    # Worse than random at its smallest budget: matched there or below, so nothing is measured
    # (not a saving of 1 - 50/100 from a strategy run at half random's smallest budget).
    below = analysis.saving_vs_random([0.30, 0.31, 0.32], 50, random, n_boot=200)
    assert below["match"] == -np.inf and below["low"] == -np.inf and np.isnan(below["saving"])


def test_coverage_counts_tasks_without_examples():
    rows = []
    for seed, allocated in ((0, [0, 0, 3, 10]), (1, [0, 1, 4, 5])):
        rows += [{"run": f"r{seed}", "strategy": "random", "budget_n": 13, "seed": seed, "task": t,
                  "allocated": a} for t, a in zip("abcd", allocated)]
    cov = analysis.coverage(pd.DataFrame(rows)).iloc[0]
    assert cov["tasks"] == 4 and cov["zero"] == 1.5 and cov["under"] == 3.0 and cov["runs"] == 2


def test_task_kinds_and_accuracy_by_kind():
    test = pd.DataFrame({"task": ["yn", "yn", "mc", "gen"],
                         "choices": [["yes", "no"], ["no", "yes"], ["a", "b", "c"], None]})
    kinds = analysis.task_kinds(test).set_index("task")["kind"].to_dict()
    assert kinds == {"yn": "yes/no", "mc": "multiple choice", "gen": "generative"}
    per_task = pd.DataFrame({"run": ["r0"] * 3 + ["r1"] * 3, "task": ["yn", "mc", "gen"] * 2,
                             "accuracy": [0.5, 0.4, 0.1, 0.7, 0.6, 0.3]})
    results = pd.DataFrame({"run": ["r0", "r1"], "strategy": "random", "budget_n": 10, "seed": [0, 1]})
    table = analysis.accuracy_by_kind(per_task, results, analysis.task_kinds(test)).iloc[0]
    assert table["yes/no (1)"] == pytest.approx(0.6) and table["generative (1)"] == pytest.approx(0.2)


def test_rank_correlation_and_its_interval():
    from taskdiv.report.statistics import rank_correlation

    x = np.arange(30, dtype=float)
    up = rank_correlation(x, x ** 2)
    assert up["rho"] == pytest.approx(1.0) and up["ci_low"] == pytest.approx(1.0) and up["n"] == 30
    down = rank_correlation(x, -x + np.random.default_rng(0).normal(0, 3, 30))
    assert down["rho"] < -0.8 and down["ci_high"] < 0 and down["p"] < 0.001
    noise = rank_correlation(x, np.random.default_rng(1).normal(size=30))
    assert noise["ci_low"] < noise["rho"] < noise["ci_high"] and noise["ci_low"] < 0 < noise["ci_high"]
    assert np.isnan(rank_correlation([1, 2], [3, 4])["rho"])  # too few pairs


def test_task_gains_confidence_gain_and_examples_vs_none():
    from taskdiv.report.statistics import confidence_gain, examples_vs_none, task_gains

    results = pd.DataFrame({"run": ["base", "r0", "r1"], "strategy": ["base", "random", "random"],
                            "budget_n": [0, 2, 2], "seed": [0, 0, 1]})
    tasks = ["a", "b", "c", "d"]
    per_task = pd.DataFrame({"run": ["base"] * 4 + ["r0"] * 4 + ["r1"] * 4, "task": tasks * 3,
                             "accuracy": [0.1, 0.2, 0.3, 0.4, 0.5, 0.2, 0.6, 0.4, 0.1, 0.6, 0.3, 0.5]})
    allocations = pd.DataFrame({"run": ["r0"] * 4 + ["r1"] * 4, "strategy": "random", "budget_n": 2,
                                "seed": [0] * 4 + [1] * 4, "task": tasks * 2, "allocated": [1, 0, 1, 0, 0, 1, 0, 1]})
    gains = task_gains(per_task, results, allocations)
    assert gains.set_index(["run", "task"])["gain"].round(3).to_dict() == {
        ("r0", "a"): 0.4, ("r0", "b"): 0.0, ("r0", "c"): 0.3, ("r0", "d"): 0.0,
        ("r1", "a"): 0.0, ("r1", "b"): 0.4, ("r1", "c"): 0.0, ("r1", "d"): 0.1}
    table = confidence_gain(gains, pd.Series({"a": 0.9, "b": 0.5, "c": 0.7, "e": 0.1}))
    assert table.set_index("task")[["gain", "confidence"]].round(3).to_dict("index") == {
        "a": {"gain": 0.4, "confidence": 0.9}, "b": {"gain": 0.4, "confidence": 0.5},
        "c": {"gain": 0.3, "confidence": 0.7}}  # d has no confidence
    kinds = pd.DataFrame({"task": tasks, "kind": ["generative"] * 4})
    within = examples_vs_none(gains, kinds).iloc[0]
    # r0: (0.4 + 0.3) / 2 - 0 = 0.35; r1: (0.4 + 0.1) / 2 - 0 = 0.25
    assert within["diff"] == pytest.approx(0.30) and within["pairs"] == 2 and within["wins"] == 2
    assert within["tasks_with"] == 2 and within["tasks_without"] == 2
