"""Argument and label checks shared by the DDM partitions and the federated client splits.

Owns the one-line :class:`~decentdiff.errors.ConfigError` / :class:`~decentdiff.errors.DataError`
checks that both :mod:`decentdiff.data.partition` and :mod:`decentdiff.data.client_split` apply to
their inputs (integer settings, integer labels).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from decentdiff.errors import ConfigError, DataError

__all__ = ["check_labels", "int_arg"]


def int_arg(value: Any, what: str, minimum: int, fix: str) -> int:
    """``value`` as an int; ConfigError naming ``what`` and ``fix`` unless an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}; {fix}")
    return int(value)


def check_labels(labels: Any, who: str, fix: str) -> np.ndarray:
    """labels as an integer array (N,), N >= 1.

    Raises:
        ConfigError: labels is None (the message ends with ``fix``).
        DataError: labels not an integer array (N,), or empty.
    """
    if labels is None:
        raise ConfigError(f"{who} needs labels but the data has none; {fix}")
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{who}: labels must be an integer array (N,), got {y.dtype} {y.shape}")
    if y.size == 0:
        raise DataError(f"{who}: there are no items to split; use a non-empty data set")
    return y
