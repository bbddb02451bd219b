"""Tests of decentdiff.data.client_split: the federated client splits.

Properties are checked against independent computations (class histograms, KL divergences,
coverage of the items), never against numbers copied from the code's output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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
        "(label skew), dirichlet:alpha=A,min_partition_size=10,self_balancing=false (Flower's "
        "DirichletPartitioner), quantity:ALPHA (size skew), classes:N (N classes per client), "
        "pathological:num_classes_per_partition=N,class_assignment_mode=random (Flower's "
        "PathologicalPartitioner), shard:num_shards_per_partition=N,shard_size=S,"
        "keep_incomplete_shard=false (Flower's ShardPartitioner; one of the first two); "
        "ALPHA > 0 e.g. dirichlet:0.5, N an integer >= 1"
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


# --------------------------------------------------------------------------------------------------
# Flower's partitioners under their names (dirichlet:alpha=..., pathological:..., shard:...)
# --------------------------------------------------------------------------------------------------

#: Flower's own partitions (flwr-datasets 0.6.1 on Dataset.from_dict({"label": labels})), frozen by
#: tests/data/flwr_oracle.py --write and re-checked against live Flower by `make check-flwr`.
FLWR = json.loads((Path(__file__).with_name("flwr_partitions.json")).read_text())


def owners(parts: list[np.ndarray], n: int) -> np.ndarray:
    owner = np.full(n, -1, dtype=np.int64)
    for i, p in enumerate(parts):
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
        assert np.all(owner[p] == -1)  # disjoint
        owner[p] = i
    return owner


@pytest.mark.parametrize("case", FLWR["cases"], ids=lambda c: f"{c['spec']}-seed{c['seed']}")
def test_flower_forms_give_flowers_partitions(case):
    """The very items Flower's partitioner gives each client, on the same labels and seed."""
    labels = np.asarray(FLWR["labels"][case["labels"]])
    if case["owner"] is None:  # Flower refused: no good Dirichlet draw in its 11 attempts
        with pytest.raises(DataError) as e:
            client_split(case["spec"], labels, case["clients"], seed=case["seed"], min_size=0)
        assert "11 attempts" in one_line(e) and "min_partition_size" in one_line(e)
        return
    parts = client_split(case["spec"], labels, case["clients"], seed=case["seed"], min_size=0)
    np.testing.assert_array_equal(owners(parts, labels.size), case["owner"])
    # The default minimum client size (2) changes nothing where Flower's own minimum is >= 2.
    floor = parse_client_split(case["spec"])[1].get("min_partition_size", 0)
    if floor >= 2:
        again = client_split(case["spec"], labels, case["clients"], seed=case["seed"])
        np.testing.assert_array_equal(owners(again, labels.size), case["owner"])


def test_the_frozen_oracle_covers_what_matters():
    """Retries, refusals, items given to no client and every form are in the frozen cases."""
    specs = " ".join(c["spec"] for c in FLWR["cases"])
    for key in ("self_balancing=true", "first-deterministic", "=deterministic", "keep_incomplete"):
        assert key in specs
    assert any(c["owner"] is None for c in FLWR["cases"])
    assert any(-1 in c["owner"] for c in FLWR["cases"] if c["owner"] and "shard" in c["spec"])
    assert FLWR["flwr_datasets"] == "0.6.1"


def test_flower_dirichlet_is_not_decentdiffs():
    """dirichlet:0.5 (decentdiff's draw, kept for existing runs) and dirichlet:alpha=0.5 differ."""
    a = client_split("dirichlet:0.5", LABELS, 5, seed=3)
    b = client_split("dirichlet:alpha=0.5", LABELS, 5, seed=3)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    check_cover(b, LABELS.size)


def test_flower_dirichlet_min_partition_size_and_self_balancing():
    for s in range(3):
        parts = client_split("dirichlet:alpha=0.3,min_partition_size=150", LABELS, 5, seed=s)
        assert min(p.size for p in parts) >= 150
    # Self-balancing stops feeding a client once it holds more than N / C items: no client can
    # exceed N / C by more than one class's worth (200 items here).
    for s in range(5):
        parts = client_split("dirichlet:alpha=0.1,self_balancing=true", LABELS, 5, seed=s)
        assert max(p.size for p in parts) <= 2000 / 5 + 200


