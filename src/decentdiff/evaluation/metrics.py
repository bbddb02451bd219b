"""Sample-quality metrics: pure functions on feature matrices (NumPy/SciPy, float64).

Features come from :mod:`decentdiff.evaluation.features` (rows = images). Every function validates
its inputs (2-D, finite, same feature dimension, at least 2 rows) and raises
:class:`~decentdiff.errors.ConfigError` with a one-line message otherwise. Pairwise distances and
kernel sums are computed in row chunks (≤ ~32 MB each), so 5,000 × 5,000 sets of 128-D (or 2048-D)
features fit in a small memory budget.

================  ==================================================================================
fid               Fréchet distance of Gaussian fits (Heusel et al. 2017, arXiv 1706.08500)
kid_mean/std      unbiased MMD² with a cubic polynomial kernel, over subsets (Bińkowski et al.
                  2018, arXiv 1801.01401)
precision/recall  k-NN manifold estimates (Kynkäänniemi et al. 2019, arXiv 1904.06991)
density/coverage  k-NN ball counts around real samples (Naeem et al. 2020, arXiv 2002.09797)
entropy, ...      histogram of the feature classifier's predicted classes on the samples
================  ==================================================================================
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from decentdiff.errors import ConfigError

__all__ = [
    "all_metrics",
    "bootstrap_fid_ratio",
    "class_histogram",
    "density_coverage",
    "frechet_distance",
    "kid",
    "precision_recall",
]

_CHUNK_BYTES = 32 * 2**20  # largest temporary block of a chunked pairwise computation
_CONFIDENT = (
    0.9  # max class probability at or above which a sample counts as confidently classified
)
_HIST_EPS = 1e-6  # additive smoothing of class histograms in the KL divergence
#: Feature dimensions up to which BLAS/LAPACK run single-threaded. On a shared 2-CPU machine,
#: OpenBLAS with 2 threads made scipy's sqrtm of a 128×128 matrix (FID's route then) 100× slower
#: (2 s instead of 10 ms) and the distance products 1.5–2× slower; larger problems keep the
#: library default.
SINGLE_THREAD_UP_TO_DIM = 512


# --------------------------------------------------------------------------------------------------
# Validation and chunked helpers
# --------------------------------------------------------------------------------------------------


def _check_matrix(x: Any, who: str, name: str, min_rows: int = 2) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{who}: {name} features must be a numeric array (N, D), got {type(x).__name__}"
        ) from None
    if a.ndim != 2 or a.shape[1] < 1:
        raise ConfigError(
            f"{who}: {name} features must be a 2-D array (N, D), got shape {a.shape}; "
            "pass one feature row per image"
        )
    if a.shape[0] < min_rows:
        raise ConfigError(
            f"{who}: needs at least {min_rows} {name} samples, got {a.shape[0]}; "
            "evaluate more images"
        )
    if not np.isfinite(a).all():
        raise ConfigError(
            f"{who}: {name} features contain NaN or infinite values; check the images "
            "(a diverged sampler?) and the feature network"
        )
    return a


def _check_pair(a: Any, b: Any, who: str, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x = _check_matrix(a, who, "real", min_rows)
    y = _check_matrix(b, who, "fake", min_rows)
    if x.shape[1] != y.shape[1]:
        raise ConfigError(
            f"{who}: real features have {x.shape[1]} dimensions but fake features {y.shape[1]}; "
            "extract both with the same feature network"
        )
    return x, y


def _int_arg(value: Any, who: str, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{who}: {name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


@functools.cache
def _threadpools() -> ThreadpoolController:
    """The process's thread pools, found once: a fresh scan of the loaded libraries costs ~1 ms
    alone and several ms in a process with torch loaded, more than a small FID itself (a
    bootstrap interval computes hundreds). NumPy's BLAS is loaded before any call here."""
    return ThreadpoolController()


