"""The ``hf:NAME`` source: the "train" split of a Hugging Face ``datasets`` data set from the
local cache, never downloaded. ``datasets`` and PIL are imported inside the loader."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from decentdiff.data.sources.common import _labels_from_values, _one_line
from decentdiff.data.sources.images import ImageOptions, _stack_images
from decentdiff.errors import DataError


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load_hf(key: str, name: str, options: ImageOptions) -> Any:
    """The "train" split of a Hugging Face data set from the local cache (never downloads)."""
    # Offline flags are read when the libraries are imported, so set them before the import and
    # also on datasets.config in case it was imported earlier.
    with _env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"):
        try:
            import datasets
        except ImportError as e:
            raise DataError(
                f"{key}: the Hugging Face `datasets` package is not installed; install it with "
                "`pip install datasets` (the data set must then be in the local cache)"
            ) from e
        config = getattr(datasets, "config", None)
        saved = getattr(config, "HF_DATASETS_OFFLINE", None)
        if config is not None and saved is not None:
            config.HF_DATASETS_OFFLINE = True
        try:
            ds = datasets.load_dataset(name, split="train")
        except Exception as e:  # network, cache and format errors all mean "not available here"
            raise DataError(
                f"{key}: cannot load split 'train' offline ({type(e).__name__}: {_one_line(e)}); "
                f"it must be available in the local cache: run datasets.load_dataset({name!r}) "
                "once on a machine with network"
            ) from e
        finally:
            if config is not None and saved is not None:
                config.HF_DATASETS_OFFLINE = saved
    columns = list(getattr(ds, "column_names", []))
    col = next((c for c in ("image", "img") if c in columns), None)
    if col is None:
        raise DataError(
            f"{key}: has no 'image' or 'img' column (columns: {columns}); use an image data set"
        )
    try:
        raw = ds[col]
    except Exception as e:
        raise DataError(f"{key}: cannot decode column {col!r} ({_one_line(e)})") from e
    images = _stack_images(
        ((f"row {i} of column {col!r}", _as_pil(v)) for i, v in enumerate(raw)), key, options
    )
    if "label" not in columns:
        return images, None, None, ()
    y = np.asarray(ds["label"])
    if y.shape != (images.shape[0],):
        raise DataError(f"{key}: column 'label' is not one integer per image; use another column")
    feature = getattr(ds, "features", {}).get("label")
    names = getattr(feature, "names", None)
    if names and y.dtype.kind in "iu" and y.size and y.min() >= 0 and y.max() < len(names):
        return images, y.astype(np.int64), tuple(str(n) for n in names), ()
    labels, remapped = _labels_from_values(y, key, what="column 'label'")
    return images, labels, remapped, ()


def _as_pil(value: Any) -> Callable[[], Any]:
    def opener() -> Any:
        from PIL import Image

        if isinstance(value, Image.Image):
            return value
        if isinstance(value, np.ndarray):
            return Image.fromarray(value)
        raise TypeError(f"unsupported image value of type {type(value).__name__}")

    return opener
