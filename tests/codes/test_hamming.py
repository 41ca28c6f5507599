"""pairwise_hamming (numba) against the numpy reference and against unpacked bits."""

import numpy as np
import pytest

from dsh.codes.hamming import pairwise_hamming, pairwise_hamming_reference


def unpacked_distances(q, db):
    """The obvious definition: count differing bits."""
    return np.unpackbits(q[:, None, :] ^ db[None, :, :], axis=2).sum(axis=2).astype(np.int32)


@pytest.mark.parametrize("nbytes", [1, 2, 3, 5, 8, 9, 16, 17, 32, 33])
def test_pairwise_matches_bits(nbytes):
    rng = np.random.default_rng(nbytes)
    db = rng.integers(0, 256, (300, nbytes), dtype=np.uint8)
    q = np.concatenate([db[:5], rng.integers(0, 256, (20, nbytes), dtype=np.uint8)])
    want = unpacked_distances(q, db)
    got = pairwise_hamming(q, db)
    assert got.dtype == np.int32 and got.shape == (25, 300)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pairwise_hamming_reference(q, db), want)
    assert (got[np.arange(5), np.arange(5)] == 0).all() and got.max() > 0


def test_pairwise_shapes_and_errors():
    assert pairwise_hamming(np.zeros((0, 8), np.uint8), np.zeros((4, 8), np.uint8)).shape == (0, 4)
    assert pairwise_hamming(np.zeros((3, 8), np.uint8), np.zeros((0, 8), np.uint8)).shape == (3, 0)
    with pytest.raises(ValueError, match="equal widths"):
        pairwise_hamming(np.zeros((3, 8), np.uint8), np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("W", [1, 2, 3])
def test_distinct_rows_match_a_sorting_unique(W):
    """The hash-table dedupe of a query batch: the distinct rows in order of first appearance and each row's index
    among them, as numpy's sort-based unique gives them, on rows that repeat a lot and differ in one word only."""
    from dsh.codes.kernels import distinct_rows

    rng = np.random.default_rng(W)
    for n in (1, 2, 7, 500):
        Q = rng.integers(0, 3, (n, W)).astype(np.uint64) * np.uint64(2**61 + 7)  # large words, few values
        first, inverse = distinct_rows(Q)
        _, idx = np.unique(Q, axis=0, return_index=True)
        np.testing.assert_array_equal(first, np.sort(idx))
        np.testing.assert_array_equal(Q[first][inverse], Q)
        assert len(first) < n or n < 3
