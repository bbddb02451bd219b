"""Tests of decentdiff.data.split.heldout_split."""

from __future__ import annotations

import numpy as np
import pytest

from decentdiff.data.split import heldout_split
from decentdiff.errors import DataError


def check_partition(train: np.ndarray, held: np.ndarray, n: int) -> None:
    assert train.dtype == np.int64 and held.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(held) > 0)  # sorted, no repeats
    assert np.intersect1d(train, held).size == 0
    np.testing.assert_array_equal(np.union1d(train, held), np.arange(n))


def test_unstratified():
    train, held = heldout_split(100, frac=0.25, seed=3)
    check_partition(train, held, 100)
    assert held.size == 25


def test_stratified_proportions():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array([7, 1, 3, 9]), [50, 13, 7, 2])
    labels = rng.permutation(labels)
    train, held = heldout_split(labels.size, labels, frac=0.2, seed=0)
    check_partition(train, held, labels.size)
    for c in np.unique(labels):
        count = int((labels == c).sum())
        got = int((labels[held] == c).sum())
        assert abs(got - 0.2 * count) <= 1, (c, got, count)
        assert got >= 1  # every class with >= 2 items is represented
        assert got < count  # and keeps training items


def test_singleton_class_stays_in_training():
    labels = np.array([0, 0, 0, 0, 0, 1])
    train, held = heldout_split(6, labels, frac=0.5, seed=0)
    assert 5 in train
    assert held.size == 3  # round-half-up of 2.5


def test_deterministic_and_seed_dependent():
    labels = np.arange(200) % 4
    a = heldout_split(200, labels, frac=0.3, seed=11)
    b = heldout_split(200, labels, frac=0.3, seed=11)
    c = heldout_split(200, labels, frac=0.3, seed=12)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert (
        heldout_split(200, frac=0.3, seed=1)[1].tolist() != heldout_split(200, frac=0.3)[1].tolist()
    )


def test_zero_fraction_and_empty():
    train, held = heldout_split(10, frac=0.0)
    assert held.size == 0 and train.tolist() == list(range(10))
    train, held = heldout_split(0, np.array([], dtype=np.int64))
    assert train.size == 0 and held.size == 0


@pytest.mark.parametrize("frac", [1.0, -0.1, 1.5, float("nan"), "0.2"])
def test_bad_fraction(frac):
    with pytest.raises(DataError, match="fraction"):
        heldout_split(10, frac=frac)


def test_bad_labels_and_n():
    with pytest.raises(DataError, match="one label per item"):
        heldout_split(5, np.zeros(4))
    with pytest.raises(DataError, match="non-negative"):
        heldout_split(-1)
