"""Tests of decentdiff.data.partition: the DDM partitions (kmeans, random, label).

Properties are checked against independent computations (contingency tables, nearest-centroid
rules recomputed here, class histograms), never against numbers copied from the code's output.
"""

from __future__ import annotations

import numpy as np
import pytest

from _checks import check_cover, one_line
from decentdiff.data.partition import (
    Partition,
    kmeans_partition,
    label_partition,
    make_partition,
    random_partition,
)
from decentdiff.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def blobs(seed: int = 0, n_per: int = 100, dim: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """4 well-separated Gaussian blobs around orthogonal directions; returns (x, truth)."""
    rng = np.random.default_rng(seed)
    centers = 5.0 * np.eye(dim)[:4]
    truth = np.repeat(np.arange(4), n_per)
    x = centers[truth] + 0.3 * rng.standard_normal((truth.size, dim))
    perm = rng.permutation(truth.size)
    return x[perm].astype(np.float32), truth[perm]


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if a and b group the items identically, up to renaming the groups."""
    table = contingency(a, b)
    nonzero = table > 0
    return table.shape[0] == table.shape[1] and bool(
        (nonzero.sum(0) == 1).all() and (nonzero.sum(1) == 1).all()
    )


def purity(assign: np.ndarray, labels: np.ndarray) -> float:
    """Mean over parts of the majority class's share of the part."""
    table = contingency(assign, labels)
    return float(np.mean(table.max(1) / table.sum(1)))


# --------------------------------------------------------------------------------------------------
# kmeans
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_recovers_blobs(seed):
    x, truth = blobs(seed)
    p = kmeans_partition(x, 4, seed=seed)
    table = contingency(p.assignments, truth)
    # A permutation matrix times 100: each part is exactly one blob.
    assert sorted(table.max(1).tolist()) == [100] * 4
    assert same_partition(p.assignments, truth)
    assert p.sizes().sum() == x.shape[0]
    assert p.assignments.dtype == np.int64 and p.centroids.dtype == np.float32
    assert p.centroids.shape == (4, 10)
    check_cover(p.parts(), x.shape[0])


def test_kmeans_fine_to_coarse_consistency():
    x, _ = blobs(3)
    p = kmeans_partition(x, 4, n_fine=40, seed=0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert p.fine_centroids.shape == (40, 10)
    # Each item sits in its nearest fine centroid (recomputed here, in the normalised space) ...
    d_fine = ((xn[:, None, :] - p.fine_centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(p.fine_assignments, d_fine.argmin(1))
    # ... all items of a fine cluster share one part, which is the fine centroid's coarse cluster.
    for j in np.unique(p.fine_assignments):
        members = p.assignments[p.fine_assignments == j]
        assert np.unique(members).size == 1
        d_coarse = ((p.centroids - p.fine_centroids[j]) ** 2).sum(-1)
        assert members[0] == d_coarse.argmin()
    np.testing.assert_array_equal(p.assignments, p.fine_to_coarse[p.fine_assignments])
    # New items are placed by the same rule.
    np.testing.assert_array_equal(p.assign(x), p.assignments)


def test_kmeans_deterministic():
    x, _ = blobs(4)
    a = kmeans_partition(x, 3, seed=7)
    b = kmeans_partition(x, 3, seed=7)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.fine_assignments, b.fine_assignments)
    np.testing.assert_array_equal(a.fine_centroids, b.fine_centroids)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_kmeans_uses_directions_only():
    x, truth = blobs(5)
    base = kmeans_partition(x, 4, seed=0)
    scale = np.random.default_rng(1).uniform(0.05, 20.0, size=(x.shape[0], 1)).astype(np.float32)
    scaled = kmeans_partition(x * scale, 4, seed=0)
    # Parts are numbered canonically, so "same assignment" holds exactly, not up to relabeling.
    np.testing.assert_array_equal(scaled.assignments, base.assignments)
    assert same_partition(scaled.assignments, truth)


def test_default_n_fine():
    x, _ = blobs(0)
    assert kmeans_partition(x, 4).params["n_fine"] == 100  # min(1024, 400 // 4)
    assert kmeans_partition(x[:12], 4).params["n_fine"] == 4  # 12 // 4 = 3, raised to K


@pytest.fixture(scope="module")
def mnist():
    from decentdiff.data.features import featurize
    from decentdiff.data.sources import load_source

    ds = load_source("mnist5k")
    idx = np.random.default_rng(0).permutation(len(ds))[:2500]
    return featurize(ds.images[idx], "pca", seed=0), ds.labels[idx]


def test_kmeans_mnist_beats_random(mnist):
    feats, labels = mnist
    p = kmeans_partition(feats, 4, seed=0)
    parts = p.parts()
    assert len(parts) == 4 and all(part.size > 0 for part in parts)
    check_cover(parts, labels.size)
    km = purity(p.assignments, labels)
    rnd = np.mean(
        [purity(random_partition(labels.size, 4, seed=s).assignments, labels) for s in range(3)]
    )
    # Random parts mirror the global mix (majority share ~0.1); feature clusters concentrate classes.
    assert km > rnd + 0.15, (km, rnd)


def test_partition_npz_round_trip(tmp_path):
    x, _ = blobs(0)
    p = kmeans_partition(x, 4, seed=0)
    np.savez(tmp_path / "p.npz", **p.to_arrays())
    with np.load(tmp_path / "p.npz") as f:
        q = Partition.from_arrays(f)
    assert q.method == "kmeans" and q.params == p.params
    for name in (
        "assignments",
        "centroids",
        "fine_centroids",
        "fine_assignments",
        "fine_to_coarse",
    ):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
    np.testing.assert_array_equal(q.assign(x), p.assignments)
    r = random_partition(10, 3)
    s = Partition.from_arrays(r.to_arrays())
    assert s.centroids is None and s.fine_to_coarse is None
    np.testing.assert_array_equal(s.assignments, r.assignments)


# --------------------------------------------------------------------------------------------------
# random and label
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(10, 3), (7, 7), (1000, 8), (5, 1)])
def test_random_balanced(n, k):
    p = random_partition(n, k, seed=2)
    sizes = p.sizes()
    assert sizes.size == k and sizes.sum() == n and sizes.max() - sizes.min() <= 1
    check_cover(p.parts(), n)
    np.testing.assert_array_equal(p.assignments, random_partition(n, k, seed=2).assignments)
    if n > k > 1:
        assert not np.array_equal(p.assignments, random_partition(n, k, seed=3).assignments)


def test_label_whole_classes():
    rng = np.random.default_rng(0)
    labels = rng.permutation(
        np.repeat(np.array([3, 8, 1, 4, 9, 0, 2]), [50, 40, 30, 30, 20, 10, 5])
    )
    p = label_partition(labels, 3, seed=0)
    for c in np.unique(labels):
        assert np.unique(p.assignments[labels == c]).size == 1  # each class in exactly one part
    check_cover(p.parts(), labels.size)
    assert (p.sizes() > 0).all()
    # Greedy largest-first balance: no part exceeds the ideal share by more than the largest class.
    assert p.sizes().max() <= labels.size / 3 + 50


def test_label_equal_classes_spread_evenly():
    labels = np.repeat(np.arange(10), 20)
    p = label_partition(labels, 5)
    assert p.sizes().tolist() == [40] * 5


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def test_errors():
    x, labels = blobs(0)
    with pytest.raises(ConfigError) as e:
        kmeans_partition(x, 0)
    assert "K" in one_line(e)
    with pytest.raises(ConfigError) as e:
        kmeans_partition(x[:5], 6)
    assert "5" in one_line(e)
    with pytest.raises(ConfigError) as e:
        random_partition(5, 6)
    one_line(e)
    with pytest.raises(ConfigError) as e:
        random_partition(5, 0)
    one_line(e)
    with pytest.raises(ConfigError) as e:
        kmeans_partition(x, 8, n_fine=4)
    assert "fine" in one_line(e)
    with pytest.raises(ConfigError) as e:
        label_partition(labels, 5)  # 4 classes
    assert "4 classes" in one_line(e)
    with pytest.raises(ConfigError) as e:
        label_partition(None, 2)
    assert "random" in one_line(e)
    with pytest.raises(DataError) as e:
        kmeans_partition(np.full((10, 3), np.nan), 2)
    one_line(e)


def test_empty_coarse_cluster():
    # 40 items with only 2 distinct feature directions cannot fill 3 coarse clusters.
    x = np.repeat(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), 20, axis=0)
    with pytest.raises(DataError) as e:
        kmeans_partition(x, 3, seed=0)
    msg = one_line(e)
    assert "empty" in msg and "--by random" in msg


