"""Greedy k-center (farthest-point) selection on embeddings: prompt diversity.

Each step picks the point farthest (Euclidean) from every point picked so far and
from the `initial` centers (prompts annotated in earlier rounds). With no initial
centers the first pick is a seeded random point. Cost: one (N x d) matrix-vector
product per pick; squared distances are updated in place, float32 throughout.
"""
from __future__ import annotations

import numpy as np


def k_center(X: np.ndarray, k: int, *, seed: int = 0, initial: np.ndarray | None = None,
             chunk: int | None = None) -> np.ndarray:
    """Indices into X of k greedy farthest-point picks, in pick order.

    `chunk` initial centers are compared at a time; by default as many as keep the
    N x chunk distance block at 2^24 floats (64 MB), whatever N is.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = len(X)
    if not 0 < k <= n:
        raise ValueError(f"k-center: k={k} must be in [1, {n}]")
    sq = np.einsum("ij,ij->i", X, X)
    mind = np.full(n, np.inf, dtype=np.float32)
    if initial is not None and len(initial):
        C = np.ascontiguousarray(initial, dtype=np.float32)
        csq = np.einsum("ij,ij->i", C, C)
        chunk = chunk or max(1, (1 << 24) // n)
        for s in range(0, len(C), chunk):
            # One N x chunk block, updated in place: sq - 2 x.c + |c|^2, summed in the
            # same order as the per-pick update below.
            d = X @ C[s:s + chunk].T
            d *= -2
            d += sq[:, None]
            d += csq[None, s:s + chunk]
            np.minimum(mind, d.min(axis=1), out=mind)
            del d  # freed before the next block is made
        first = int(np.argmax(mind))
    else:
        first = int(np.random.default_rng(seed).integers(n))
    picks = np.empty(k, dtype=np.int64)
    buf = np.empty(n, dtype=np.float32)
    current = first
    for step in range(k):
        picks[step] = current
        np.dot(X, X[current], out=buf)
        buf *= -2
        buf += sq
        buf += sq[current]
        np.minimum(mind, buf, out=mind)
        mind[current] = -1.0  # never pick a point twice (float noise around 0); min() keeps it
        current = int(np.argmax(mind))
    return picks


def k_center_naive(X: np.ndarray, k: int, *, seed: int = 0, initial: np.ndarray | None = None) -> np.ndarray:
    """Reference implementation (O(N k^2 d)): recompute every distance at every step."""
    X = np.asarray(X, dtype=np.float64)
    centers = [] if initial is None else [np.asarray(c, dtype=np.float64) for c in initial]
    picks: list[int] = []
    for _ in range(k):
        if not centers:
            i = int(np.random.default_rng(seed).integers(len(X)))
        else:
            C = np.stack(centers)
            d = ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1).min(axis=1)
            d[picks] = -1.0
            i = int(np.argmax(d))
        picks.append(i)
        centers.append(X[i])
    return np.asarray(picks)
