"""Tests of decentdiff.data.partition: DDM partitions and federated client splits.

Properties are checked against independent computations (contingency tables, nearest-centroid
rules recomputed here, class histograms), never against numbers copied from the code's output.
"""

from __future__ import annotations

import numpy as np
import pytest

from decentdiff.data.partition import (
    Partition,
    client_split,
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


def check_cover(parts: list[np.ndarray], n: int) -> None:
    """Sorted int64 index arrays, pairwise disjoint, whose union is arange(n)."""
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    allidx = np.concatenate(parts)
    assert allidx.size == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def purity(assign: np.ndarray, labels: np.ndarray) -> float:
    """Mean over parts of the majority class's share of the part."""
    table = contingency(assign, labels)
    return float(np.mean(table.max(1) / table.sum(1)))


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


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
    with pytest.raises(ConfigError):
        make_partition("random", k=2, n=10, n_fine=5)
    with pytest.raises(DataError):
        make_partition("random", k=2, features=x, n=3)


# --------------------------------------------------------------------------------------------------
# client splits
# --------------------------------------------------------------------------------------------------

LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))  # 2,000 items
GLOBAL = np.full(10, 0.1)


def hist(labels: np.ndarray, part: np.ndarray) -> np.ndarray:
    return np.bincount(labels[part], minlength=10) / max(part.size, 1)


def mean_kl(parts: list[np.ndarray]) -> float:
    """Mean over clients of KL(client label distribution || global)."""
    kls = []
    for p in parts:
        q = hist(LABELS, p)
        nz = q > 0
        kls.append(float((q[nz] * np.log(q[nz] / GLOBAL[nz])).sum()))
    return float(np.mean(kls))


@pytest.mark.parametrize(
    "spec", ["iid", "dirichlet:0.5", "quantity:0.5", "classes:2", "Dirichlet: 1"]
)
def test_client_split_covers(spec):
    parts = client_split(spec, LABELS, 5, seed=1)
    assert len(parts) == 5
    check_cover(parts, LABELS.size)
    again = client_split(spec, LABELS, 5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_matches_global():
    parts = client_split("iid", LABELS, 7, seed=0)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for p in parts:
        assert np.abs(hist(LABELS, p) - GLOBAL).max() < 0.02


def test_dirichlet_skew_grows_as_alpha_falls():
    kl = {
        a: np.mean([mean_kl(client_split(f"dirichlet:{a}", LABELS, 5, seed=s)) for s in range(4)])
        for a in (100, 0.1)
    }
    top = {
        a: np.mean(
            [
                max(
                    hist(LABELS, p).max() for p in client_split(f"dirichlet:{a}", LABELS, 5, seed=s)
                )
                for s in range(4)
            ]
        )
        for a in (100, 0.1)
    }
    assert kl[100] < 0.05 < 0.5 < kl[0.1], kl
    assert top[0.1] > top[100] + 0.2, top


def test_quantity_skew():
    def size_cv(alpha: float) -> float:
        cvs = []
        for s in range(4):
            sizes = np.array([p.size for p in client_split(f"quantity:{alpha}", LABELS, 5, seed=s)])
            cvs.append(sizes.std() / sizes.mean())
        return float(np.mean(cvs))

    assert size_cv(0.1) > size_cv(100) + 0.3
    # Labels stay IID inside each client: class shares within binomial noise of the global ones.
    for p in client_split("quantity:0.5", LABELS, 5, seed=3):
        if p.size >= 100:
            assert np.abs(hist(LABELS, p) - GLOBAL).max() < 5 * np.sqrt(0.09 / p.size)


@pytest.mark.parametrize(("n", "clients"), [(1, 10), (2, 5), (3, 4), (2, 7), (10, 3)])
def test_classes_per_client(n, clients):
    parts = client_split(f"classes:{n}", LABELS, clients, seed=2)
    check_cover(parts, LABELS.size)
    for p in parts:
        assert np.unique(LABELS[p]).size == n


def test_min_size():
    # Both settings break min_size in about 2/3 of raw draws: the redraw is what makes them hold.
    labels = np.random.default_rng(1).integers(0, 10, 300)
    for spec, clients, low in (("dirichlet:0.1", 6, 20), ("quantity:1", 5, 15)):
        for s in range(3):
            parts = client_split(spec, labels, clients, seed=s, min_size=low)
            assert min(p.size for p in parts) >= low
            check_cover(parts, labels.size)
    with pytest.raises(DataError) as e:
        client_split("iid", labels, 10, min_size=31)  # 10 x 31 > 300
    one_line(e)
    with pytest.raises(DataError) as e:
        client_split("quantity:0.01", labels, 10, min_size=29)  # near-equal sizes: never drawn
    assert "attempts" in one_line(e)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "foo",
        "iid:2",
        "dirichlet",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:abc",
        "quantity:inf",
        "classes:0",
        "classes:1.5",
        "classes:11",
    ],
)
def test_bad_specs(spec):
    with pytest.raises(ConfigError) as e:
        client_split(spec, LABELS, 5)
    msg = one_line(e)
    if spec != "classes:11":
        assert "dirichlet:ALPHA" in msg and "classes:N" in msg


def test_classes_cannot_cover():
    with pytest.raises(ConfigError) as e:
        client_split("classes:1", LABELS, 5)  # 5 clients x 1 class < 10 classes
    assert "classes:2" in one_line(e)
