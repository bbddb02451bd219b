"""Tests of decentdiff.data.features: pca, classifier and user featurisers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from decentdiff.data import features
from decentdiff.data.features import featurize, register_featurizer
from decentdiff.errors import ConfigError, DataError


def small_images(n: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)


def test_pca_shape_dtype_determinism():
    x = small_images()
    f = featurize(x, "pca", dim=5, seed=3)
    assert f.shape == (60, 5) and f.dtype == np.float32
    np.testing.assert_array_equal(f, featurize(x, "pca", dim=5, seed=3))
    assert featurize(x, dim=100).shape == (60, 16)  # capped at the pixel count
    assert featurize(x[:10], dim=64).shape == (10, 10)  # capped at N


def test_pca_is_the_principal_projection():
    # Three latent directions of clearly different variance, plus pixel noise and quantisation.
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((16, 3)))[0].T  # (3, 16) orthonormal rows
    z = rng.standard_normal((200, 3)) * np.array([120.0, 60.0, 30.0])
    pixels = np.clip(128 + z @ basis + rng.normal(0, 2, (200, 16)), 0, 255)
    x = np.rint(pixels).astype(np.uint8).reshape(200, 1, 4, 4)
    f = featurize(x, "pca", dim=3)
    # Independent reference: eigenvectors of the pixel covariance, largest eigenvalues first.
    p = x.reshape(200, -1).astype(np.float64) / 255.0
    p -= p.mean(0)
    _, vecs = np.linalg.eigh(p.T @ p)
    ref = p @ vecs[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(f), np.abs(ref), atol=1e-3)


def test_classifier_features_separate_classes():
    from decentdiff.data.sources import load_source

    ds = load_source("mnist5k")
    idx = np.random.default_rng(0).permutation(len(ds))[:1000]
    x, y = ds.images[idx], ds.labels[idx]
    f = features.classifier_features(x, y, seed=0, dim=32)  # min_steps=150: ~1.5 s
    assert f.shape == (1000, 32) and f.dtype == np.float32 and np.isfinite(f).all()
    # Nearest class centroid: centroids from the first half, accuracy on the second half.
    fit, test = slice(0, 500), slice(500, 1000)
    cents = np.stack([f[fit][y[fit] == c].mean(0) for c in range(10)])
    pred = ((f[test][:, None, :] - cents[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[test]).mean() > 0.8


def test_classifier_deterministic_and_needs_labels():
    x = small_images(40)
    y = np.arange(40) % 2
    a = featurize(x, "classifier", labels=y, seed=5, dim=8)
    b = featurize(x, "classifier", labels=y, seed=5, dim=8)
    assert a.shape == (40, 8)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="use --features pca"):
        featurize(x, "classifier")
    with pytest.raises(ConfigError, match="2 classes"):
        featurize(x, "classifier", labels=np.zeros(40, dtype=np.int64))


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        featurize(small_images(), "dinov3")
    msg = str(e.value)
    assert "\n" not in msg and "pca" in msg and "classifier" in msg


def test_bad_inputs():
    with pytest.raises(DataError):
        featurize(small_images().astype(np.float32))
    with pytest.raises(DataError):
        featurize(small_images()[:, 0])
    with pytest.raises(DataError):
        featurize(small_images(), labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(ConfigError):
        featurize(small_images(), dim=0)


def test_register_featurizer_round_trip(monkeypatch):
    monkeypatch.setattr(features, "FEATURIZERS", dict(features.FEATURIZERS))
    seen = {}

    def mean_pixel(images, labels, seed):
        seen.update(labels=labels, seed=seed)
        return images.reshape(images.shape[0], -1).mean(1, keepdims=True)

    def with_dim(images, labels, seed, dim):
        return np.ones((images.shape[0], dim))

    register_featurizer("MeanPixel", mean_pixel)
    register_featurizer("wide", with_dim)
    x = small_images()
    y = np.arange(60) % 3
    f = featurize(x, "meanpixel", labels=y, seed=9)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f[:, 0], x.reshape(60, -1).mean(1), rtol=1e-6)
    assert seen["seed"] == 9 and seen["labels"] is y
    assert featurize(x, "wide", dim=7).shape == (60, 7)
    assert "meanpixel" in features.FEATURIZERS

    register_featurizer("broken", lambda images, labels, seed: np.zeros(3))
    with pytest.raises(DataError, match="one feature row per image"):
        featurize(x, "broken")
    with pytest.raises(ConfigError):
        register_featurizer("", mean_pixel)


def test_import_is_light():
    code = (
        "import sys, decentdiff.data.features, decentdiff.data.partition; "
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
