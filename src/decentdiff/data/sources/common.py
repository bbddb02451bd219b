"""Helpers shared by the loaders of :mod:`decentdiff.data.sources`: label and pixel conversions,
one-line error texts, and the warnings a loader prints (kept while it fills a data cache entry,
so that a cache hit says them again)."""

from __future__ import annotations

import contextvars
import sys

import numpy as np

from decentdiff.errors import DataError

# A loader receives the normalised spec (for messages) and its argument (an absolute path, a
# Hugging Face name, or "" for sources without one) and returns (images, labels, class_names).
Loaded = tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]


#: Collects the warnings a loader prints while it fills a data cache entry (said again on a hit).
_WARNINGS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "decentdiff_data_warnings", default=None
)


def _warn(text: str) -> None:
    print(text, file=sys.stderr)
    said = _WARNINGS.get()
    if said is not None:
        said.append(text)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.rint rounds half to even; half-up is the rule users expect from round(v * 255 / 16).
    return np.floor(x + 0.5)


def _labels_from_values(
    y: np.ndarray, key: str, what: str = "y"
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Integer labels (N,) -> int64 labels 0..K-1 and the original values as names if remapped."""
    if y.dtype.kind not in "iu":
        raise DataError(
            f"{key}: labels {what} have dtype {y.dtype}; save them as an integer array (N,)"
        )
    values, inverse = np.unique(y, return_inverse=True)
    if values.size and values[0] == 0 and values[-1] == values.size - 1:
        return y.astype(np.int64), None  # already 0..K-1
    return inverse.reshape(-1).astype(np.int64), tuple(str(v) for v in values.tolist())


def _check_count(n: int, key: str) -> None:
    if n == 0:
        raise DataError(f"{key}: the data set contains no images; point it at a non-empty one")


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text[:200]