def _blas(dim: int) -> contextlib.AbstractContextManager[Any]:
    """Single-threaded BLAS for features of dimension ≤ SINGLE_THREAD_UP_TO_DIM."""
    if dim <= SINGLE_THREAD_UP_TO_DIM:
        return _threadpools().limit(limits=1, user_api="blas")
    return contextlib.nullcontext()


def _rows_per_chunk(cols: int, width: int = 1) -> int:
    return max(1, _CHUNK_BYTES // (8 * max(1, cols) * max(1, width)))


def _sq_dists(x: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(x), len(y)), clipped at 0 (round-off)."""
    d = np.einsum("ij,ij->i", x, x)[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0, out=d)


# --------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------


def _cov_factor(x: np.ndarray) -> np.ndarray:
    """L (D, k) with L·Lᵀ = the unbiased covariance of x (N, D), k = min(N, D) columns: the
    centred rows themselves when N ≤ D (rank ≤ N − 1, nothing is lost), else V·√W from the
    covariance's eigendecomposition."""
    n, d = x.shape
    c = x - x.mean(axis=0)
    if n <= d:
        return c.T / math.sqrt(n - 1)
    w, v = np.linalg.eigh(c.T @ c / (n - 1))
    return v * np.sqrt(np.clip(w, 0, None))


def _trace_sqrt_product(l1: np.ndarray, l2: np.ndarray) -> float:
    """Tr((Σ1 Σ2)^½) for Σi = Li·Liᵀ: the nuclear norm of L1ᵀ·L2.

    The eigenvalues of Σ1 Σ2 are those of L1ᵀ Σ2 L1 = (L1ᵀL2)(L1ᵀL2)ᵀ, i.e. the squared singular
    values of L1ᵀL2, so the trace of the principal square root is their sum: exact, real, and
    defined for singular covariances (fewer images than feature dimensions, the usual case with
    Inception's 2,048), where scipy's sqrtm of Σ1 Σ2 took 60 s at D = 2,048 and 1,000 images a
    side against 1.1 s for this (BENCHMARKS.md, FID section).
    """
    return float(np.linalg.svd(l1.T @ l2, compute_uv=False).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID with Inception features).

    Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ...", arXiv 1706.08500.
    d² = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½), with unbiased (N − 1) covariances.

    Args:
        a: float (N, D) features of one set (e.g. real images), N ≥ 2.
        b: float (M, D) features of the other set, M ≥ 2.

    Returns:
        The distance (≥ 0; 0 for identical sets). Symmetric in a and b.

    Raises:
        ConfigError: inputs not 2-D, fewer than 2 rows, non-finite, or of different D.
    """
    x, y = _check_pair(a, b, "FID")
    with _blas(x.shape[1]):
        diff = x.mean(axis=0) - y.mean(axis=0)
        l1, l2 = _cov_factor(x), _cov_factor(y)
        tr_sqrt = _trace_sqrt_product(l1, l2)
        traces = float(np.sum(l1 * l1) + np.sum(l2 * l2))  # Tr Σ = ‖L‖²_F
    value = float(diff @ diff + traces - 2.0 * tr_sqrt)
    return max(value, 0.0)  # tiny negative values are round-off of identical distributions


# --------------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------------


def _poly_kernel_sum(x: np.ndarray, y: np.ndarray, drop_diagonal: bool) -> float:
    """Σ k(x_i, y_j) with k(x, y) = (x·y / d + 1)³, optionally without i = j (x is y)."""
    d = x.shape[1]
    total = 0.0
    step = _rows_per_chunk(y.shape[0])
    for i in range(0, x.shape[0], step):
        k = (x[i : i + step] @ y.T / d + 1.0) ** 3
        total += float(k.sum())
        if drop_diagonal:
            total -= float(np.trace(k, offset=i))
    return total


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equal-size sets (m) with the cubic polynomial kernel."""
    m = x.shape[0]
    kxx = _poly_kernel_sum(x, x, drop_diagonal=True)
    kyy = _poly_kernel_sum(y, y, drop_diagonal=True)
    kxy = _poly_kernel_sum(x, y, drop_diagonal=False)
    return (kxx + kyy) / (m * (m - 1)) - 2.0 * kxy / (m * m)


def kid(
    a: np.ndarray,
    b: np.ndarray,
    *,
    subsets: int = 10,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the kernel k(x, y) = (x·y / D + 1)³.

    Bińkowski et al. 2018, "Demystifying MMD GANs", arXiv 1801.01401.
    Each subset draws ``m = min(subset_size, N, M)`` rows of a and of b without replacement
    (``numpy.random.default_rng(seed)``); the estimator is
    (Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)) / (m(m−1)) − 2 Σ_{i,j} k(x_i, y_j) / m².

    Args:
        a: float (N, D) features (real).
        b: float (M, D) features (fake).
        subsets: number of subsets (≥ 1).
        subset_size: rows per subset (≥ 2), capped at min(N, M).
        seed: seed of the subset draws.

    Returns:
        (mean, std) over subsets (std with ddof = 0, as torchmetrics and torch-fidelity). Can be
        slightly negative when the sets come from the same distribution (the estimator is unbiased).

    Raises:
        ConfigError: invalid features or arguments.
    """
    x, y = _check_pair(a, b, "KID")
    subsets = _int_arg(subsets, "KID", "subsets", 1)
    m = min(_int_arg(subset_size, "KID", "subset_size", 2), x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    values = []
    with _blas(x.shape[1]):
        for _ in range(subsets):
            xi = x[rng.choice(x.shape[0], m, replace=False)]
            yi = y[rng.choice(y.shape[0], m, replace=False)]
            values.append(_mmd2_unbiased(xi, yi))
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------------------------------
# Precision / recall / density / coverage
# --------------------------------------------------------------------------------------------------


def _knn_sq_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of every row of x to its k-th nearest other row."""
    x_sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(x.shape[0])
    step = _rows_per_chunk(x.shape[0])
    for i in range(0, x.shape[0], step):
        d = _sq_dists(x[i : i + step], x, x_sq)
        out[i : i + step] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return out


def _prdc(real: np.ndarray, fake: np.ndarray, k: int, who: str) -> dict[str, float]:
    """Precision, recall, density and coverage in one chunked pass over the real–fake distances.

    A sample lies in a ball when its distance is *strictly* below the radius, as in the reference
    implementation of Naeem et al. (the ``prdc`` package): the centre lies in its own ball, and a
    set compared with itself has density exactly 1 (with closed balls it would be (k + 1) / k).
    """
    x, y = _check_pair(real, fake, who)
    k = _int_arg(k, who, "k", 1)
    if k >= min(x.shape[0], y.shape[0]):
        raise ConfigError(
            f"{who}: k={k} needs more than k samples in each set, got {x.shape[0]} real and "
            f"{y.shape[0]} fake; lower k or evaluate more images"
        )
    balls_per_fake = np.empty(y.shape[0], dtype=np.int64)  # real balls containing each fake
    nearest_fake = np.full(x.shape[0], np.inf)  # squared distance of each real to the nearest fake
    real_in_fake = np.zeros(x.shape[0], dtype=bool)  # real lies in some fake ball
    with _blas(x.shape[1]):
        r_real = _knn_sq_radii(x, k)  # (N,)
        r_fake = _knn_sq_radii(y, k)  # (M,)
        x_sq = np.einsum("ij,ij->i", x, x)
        step = _rows_per_chunk(x.shape[0])
        for j in range(0, y.shape[0], step):
            d = _sq_dists(y[j : j + step], x, x_sq)  # (chunk, N)
            balls_per_fake[j : j + step] = (d < r_real[None, :]).sum(axis=1)
            np.minimum(nearest_fake, d.min(axis=0), out=nearest_fake)
            real_in_fake |= (d < r_fake[j : j + step, None]).any(axis=0)
    return {
        "precision": float(np.mean(balls_per_fake > 0)),
        "recall": float(np.mean(real_in_fake)),
        "density": float(balls_per_fake.sum() / (k * y.shape[0])),
        "coverage": float(np.mean(nearest_fake < r_real)),
    }


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall on k-NN manifold estimates.

    Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric ...", arXiv 1904.06991.
    Precision: share of fake samples inside at least one real k-NN ball; recall: share of real
    samples inside at least one fake k-NN ball (a ball's radius is the distance from its centre to
    the k-th nearest other sample of its own set).

    Args:
        real: float (N, D) real features.
        fake: float (M, D) fake features.
        k: neighbourhood size (1 ≤ k < min(N, M)).

    Returns:
        (precision, recall), each in [0, 1].

    Raises:
        ConfigError: invalid features or k.
    """
    r = _prdc(real, fake, k, "precision/recall")
    return r["precision"], r["recall"]


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Density and coverage on k-NN balls around the real samples.

    Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics ...", arXiv 2002.09797.
    Density: mean over fakes of (number of real k-NN balls containing it) / k (≈ 1 when fake and
    real match; unbounded above); coverage: share of real balls that contain at least one fake.

    Args:
        real: float (N, D) real features.
        fake: float (M, D) fake features.
        k: neighbourhood size (1 ≤ k < min(N, M)).

    Returns:
        (density, coverage).

    Raises:
        ConfigError: invalid features or k.
    """
    r = _prdc(real, fake, k, "density/coverage")
    return r["density"], r["coverage"]


# --------------------------------------------------------------------------------------------------
# Class histogram
# --------------------------------------------------------------------------------------------------


def _check_probs(probs: Any, who: str) -> np.ndarray:
    p = _check_matrix(probs, who, "fake class-probability", min_rows=1)
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ConfigError(
            f"{who}: class probabilities must be non-negative rows summing to 1; pass softmax "
            "probabilities (extract()['probs']), not logits"
        )
    return p


def class_histogram(
    probs_fake: np.ndarray, real_labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Histogram of the classes a classifier predicts on generated samples.

    Mode dropping and class imbalance show up as low entropy and high KL to the real class
    histogram; blurry or ambiguous samples as a low share of confident predictions.

    Args:
        probs_fake: float (N, K) class probabilities of the fake samples (rows sum to 1).
        real_labels: optional int (M,) labels of the real data, in [0, K).

    Returns:
        ``counts``: int64 (K,) samples per predicted (argmax) class; ``entropy``: entropy in nats
        of counts / N (log K when uniform); ``max_entropy``: log K; ``confident_share``: share of
        samples with max probability ≥ 0.9; ``kl_to_real``: KL(fake ‖ real) in nats between the
        predicted-class and real-label histograms, both smoothed as (h + 1e-6) / (1 + K·1e-6)
        (finite when a class is missing), or None without real_labels.

    Raises:
        ConfigError: probabilities malformed, or labels out of range.
    """
    who = "class histogram"
    p = _check_probs(probs_fake, who)
    n, k = p.shape
    counts = np.bincount(p.argmax(axis=1), minlength=k).astype(np.int64)
    hist = counts / n
    nz = hist[hist > 0]
    out: dict[str, Any] = {
        "counts": counts,
        "entropy": float(-(nz * np.log(nz)).sum()),
        "max_entropy": float(np.log(k)),
        "confident_share": float(np.mean(p.max(axis=1) >= _CONFIDENT)),
        "kl_to_real": None,
    }
    if real_labels is not None:
        y = np.asarray(real_labels)
        if y.ndim != 1 or y.size == 0 or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= k:
            raise ConfigError(
                f"{who}: real labels must be a non-empty 1-D integer array with values in "
                f"[0, {k}), got {y.dtype} {y.shape}; pass the labels of the data the classifier "
                "was trained on"
            )
        q = np.bincount(y, minlength=k) / y.size
        ps = (hist + _HIST_EPS) / (1 + k * _HIST_EPS)
        qs = (q + _HIST_EPS) / (1 + k * _HIST_EPS)
        out["kl_to_real"] = float(np.sum(ps * np.log(ps / qs)))
    return out


# --------------------------------------------------------------------------------------------------
# Uncertainty of a ratio of FIDs
# --------------------------------------------------------------------------------------------------


def bootstrap_fid_ratio(
    real: np.ndarray,
    fake_a: np.ndarray,
    fake_b: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Basic (reverse-percentile) bootstrap interval of FID(real, a) / FID(real, b).

    Each replicate resamples the real, the a and the b features with replacement (one real
    resample shared by both FIDs, as both are measured against the same reference), so the
    interval covers the sampling noise of all three finite sets. FID is biased upwards on finite
    sets, and a resample with replacement adds that bias again, which pulls replicate ratios
    towards 1; the basic interval (2·r̂ − q_high, 2·r̂ − q_low) reflects the replicates about the
    estimate r̂ and so corrects that first-order shift, where the plain percentile interval can
    miss r̂ itself.

    Args:
        real: float (N, D) reference features.
        fake_a: float (M, D) features of the model in the numerator.
        fake_b: float (M', D) features of the model in the denominator.
        n_boot: replicates.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        (low, high) of the ratio.

    Raises:
        ConfigError: invalid features or parameters.
    """
    x, a = _check_pair(real, fake_a, "bootstrap_fid_ratio")
    _, b = _check_pair(real, fake_b, "bootstrap_fid_ratio")
    n_boot = _int_arg(n_boot, "bootstrap_fid_ratio", "n_boot", 2)
    if not 0 < level < 1:
        raise ConfigError(f"bootstrap_fid_ratio: level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for i in range(n_boot):
        xr = x[rng.integers(0, len(x), len(x))]
        fa = frechet_distance(xr, a[rng.integers(0, len(a), len(a))])
        fb = frechet_distance(xr, b[rng.integers(0, len(b), len(b))])
        out[i] = fa / fb if fb > 0 else np.inf
    fb0 = frechet_distance(x, b)
    est = frechet_distance(x, a) / fb0 if fb0 > 0 else np.inf
    q_lo, q_hi = np.quantile(out, [(1 - level) / 2, (1 + level) / 2])
    return float(2 * est - q_hi), float(2 * est - q_lo)


# --------------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------------


def all_metrics(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    *,
    fake_probs: np.ndarray | None = None,
    real_labels: np.ndarray | None = None,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Every metric of this module for one real and one fake feature set.

    Args:
        real_feats: float (N, D) features of real (held-out) images.
        fake_feats: float (M, D) features of generated images.
        fake_probs: optional float (M, K) classifier probabilities of the generated images.
        real_labels: optional int labels of the real data (for ``kl_to_real``).
        k: neighbourhood size of precision/recall/density/coverage.
        seed: seed of KID's subsets.

    Returns:
        ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``density``, ``coverage``;
        with fake_probs also ``entropy`` and ``confident_share``, and ``kl_to_real`` when
        real_labels are given too. All plain floats.

    Raises:
        ConfigError: invalid inputs (see the individual functions).
    """
    x, y = _check_pair(real_feats, fake_feats, "metrics")
    out: dict[str, float] = {"fid": frechet_distance(x, y)}
    out["kid_mean"], out["kid_std"] = kid(x, y, seed=seed)
    out.update(_prdc(x, y, k, "metrics"))
    if fake_probs is not None:
        p = _check_probs(fake_probs, "metrics")
        if p.shape[0] != y.shape[0]:
            raise ConfigError(
                f"metrics: {p.shape[0]} rows of class probabilities for {y.shape[0]} fake feature "
                "rows; extract both from the same images"
            )
        h = class_histogram(p, real_labels)
        out["entropy"] = h["entropy"]
        out["confident_share"] = h["confident_share"]
        if h["kl_to_real"] is not None:
            out["kl_to_real"] = h["kl_to_real"]
    return out
