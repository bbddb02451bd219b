"""The on-disk cache of trained feature classifiers: entry folder, data digest, load and save.

A trained :class:`~decentdiff.evaluation.classifier.FeatureNet` is cached once per data fingerprint
and seed as safetensors + JSON (no pickle)::

    <cache>/classifier/<fingerprint[:16]>-s<seed>/model.safetensors, meta.json

where ``<cache>`` is ``$DECENTDIFF_CACHE`` or ``~/.cache/decentdiff``. meta.json holds a sha256
digest of the training images and labels and the training recipe; a cache that is corrupt or was
made from other images or settings is retrained, never trusted
(:func:`decentdiff.evaluation.features.get_feature_net` decides).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from decentdiff.data.cache import default_cache_dir
from decentdiff.errors import CheckpointError, RunError
from decentdiff.evaluation.classifier import FeatureNet, fresh_net
from decentdiff.training.checkpoint import load_tensors, read_meta, save_checkpoint

__all__ = ["default_cache_dir", "digest", "entry_dir", "load_cached", "save_cached"]


def entry_dir(cache_dir: Path | None, fingerprint: str, seed: int) -> Path:
    """The folder of one cached classifier: ``<cache_dir>/classifier/<fingerprint[:16]>-s<seed>``.

    ``cache_dir`` None means :func:`default_cache_dir`.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "classifier" / f"{fingerprint[:16]}-s{seed}"


def digest(images: np.ndarray, labels: np.ndarray | None) -> str:
    """sha256 hex digest of images (dtype, shape and bytes) and labels, stored in meta.json."""
    h = hashlib.sha256()
    h.update(repr((images.dtype.str, tuple(images.shape))).encode())
    for i in range(0, len(images), 4096):  # in chunks: the rows of a memmap are read in turn
        h.update(np.ascontiguousarray(images[i : i + 4096]).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return h.hexdigest()


def load_cached(directory: Path, want: dict[str, Any]) -> tuple[FeatureNet, dict[str, Any]] | None:
    """The cached network if the cache is present, intact and made from the same data and recipe.

    Returns None when there is no cache; warns and returns None when it is unusable.
    """
    try:
        meta = read_meta(directory)
    except RunError:
        return None  # no cache yet
    except CheckpointError as e:
        warnings.warn(f"{e}; retraining the feature classifier", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
        warnings.warn(
            f"feature classifier cache {directory} was made from other data or settings; "
            "retraining it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    net = fresh_net(want["config"], want["seed"])
    try:
        tensors = load_tensors(directory, "model", meta, expected=net.state_dict())
        net.load_state_dict(tensors)
    except (CheckpointError, RuntimeError) as e:
        warnings.warn(f"{e}; retraining the feature classifier", RuntimeWarning, stacklevel=3)
        return None
    return net.eval(), meta


def save_cached(directory: Path, net: FeatureNet, meta: dict[str, Any]) -> None:
    """Writes net and meta to the cache entry ``directory``; warns (never raises) if it cannot."""
    try:
        save_checkpoint(directory, {"model": net.state_dict()}, meta)
    except OSError as e:
        warnings.warn(
            f"could not cache the feature classifier in {directory} ({e}); set DECENTDIFF_CACHE "
            "to a writable folder to avoid retraining",
            RuntimeWarning,
            stacklevel=3,  # the caller of get_feature_net
        )
