"""Tests of decentdiff.data.client_split: the federated client splits.

Properties are checked against independent computations (class histograms, KL divergences,
coverage of the items), never against numbers copied from the code's output.
"""

from __future__ import annotations

import numpy as np
import pytest

from _checks import check_cover, one_line
from decentdiff.data import client_split as CS
from decentdiff.data.client_split import client_split, parse_client_split
from decentdiff.errors import ConfigError, DataError

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


def test_valid_forms_are_listed_word_for_word():
    """The forms every client split error lists (tests and docs quote them)."""
    with pytest.raises(ConfigError) as e:
        parse_client_split("foo")
    assert one_line(e) == (
        "invalid client split 'foo': unknown kind 'foo'; valid forms: iid, dirichlet:ALPHA "
        "(label skew), quantity:ALPHA (size skew), classes:N (N classes per client); ALPHA > 0 "
        "e.g. dirichlet:0.5, N an integer >= 1"
    )


def test_a_new_kind_is_one_registry_entry(monkeypatch):
    """A split registered in CLIENT_SPLITS is parsed, listed and drawn with no other change."""

    def no_argument(kind, arg, bad):
        if arg is not None:
            raise bad(f"{kind} takes no argument")

    def draw(arg, by_class, n_clients, rng):
        n = sum(ix.size for ix in by_class)
        return (np.arange(n) * n_clients // n).astype(np.int64), None  # contiguous blocks

    monkeypatch.setitem(CS.CLIENT_SPLITS, "blocks", CS.SplitKind("blocks", no_argument, draw))
    assert parse_client_split("Blocks") == ("blocks", None)
    parts = client_split("blocks", LABELS, 4)
    assert [(p[0], p[-1]) for p in parts] == [(0, 499), (500, 999), (1000, 1499), (1500, 1999)]
    with pytest.raises(ConfigError, match="blocks takes no argument"):
        parse_client_split("blocks:1")
