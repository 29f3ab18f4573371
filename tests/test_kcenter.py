"""k-center with initial centers: same picks as the reference, in bounded memory."""
import tracemalloc

import numpy as np
import pytest

from taskdiv.selection.kcenter import k_center, k_center_naive


@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_initial_centers_in_any_chunking_match_the_reference(chunk):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 12)).astype(np.float32)
    init = rng.normal(size=(40, 12)).astype(np.float32)
    np.testing.assert_array_equal(k_center(X, 15, initial=init, chunk=chunk),
                                  k_center_naive(X, 15, initial=init))


def test_initial_distances_stay_within_the_block_budget():
    """The N x chunk block is sized from N (2^24 floats = 64 MB), and is the only one."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40_000, 4)).astype(np.float32)
    init = rng.normal(size=(600, 4)).astype(np.float32)
    tracemalloc.start()
    try:
        k_center(X, 1, initial=init)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * 2**20, f"peak {peak / 2**20:.0f} MB"
