"""Assertions that several test modules share."""

import numpy as np
import pytest


def check_cover(parts: list[np.ndarray], n: int) -> None:
    """Sorted int64 index arrays, pairwise disjoint, whose union is arange(n)."""
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    allidx = np.concatenate(parts)
    assert allidx.size == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    """The exception's message, asserted to be one non-empty line."""
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg
