"""Partitions for Decentralized Diffusion Models: pure, seeded splits of the data among experts.

Pure functions of their inputs and a seed (same inputs, same seed → same output; no global random
state is read or written). The training set is cut into K disjoint parts, one expert per part
(PAPERS.md §1); :data:`PARTITIONERS` is the registry of the ``--by`` methods:

=========  =======================================================================================
``kmeans`` the paper's two-level clustering of encoder features: L2-normalise, k-means into many
           fine centroids, k-means over the fine centroids into K coarse clusters; an item joins the
           coarse cluster of its fine centroid (McAllister et al., CVPR 2025, arXiv 2501.05450)
``random`` a uniformly random partition into K parts whose sizes differ by at most one
``label``  whole classes to parts, balanced by item count (greedy, largest class first)
``classes`` whole classes grouped by content: k-means over each class's mean feature (computed
           from a sample of every class, :data:`CLASS_SAMPLE` images each); an item joins its
           class's cluster. For many-class data where embedding every image costs too much, and
           for class-conditional ensembles, whose ``mixture`` routing then knows each class's
           expert exactly
=========  =======================================================================================

Each returns a :class:`~decentdiff.data.partition_record.Partition` (the record RUN/partition.npz
holds, importable from here too). The client splits of federated learning are
:mod:`decentdiff.data.client_split`.

Every failure caused by the input raises :class:`~decentdiff.errors.ConfigError` (a bad option) or
:class:`~decentdiff.errors.DataError` (data that cannot be split that way) with a one-line message
naming the problem and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from decentdiff.data.checks import check_labels, int_arg
from decentdiff.data.partition_record import Partition, _check_features, _normalise
from decentdiff.errors import ConfigError, DataError

__all__ = [
    "PARTITIONERS",
    "Partition",
    "PartitionMethod",
    "class_kmeans_partition",
    "kmeans_partition",
    "label_partition",
    "make_partition",
    "random_partition",
]

#: Up to this many items k-means runs on one thread: the work is well under a second, and OpenMP
#: barriers on CPUs shared with other jobs made the 2-thread run 10x slower than 1 thread (measured).
SINGLE_THREAD_UP_TO = 20_000

#: Above this many items the fine k-means stage uses MiniBatchKMeans (full Lloyd iterations over
#: N x 1024 distances stop being "a few seconds" on a laptop CPU). Tied to SINGLE_THREAD_UP_TO:
#: with a gap between the two (50,000 until stop 27), 40,000 items ran full Lloyd on two threads
#: and took 90 s against 37 s for 80,000 items by MiniBatchKMeans (BENCHMARKS.md). Partitions of
#: 20,001-50,000 items made before that change are not reproduced by re-partitioning.
MINIBATCH_ABOVE = SINGLE_THREAD_UP_TO

#: Images per class ``--by classes`` embeds to find each class's mean feature (fewer when a class
#: has fewer). 16 Inception embeddings per class cost ~3,200 images for Tiny ImageNet's 200 classes
#: instead of 100,000.
CLASS_SAMPLE = 16

#: Default number of fine centroids is min(FINE_MAX, N // FINE_DIVISOR), at least K (paper: 1024).
FINE_MAX = 1024
FINE_DIVISOR = 4


def _relabel_by_first_item(assign: np.ndarray, k: int) -> np.ndarray:
    """Permutation p with p[old id] = new id, ordering parts by their smallest item index.

    k-means numbers its clusters arbitrarily; a canonical order makes equal partitions have equal
    assignments (part 0 always holds item 0), whatever the solver's internal order.
    """
    first = np.full(k, assign.shape[0], dtype=np.int64)
    np.minimum.at(first, assign, np.arange(assign.shape[0]))
    order = np.argsort(first, kind="stable")  # order[new] = old
    perm = np.empty(k, dtype=np.int64)
    perm[order] = np.arange(k)
    return perm


# --------------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------------


def kmeans_partition(
    features: np.ndarray,
    k: int,
    *,
    n_fine: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> Partition:
    """Two-level k-means partition of the DDM paper (PAPERS.md §1, arXiv 2501.05450).

    Features are L2-normalised (so only their direction matters, as for the paper's DINOv2
    embeddings), clustered into F fine centroids, and the F centroids are clustered into K coarse
    clusters (unweighted, as in the paper: a coarse cluster groups fine concepts, not data mass; no
    size constraint). Each item joins the coarse cluster of its fine centroid. Parts are numbered by
    their smallest item index.

    Args:
        features: (N, D) numeric features, one row per item (see :mod:`decentdiff.data.features`).
        k: number of parts K, 1 <= K <= F.
        n_fine: number of fine centroids F; default min(1024, N // 4), at least K. At most N.
        seed: seeds both k-means stages.
        threads: OpenMP / BLAS threads for k-means; None: 1 up to 20,000 items, else the
            library default.

    Returns:
        A Partition with centroids (K, D), fine_centroids (F, D) and fine_assignments (N,).

    Raises:
        ConfigError: K < 1, K > N, F > N, or K > F.
        DataError: bad features, or a coarse cluster ends up empty (duplicate features).
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    x = _normalise(_check_features(features, "kmeans partition"))
    n = x.shape[0]
    k = int_arg(k, "the number of parts K", 1, "use --parts 1 or more")
    if k > n:
        raise ConfigError(f"cannot make K={k} parts from {n} items; use --parts {n} or fewer")
    if n_fine is None:
        f = max(min(FINE_MAX, n // FINE_DIVISOR), k)
    else:
        f = int_arg(n_fine, "the number of fine centroids", 1, "use e.g. 1024")
        if f > n:
            raise ConfigError(f"cannot make {f} fine centroids from {n} items; use at most {n}")
        if k > f:
            raise ConfigError(
                f"K={k} parts need at least K fine centroids, got n_fine={f}; raise n_fine or lower K"
            )
    minibatch = n > MINIBATCH_ABOVE
    if threads is None:
        threads = 1 if n <= SINGLE_THREAD_UP_TO else None
    with warnings.catch_warnings(), threadpool_limits(limits=threads):
        # Duplicate features make sklearn warn about fewer distinct clusters than requested; the
        # only consequence that matters (an empty coarse cluster) is checked below with a clear
        # message.
        warnings.simplefilter("ignore", ConvergenceWarning)
        if minibatch:
            fine = MiniBatchKMeans(
                n_clusters=f, n_init=1, batch_size=4096, random_state=seed, max_iter=100
            ).fit(x)
        else:
            # n_init=1: with hundreds of fine clusters, restarts buy little and cost linearly.
            fine = KMeans(n_clusters=f, n_init=1, max_iter=100, random_state=seed).fit(x)
        fine_centroids = fine.cluster_centers_.astype(np.float32)
        fine_assign = np.asarray(fine.labels_, dtype=np.int64)
        # The coarse stage runs on at most 1024 points: several restarts are cheap.
        coarse = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(fine_centroids)
    fine_to_coarse = np.asarray(coarse.labels_, dtype=np.int64)
    assign = fine_to_coarse[fine_assign]
    sizes = np.bincount(assign, minlength=k)
    if (sizes == 0).any():
        empty = int(np.flatnonzero(sizes == 0)[0])
        raise DataError(
            f"kmeans partition: coarse cluster {empty} of K={k} is empty (the features have too "
            f"few distinct values); use a smaller --parts or --by random"
        )
    perm = _relabel_by_first_item(assign, k)
    inverse = np.argsort(perm)  # inverse[new] = old
    return Partition(
        assignments=perm[assign],
        centroids=coarse.cluster_centers_[inverse].astype(np.float32),
        fine_centroids=fine_centroids,
        fine_assignments=fine_assign,
        method="kmeans",
        params={
            "k": k,
            "seed": int(seed),
            "n_fine": f,
            "normalise": "l2",
            "fine_solver": "minibatch" if minibatch else "lloyd",
        },
        fine_to_coarse=perm[fine_to_coarse],
    )


def random_partition(n: int, k: int, *, seed: int = 0) -> Partition:
    """Uniformly random partition into K parts whose sizes differ by at most one.

    The DDM paper's baseline: feature clusters beat random partitions clearly (PAPERS.md §1).

    Args:
        n: number of items N >= 1.
        k: number of parts, 1 <= K <= N.
        seed: seeds ``np.random.default_rng``.

    Returns:
        A Partition without centroids.

    Raises:
        ConfigError: N < 1, K < 1 or K > N.
    """
    n = int_arg(n, "the number of items", 1, "use a non-empty data set")
    k = int_arg(k, "the number of parts K", 1, "use --parts 1 or more")
    if k > n:
        raise ConfigError(f"cannot make K={k} parts from {n} items; use --parts {n} or fewer")
    rng = np.random.default_rng(seed)
    assign = np.empty(n, dtype=np.int64)
    # Dealing a random order round-robin gives sizes ceil(N/K) or floor(N/K).
    assign[rng.permutation(n)] = np.arange(n) % k
    return Partition(assign, None, None, None, "random", {"k": k, "seed": int(seed)})


def label_partition(labels: np.ndarray, k: int, *, seed: int = 0) -> Partition:
    """Whole classes to parts, balanced by item count.

    Greedy longest-processing-time rule: classes in decreasing size (ties in a seeded random
    order) each go to the currently smallest part (ties to the lowest id). Every class lies
    entirely in one part.

    Args:
        labels: integer (N,) class labels (any values).
        k: number of parts, 1 <= K <= number of distinct classes.
        seed: breaks ties between classes of equal size.

    Returns:
        A Partition without centroids; ``params["classes"]`` lists the classes of each part.

    Raises:
        ConfigError: no labels, K < 1, or K > number of classes.
        DataError: labels not an integer array (N,).
    """
    y = check_labels(labels, "label partition", "use --by kmeans or --by random")
    k = int_arg(k, "the number of parts K", 1, "use --parts 1 or more")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if k > classes.size:
        raise ConfigError(
            f"label partition: K={k} parts but only {classes.size} classes; use --parts "
            f"{classes.size} or fewer, or --by kmeans"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(classes.size)
    order = shuffled[np.argsort(-counts[shuffled], kind="stable")]
    loads = np.zeros(k, dtype=np.int64)
    class_part = np.empty(classes.size, dtype=np.int64)
    for c in order:
        p = int(np.argmin(loads))  # argmin returns the first minimum: lowest id on ties
        class_part[c] = p
        loads[p] += counts[c]
    members = [sorted(classes[class_part == p].tolist()) for p in range(k)]
    return Partition(
        assignments=class_part[inverse.reshape(-1)],
        centroids=None,
        fine_centroids=None,
        fine_assignments=None,
        method="label",
        params={"k": k, "seed": int(seed), "classes": members},
    )


def class_sample(labels: np.ndarray, per_class: int = CLASS_SAMPLE, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``per_class`` items of every class, drawn without replacement with
    ``np.random.default_rng(seed)``: the items ``--by classes`` embeds."""
    y = check_labels(labels, "class sample", "use --by kmeans or --by random")
    per_class = int_arg(per_class, "images per class", 1, "use 1 or more")
    order = np.random.default_rng(seed).permutation(y.size)
    by_class = order[np.argsort(y[order], kind="stable")]  # shuffled within each class
    first = np.searchsorted(y[by_class], y[by_class], side="left")
    rank = np.arange(y.size) - first
    return np.sort(by_class[rank < per_class])


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (C, D): the mean of each class's L2-normalised features; NaN rows for classes with
    no item."""
    x = _normalise(_check_features(features, "class means"))
    y = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, x.shape[1]), dtype=np.float64)
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype(np.float32)


def class_kmeans_partition(
    class_features: np.ndarray, labels: np.ndarray, k: int, *, seed: int = 0
) -> Partition:
    """Whole classes grouped by content: k-means into K clusters over the L2-normalised mean
    features of the classes (:func:`class_means`), then every item joins its class's cluster.

    Cheap where embedding every image is not (one sample per class suffices), and, for a
    class-conditional ensemble, makes p(expert | class) one-hot: the ``mixture`` routing then
    sends each class to the one expert that was trained on it. Parts are numbered by their
    smallest item index.

    Args:
        class_features: (C, D) one row per class id 0..C-1 (NaN rows for classes without items
            are allowed when no item has that label).
        labels: integer (N,) class ids of the items.
        k: number of parts, 1 <= K <= number of classes present.
        seed: seeds k-means.

    Returns:
        A Partition with centroids (K, D); ``params["classes"]`` lists the classes of each part.

    Raises:
        ConfigError: K < 1 or K > the number of classes.
        DataError: bad labels, a class without a finite feature row, or an empty cluster.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    y = check_labels(labels, "classes partition", "use --by kmeans or --by random")
    k = int_arg(k, "the number of parts K", 1, "use --parts 1 or more")
    feats = np.asarray(class_features, dtype=np.float64)
    present = np.unique(y)
    if feats.ndim != 2 or present.min() < 0 or present.max() >= feats.shape[0]:
        raise DataError(
            f"classes partition: class features of shape {feats.shape} do not cover class ids "
            f"{int(present.min())}..{int(present.max())}; give one row per class id"
        )
    if k > present.size:
        raise ConfigError(
            f"classes partition: K={k} parts but only {present.size} classes; use --parts "
            f"{present.size} or fewer, or --by kmeans"
        )
    x = feats[present]
    if not np.isfinite(x).all():
        raise DataError("classes partition: a class present in the data has no finite feature row")
    x = _normalise(x.astype(np.float32))
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    class_part = np.full(feats.shape[0], -1, dtype=np.int64)
    class_part[present] = km.labels_
    assign = class_part[y]
    sizes = np.bincount(assign, minlength=k)
    if (sizes == 0).any():
        raise DataError(
            f"classes partition: cluster {int(np.flatnonzero(sizes == 0)[0])} of K={k} is empty "
            "(identical class features); use a smaller --parts or --by label"
        )
    perm = _relabel_by_first_item(assign, k)
    inverse = np.argsort(perm)
    members = [sorted(present[perm[km.labels_] == p].tolist()) for p in range(k)]
    return Partition(
        assignments=perm[assign],
        centroids=km.cluster_centers_[inverse].astype(np.float32),
        fine_centroids=None,
        fine_assignments=None,
        method="classes",
        params={"k": k, "seed": int(seed), "classes": members},
    )


def _make_kmeans(
    k: int, features: Any, labels: Any, n: Any, seed: int, n_fine: int | None
) -> Partition:
    if features is None:
        raise ConfigError("--by kmeans needs features; pass --features pca (or classifier)")
    return kmeans_partition(features, k, n_fine=n_fine, seed=seed)


def _make_random(
    k: int, features: Any, labels: Any, n: Any, seed: int, n_fine: int | None
) -> Partition:
    if n is None:
        for source in (features, labels):
            if source is not None:
                n = len(source)
                break
        else:
            raise ConfigError("--by random needs the number of items n (or features or labels)")
    return random_partition(n, k, seed=seed)


def _make_label(
    k: int, features: Any, labels: Any, n: Any, seed: int, n_fine: int | None
) -> Partition:
    return label_partition(labels, k, seed=seed)


def _make_classes(
    k: int, features: Any, labels: Any, n: Any, seed: int, n_fine: int | None
) -> Partition:
    if features is None or labels is None:
        raise ConfigError(
            "--by classes needs labelled data and features; pass --features inception"
        )
    return class_kmeans_partition(features, labels, k, seed=seed)


@dataclass(frozen=True)
class PartitionMethod:
    """One ``--by`` method: the entry of :data:`PARTITIONERS` under its name.

    Attributes:
        make: fn(k, features, labels, n, seed, n_fine) -> Partition.
        needs_features: the method clusters features, so the images are featurised first
            (``decentdiff partition --features``); the others never see features.
        takes_n_fine: the method accepts ``n_fine`` (fine centroids); the others refuse it.
        per_class: the features are one row per class (the mean of a sample of each class,
            :func:`class_sample`), not one per item.
    """

    make: Callable[..., Partition]
    needs_features: bool = False
    takes_n_fine: bool = False
    per_class: bool = False


#: Registry of partition methods: name -> PartitionMethod.
PARTITIONERS: dict[str, PartitionMethod] = {
    "kmeans": PartitionMethod(_make_kmeans, needs_features=True, takes_n_fine=True),
    "random": PartitionMethod(_make_random),
    "label": PartitionMethod(_make_label),
    "classes": PartitionMethod(_make_classes, needs_features=True, per_class=True),
}


def make_partition(
    method: str,
    *,
    k: int,
    features: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    n: int | None = None,
    seed: int = 0,
    n_fine: int | None = None,
) -> Partition:
    """Partitions data by a named method (the ``--by`` option of ``decentdiff partition``).

    Args:
        method: "kmeans" (needs features), "random" (needs n, or features / labels to count
            items), "label" (needs labels) or "classes" (labels, and features with one row per
            class id: :func:`class_means`).
        k: number of parts.
        features: (N, D) features for kmeans.
        labels: (N,) integer labels for label.
        n: number of items for random.
        seed: random seed.
        n_fine: fine centroids for kmeans (default: see :func:`kmeans_partition`).

    Returns:
        The Partition; when both are given, features / labels must have N rows.

    Raises:
        ConfigError: unknown method, a missing input, or n_fine with a method other than kmeans.
    """
    name = str(method).strip().lower()
    entry = PARTITIONERS.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown partition method {method!r}; valid methods: {', '.join(PARTITIONERS)}"
        )
    if n_fine is not None and not entry.takes_n_fine:
        takers = ", ".join(f"--by {m}" for m, e in PARTITIONERS.items() if e.takes_n_fine)
        raise ConfigError(f"n_fine applies only to {takers}, not --by {name}; drop it")
    per_item = () if entry.per_class else (features,)  # per-class features: one row per class
    sizes = {len(a) for a in (*per_item, labels) if a is not None}
    if n is not None:
        sizes.add(n)
    if len(sizes) > 1:
        raise DataError(
            f"partition inputs disagree on the number of items ({sorted(sizes)}); pass features, "
            "labels and n of the same data"
        )
    return entry.make(k, features, labels, n, seed, n_fine)
