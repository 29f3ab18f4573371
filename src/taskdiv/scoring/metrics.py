"""Per-prompt confidence metrics: the registry `METRICS`, name -> Metric(fn, direction).

A metric is a plain function of one generated response's per-step statistics, taken
from the raw logits of each greedy step (no temperature or other processing):

    logprobs   log p(y_j | x, y_<j) of each generated token (EOS included), natural log
    entropies  entropy of the full next-token distribution at each step, in nats

    mean_prob       mean of exp(logprobs): the paper's prompt confidence (the default)
    geo_mean_prob   exp(mean of logprobs): the geometric mean token probability
    min_prob        the least probable generated token
    mean_entropy    mean entropy; LOWER means more confident

`confidence(name, ...)` maps any metric to [0, 1] with higher = more confident, the
contract of `taskdiv select --scores`, through the metric's own `to_confidence`: the
probability metrics as they are, and exp(-mean_entropy) for the entropy.

    python -m taskdiv.scoring.metrics      # prints the metrics of a small hand-made example
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..common.errors import unknown_name


@dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool   # True: a higher value means a more confident model
    help: str
    # How a value becomes a confidence in [0, 1], higher = more confident (None: it is one
    # already), and how that conversion is written in summaries.
    to_confidence: Callable[[np.ndarray], np.ndarray] | None = None
    confidence_label: str | None = None

    def __post_init__(self):
        assert self.higher_is_better or self.to_confidence is not None, \
            "a metric where lower means more confident needs a to_confidence mapping"


def mean_prob(logprobs: np.ndarray, entropies: np.ndarray) -> float:
    return float(np.mean(np.exp(logprobs)))


def geo_mean_prob(logprobs: np.ndarray, entropies: np.ndarray) -> float:
    return float(np.exp(np.mean(logprobs)))


def min_prob(logprobs: np.ndarray, entropies: np.ndarray) -> float:
    return float(np.exp(np.min(logprobs)))


def mean_entropy(logprobs: np.ndarray, entropies: np.ndarray) -> float:
    return float(np.mean(entropies))


METRICS: dict[str, Metric] = {
    "mean_prob": Metric(mean_prob, True, "mean token probability (the paper's)"),
    "geo_mean_prob": Metric(geo_mean_prob, True, "exp of the mean token log-probability"),
    "min_prob": Metric(min_prob, True, "probability of the least likely generated token"),
    "mean_entropy": Metric(mean_entropy, False, "mean next-token entropy in nats (lower = more confident)",
                           to_confidence=lambda h: np.exp(-h), confidence_label="exp(-mean_entropy)"),
}


def get(name: str) -> Metric:
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS)
    return METRICS[name]


def compute_all(logprobs, entropies) -> dict[str, float]:
    """Every registered metric of one response (its per-step arrays must be non-empty)."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    entropies = np.asarray(entropies, dtype=np.float64)
    assert logprobs.ndim == 1 and logprobs.shape == entropies.shape and len(logprobs) > 0, \
        f"expected two equal, non-empty 1-D arrays, got {logprobs.shape} and {entropies.shape}"
    return {name: m.fn(logprobs, entropies) for name, m in METRICS.items()}


def confidence(name: str, value):
    """A metric's value mapped to [0, 1], higher = more confident (works on arrays too)."""
    metric, value = get(name), np.asarray(value, dtype=np.float64)
    return value if metric.to_confidence is None else metric.to_confidence(value)


if __name__ == "__main__":  # pragma: no cover - illustration
    lp = np.log([0.5, 0.25, 1.0])
    print(compute_all(lp, np.array([0.7, 1.2, 0.0])))
