"""Held-out splits: a seeded, optionally stratified train / held-out partition of indices."""

from __future__ import annotations

import math
import numbers

import numpy as np

from decentdiff.errors import DataError

__all__ = ["heldout_split"]


def _n_heldout(count: int, frac: float) -> int:
    """How many of `count` items to hold out.

    round(frac * count), rounded half up: Python's round() rounds half to even (round(2.5) = 2 but
    round(3.5) = 4), an irregularity nobody expects from a split size. With frac > 0, groups of at
    least 2 items give at least 1 and keep at least 1 for training.
    """
    if frac == 0 or count < 2:
        return 0
    k = math.floor(frac * count + 0.5)
    return min(max(k, 1), count - 1)


def heldout_split(
    n: int, labels: np.ndarray | None = None, frac: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices 0..n-1 into a training part and a held-out part.

    Seeded with ``np.random.default_rng(seed)``. With labels, the split is stratified: every class
    holds out round(frac * class size) items (at least 1, and at most size - 1, for classes with
    2 or more items; a single-item class stays in training). Without labels the same rule applies
    to the whole set.

    Args:
        n: number of items.
        labels: optional array (n,) of class labels (any values; compared for equality).
        frac: fraction to hold out, in [0, 1). 0 gives an empty held-out part.
        seed: random seed; the same (n, labels, frac, seed) always gives the same split.

    Returns:
        (train_idx, heldout_idx): sorted int64 arrays, disjoint, whose union is arange(n).

    Raises:
        DataError: frac outside [0, 1), n negative, or labels not of shape (n,).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise DataError(f"heldout split: n must be a non-negative integer, got {n!r}")
    n = int(n)
    if isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0 <= frac < 1:
        raise DataError(
            f"heldout split: fraction {frac!r} is outside [0, 1); use e.g. 0.2 (0 = no held-out)"
        )
    frac = float(frac)
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [np.arange(n, dtype=np.int64)]
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise DataError(
                f"heldout split: labels have shape {labels.shape} but there are {n} items; "
                "give one label per item"
            )
        # Stable sort so that each group lists its indices in increasing order before shuffling:
        # the split then depends only on (labels, seed), not on the sort algorithm.
        order = np.argsort(labels, kind="stable")
        _, starts = np.unique(labels[order], return_index=True)
        groups = np.split(order.astype(np.int64), starts[1:])
    held = [rng.permutation(g)[: _n_heldout(g.size, frac)] for g in groups]
    mask = np.zeros(n, dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)