@pytest.mark.parametrize("mode", ["random", "deterministic", "first-deterministic"])
def test_pathological_classes_per_client(mode):
    spec = f"pathological:num_classes_per_partition=3,class_assignment_mode={mode}"
    parts = client_split(spec, LABELS, 6, seed=4)
    for p in parts:
        assert np.unique(LABELS[p]).size == 3
    held = [set(np.unique(LABELS[p]).tolist()) for p in parts]
    if mode == "deterministic":  # client i: classes i, i+1, i+2 (mod 10)
        assert held == [{i % 10, (i + 1) % 10, (i + 2) % 10} for i in range(6)]
    if mode == "first-deterministic":
        assert all(i in h for i, h in enumerate(held))
    # A class nobody picked goes to no client; a picked class is split among its holders whole.
    given = np.concatenate(parts)
    assert set(np.unique(LABELS[given]).tolist()) == set().union(*held)
    for c in set().union(*held):
        assert np.count_nonzero(LABELS[given] == c) == 200


def test_shard_sizes():
    parts = client_split("shard:num_shards_per_partition=3,shard_size=50", LABELS, 4, seed=0)
    assert [p.size for p in parts] == [150] * 4
    for p in parts:  # a shard of the label-sorted items spans at most 2 classes
        assert np.unique(LABELS[p]).size <= 6
    # shard_size alone: floor(2000 / 300) = 6 shards, dealt 2, 2, 1, 1 (the first clients get
    # the extra ones); the incomplete last shard of 200 items is kept on request.
    parts = client_split("shard:shard_size=300", LABELS, 4, seed=0)
    assert [p.size for p in parts] == [600, 600, 300, 300]
    # With it: ceil(2000 / 300) = 7 shards, dealt 2, 2, 2, 1; one of them holds 200 items.
    parts = client_split("shard:shard_size=300,keep_incomplete_shard=true", LABELS, 4, seed=0)
    check_cover(parts, LABELS.size)
    assert [p.size in (500, 600) for p in parts[:3]] == [True] * 3 and parts[3].size in (200, 300)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("dirichlet:alpha=-1", "alpha must be a finite number > 0, got '-1'"),
        ("dirichlet:alpha=nan", "alpha must be a finite number > 0"),
        ("dirichlet:alpha=0.5,beta=2", "dirichlet has no parameter 'beta'"),
        ("dirichlet:min_partition_size=3", "dirichlet needs alpha=..."),
        ("dirichlet:alpha=1,alpha=2", "alpha is given twice"),
        ("dirichlet:0.5,min_partition_size=3", "'0.5' is not key=value"),
        ("dirichlet:alpha=1,self_balancing=maybe", "self_balancing must be true or false"),
        ("dirichlet:alpha=1,min_partition_size=-1", "min_partition_size must be an integer >= 0"),
        ("pathological", "pathological takes key=value parameters"),
        ("pathological:num_classes_per_partition=0", "must be an integer >= 1"),
        ("pathological:num_classes_per_partition=2,class_assignment_mode=cyclic", "one of random"),
        ("shard:keep_incomplete_shard=true", "needs num_shards_per_partition=... or shard_size"),
        ("shard:shard_size=1.5", "shard_size must be an integer >= 1"),
    ],
)
def test_bad_flower_parameters(spec, why):
    with pytest.raises(ConfigError) as e:
        parse_client_split(spec)
    msg = one_line(e)
    assert why in msg and msg.startswith(f"invalid client split {spec!r}: ")


@pytest.mark.parametrize(
    ("spec", "clients", "err", "why"),
    [
        ("pathological:num_classes_per_partition=11", 5, ConfigError, "only 10 classes"),
        ("shard:shard_size=600", 5, DataError, "3 shards of 600 items cannot go to 5 clients"),
        ("shard:num_shards_per_partition=500", 5, DataError, "would be empty"),
        ("dirichlet:alpha=1,min_partition_size=500", 5, DataError, "at least 500 each"),
    ],
)
def test_flower_forms_that_cannot_fit_the_data(spec, clients, err, why):
    with pytest.raises(err) as e:
        client_split(spec, LABELS, clients)
    assert why in one_line(e)


def test_the_specs_the_docs_quote_parse():
    """Every split spec README.md, docs/federated.md and docs/federated-splits.md quote is valid
    (optional parts too)."""
    root = Path(__file__).resolve().parents[2]
    pages = ("README.md", "docs/federated.md", "docs/federated-splits.md")
    text = "".join((root / page).read_text() for page in pages)
    quoted = re.findall(r"`((?:dirichlet|pathological|shard|quantity|classes):[^`\s]*)`", text)
    keyed = [q for q in quoted if "=" in q]
    assert len(keyed) >= 6, quoted
    for q in quoted:
        if "..." in q or (q.endswith(("ALPHA", "α", "N", "n")) and "=" not in q):
            continue  # a placeholder (dirichlet:ALPHA, classes:n, dirichlet:alpha=...)
        parse_client_split(q.replace("[", "").replace("]", ""))
