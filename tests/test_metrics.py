"""The confidence metrics against a hand-computed example, and the registry's contract."""
import math

import numpy as np
import pytest

from taskdiv.common.errors import TaskdivError
from taskdiv.scoring import metrics

# Three generated tokens with probabilities 1/2, 1/4 and 1 (the last one an EOS the
# model was sure of), and the entropies of the three next-token distributions.
PROBS = [0.5, 0.25, 1.0]
ENTROPIES = [0.7, 1.2, 0.0]


def test_metrics_match_hand_computed_values():
    values = metrics.compute_all(np.log(PROBS), np.array(ENTROPIES))
    assert values["mean_prob"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)          # 0.58333
    assert values["geo_mean_prob"] == pytest.approx((0.5 * 0.25 * 1.0) ** (1 / 3))  # 0.5
    assert values["min_prob"] == pytest.approx(0.25)
    assert values["mean_entropy"] == pytest.approx((0.7 + 1.2 + 0.0) / 3)
    assert set(values) == set(metrics.METRICS)


def test_directions_and_confidence_mapping():
    assert {n for n, m in metrics.METRICS.items() if not m.higher_is_better} == {"mean_entropy"}
    assert float(metrics.confidence("mean_prob", 0.4)) == pytest.approx(0.4)
    # Lower entropy = more confident: exp(-H) maps it to (0, 1] with higher = more confident.
    assert float(metrics.confidence("mean_entropy", 0.0)) == 1.0
    assert float(metrics.confidence("mean_entropy", 2.0)) == pytest.approx(math.exp(-2.0))
    assert metrics.confidence("mean_entropy", np.array([0.5, 3.0])).tolist() == pytest.approx(
        [math.exp(-0.5), math.exp(-3.0)])


def test_single_token_and_ordering():
    one = metrics.compute_all(np.log([0.9]), np.array([0.3]))
    assert one["mean_prob"] == one["geo_mean_prob"] == one["min_prob"] == pytest.approx(0.9)
    # By the AM-GM inequality the geometric mean never exceeds the mean, nor the min either.
    rng = np.random.default_rng(0)
    for _ in range(20):
        lp = np.log(rng.uniform(0.01, 1, size=rng.integers(1, 30)))
        v = metrics.compute_all(lp, np.zeros_like(lp))
        assert v["min_prob"] <= v["geo_mean_prob"] + 1e-12 <= v["mean_prob"] + 2e-12


def test_unknown_metric_and_empty_response():
    with pytest.raises(TaskdivError, match="Did you mean 'mean_prob'"):
        metrics.get("mean_probs")
    with pytest.raises(AssertionError, match="non-empty"):
        metrics.compute_all(np.array([]), np.array([]))


def test_confidence_uses_each_metrics_own_mapping(monkeypatch):
    """confidence() knows no metric by name: a new lower-is-better metric brings its
    mapping, and one without a mapping is refused where it is defined."""
    def max_entropy(logprobs, entropies):
        return float(np.max(entropies))

    monkeypatch.setitem(metrics.METRICS, "max_entropy", metrics.Metric(
        max_entropy, False, "largest next-token entropy", to_confidence=lambda h: 1 / (1 + h),
        confidence_label="1/(1+max_entropy)"))
    assert metrics.confidence("max_entropy", np.array([0.0, 3.0])).tolist() == [1.0, 0.25]
    with pytest.raises(AssertionError, match="needs a to_confidence"):
        metrics.Metric(max_entropy, False, "no mapping")
    values = metrics.compute_all(np.log(PROBS), np.array(ENTROPIES))
    for name, m in metrics.METRICS.items():
        assert 0 <= metrics.confidence(name, values[name]) <= 1, name
        assert (m.confidence_label is None) == (m.to_confidence is None), name