def test_make_partition_dispatch():
    x, labels = blobs(0)
    p = make_partition("KMeans", k=4, features=x, seed=1)
    np.testing.assert_array_equal(p.assignments, kmeans_partition(x, 4, seed=1).assignments)
    assert make_partition("random", k=3, labels=labels).sizes().sum() == labels.size
    assert make_partition("label", k=2, labels=labels).method == "label"
    with pytest.raises(ConfigError) as e:
        make_partition("spectral", k=2, features=x)
    msg = one_line(e)
    assert all(m in msg for m in ("kmeans", "random", "label"))
    with pytest.raises(ConfigError):
        make_partition("kmeans", k=2)
    with pytest.raises(ConfigError) as e:
        make_partition("random", k=2, n=10, n_fine=5)
    assert one_line(e) == "n_fine applies only to --by kmeans, not --by random; drop it"
    with pytest.raises(DataError):
        make_partition("random", k=2, features=x, n=3)


# --------------------------------------------------------------------------------------------------
# classes: k-means over whole classes' mean features
# --------------------------------------------------------------------------------------------------


def class_groups(seed: int = 0, groups: int = 3, per_group: int = 5, items: int = 12, dim: int = 8):
    """Classes whose items scatter around one of ``groups`` orthogonal directions: (features of
    every item, labels, the group of each class). The groups are the right answer by construction."""
    rng = np.random.default_rng(seed)
    n_cls = groups * per_group
    group_of = rng.permutation(np.repeat(np.arange(groups), per_group))
    labels = rng.permutation(np.repeat(np.arange(n_cls), items))
    x = 4.0 * np.eye(dim)[group_of[labels]] + 0.8 * rng.standard_normal((labels.size, dim))
    return x.astype(np.float32), labels, group_of


@pytest.mark.parametrize("seed", [0, 1])
def test_classes_partition_groups_whole_classes_by_content(seed):
    from decentdiff.data.partition import class_kmeans_partition, class_means

    x, y, group_of = class_groups(seed)
    p = class_kmeans_partition(class_means(x, y, group_of.size), y, 3, seed=seed)
    check_cover(p.parts(), y.size)
    # every class lies in one part, and the parts are the planted groups up to their numbering
    table = contingency(p.assignments, y)
    assert ((table > 0).sum(0) == 1).all()
    part_of_class = table.argmax(0)
    groups = contingency(part_of_class, group_of)
    assert ((groups > 0).sum(0) == 1).all() and ((groups > 0).sum(1) == 1).all()
    # the recorded members are the classes of each part
    for k, members in enumerate(p.params["classes"]):
        assert sorted(members) == sorted(np.flatnonzero(part_of_class == k).tolist())


def test_class_means_and_sample_against_direct_computation():
    from decentdiff.data.partition import class_means, class_sample

    x, y, _ = class_groups(2)
    means = class_means(x, y, y.max() + 2)  # one id more than present: a NaN row
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for c in range(y.max() + 1):
        np.testing.assert_allclose(means[c], unit[y == c].mean(0), rtol=1e-5, atol=1e-6)
    assert np.isnan(means[-1]).all()
    pick = class_sample(y, 5, seed=3)
    assert (np.bincount(y[pick]) == 5).all() and np.unique(pick).size == pick.size
    assert np.array_equal(pick, class_sample(y, 5, seed=3))
    assert not np.array_equal(pick, class_sample(y, 5, seed=4))
    small = class_sample(y, 50)  # more than a class has: all of it
    assert np.array_equal(small, np.arange(y.size))


def test_classes_partition_errors():
    from decentdiff.data.partition import class_kmeans_partition, class_means

    x, y, group_of = class_groups(0)
    means = class_means(x, y, group_of.size)
    with pytest.raises(ConfigError) as e:
        class_kmeans_partition(means, y, group_of.size + 1)
    assert "--parts" in one_line(e)
    holes = means.copy()
    holes[3] = np.nan
    with pytest.raises(DataError) as e:
        class_kmeans_partition(holes, y, 2)
    assert "finite" in one_line(e)
    with pytest.raises(ConfigError):
        make_partition("classes", k=2, labels=y)
    # per-class features need not have one row per item
    p = make_partition("classes", k=3, features=means, labels=y, seed=0)
    assert p.method == "classes" and p.n == y.size
