"""Flower's own partitioners as the oracle of decentdiff's Flower-named client splits.

Runs flwr-datasets (not a decentdiff dependency: ~290 MB with datasets, pyarrow and pandas, see
docs/federated-splits.md) in its own venv, on an in-memory ``datasets.Dataset`` (nothing is
downloaded). Two modes:

``--write``  runs Flower's partitioners on the CASES below and writes what each client got to
             tests/data/flwr_partitions.json, the frozen oracle that ``make test`` compares
             :func:`decentdiff.data.client_split.client_split` with (tests/data/test_client_split.py).
``--check``  (``make check-flwr``) re-runs Flower on the CASES and fails if the frozen file differs;
             then compares decentdiff with live Flower over a sweep of labels, clients, seeds and
             parameters (exact partitions), the failures both sides refuse, and the size
             distribution of Flower's IidPartitioner against decentdiff's ``iid``; prints a
             summary (recorded in docs/federated-splits.md) and exits 1 on any difference.

Run: ``PYTHONPATH=src .venv-flwr/bin/python tests/data/flwr_oracle.py --check`` (the Makefile's
``check-flwr`` target makes .venv-flwr with flwr-datasets==0.6.1).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURE = Path(__file__).with_name("flwr_partitions.json")
FLWR_DATASETS = "0.6.1"


def labels_of(name: str) -> np.ndarray:
    """The label arrays the frozen cases use (also stored in the fixture)."""
    if name == "shuffled10":  # 600 items, 10 classes, unequal counts, random order
        return np.random.default_rng(0).integers(0, 10, 600)
    if name == "sorted5":  # 350 items, 5 classes of unequal size, sorted by label
        return np.repeat(np.arange(5), [50, 80, 120, 30, 70])
    if name == "sparse4":  # 301 items, labels 7, 10, 13, 16 (not 0..K-1), random order
        return np.random.default_rng(1).integers(0, 4, 301) * 3 + 7
    raise KeyError(name)


#: (labels, clients, seed, decentdiff spec, Flower partitioner, its keyword arguments).
CASES: list[tuple[str, int, int, str, str, dict[str, Any]]] = [
    ("shuffled10", 5, 42, "dirichlet:alpha=0.5", "DirichletPartitioner", {"alpha": 0.5}),
    ("shuffled10", 5, 0, "dirichlet:alpha=0.3", "DirichletPartitioner", {"alpha": 0.3}),
    (
        "shuffled10",
        4,
        3,
        "dirichlet:alpha=0.5,min_partition_size=60,self_balancing=true",
        "DirichletPartitioner",
        {"alpha": 0.5, "min_partition_size": 60, "self_balancing": True},
    ),
    # Flower's retries: 5 failed draws then a good one; a good draw at the 11th and last
    # attempt; no good draw in 11 attempts (Flower refuses: "owner" is null).
    (
        "shuffled10",
        5,
        6,
        "dirichlet:alpha=0.5,min_partition_size=80",
        "DirichletPartitioner",
        {"alpha": 0.5, "min_partition_size": 80},
    ),
    (
        "shuffled10",
        5,
        11,
        "dirichlet:alpha=0.5,min_partition_size=95",
        "DirichletPartitioner",
        {"alpha": 0.5, "min_partition_size": 95},
    ),
    (
        "shuffled10",
        5,
        0,
        "dirichlet:alpha=0.5,min_partition_size=95",
        "DirichletPartitioner",
        {"alpha": 0.5, "min_partition_size": 95},
    ),
    ("sorted5", 3, 7, "dirichlet:alpha=1", "DirichletPartitioner", {"alpha": 1.0}),
    (
        "sparse4",
        6,
        11,
        "dirichlet:alpha=0.2,min_partition_size=0,self_balancing=true",
        "DirichletPartitioner",
        {"alpha": 0.2, "min_partition_size": 0, "self_balancing": True},
    ),
    (
        "shuffled10",
        5,
        42,
        "pathological:num_classes_per_partition=2",
        "PathologicalPartitioner",
        {"num_classes_per_partition": 2},
    ),
    (
        "shuffled10",
        7,
        1,
        "pathological:num_classes_per_partition=3,class_assignment_mode=first-deterministic",
        "PathologicalPartitioner",
        {"num_classes_per_partition": 3, "class_assignment_mode": "first-deterministic"},
    ),
    (
        "sorted5",
        4,
        5,
        "pathological:num_classes_per_partition=2,class_assignment_mode=deterministic",
        "PathologicalPartitioner",
        {"num_classes_per_partition": 2, "class_assignment_mode": "deterministic"},
    ),
    (
        "sparse4",
        3,
        2,
        "pathological:num_classes_per_partition=1",
        "PathologicalPartitioner",
        {"num_classes_per_partition": 1},
    ),
    (
        "shuffled10",
        5,
        42,
        "shard:num_shards_per_partition=2",
        "ShardPartitioner",
        {"num_shards_per_partition": 2},
    ),
    (
        "shuffled10",
        4,
        9,
        "shard:shard_size=70,keep_incomplete_shard=true",
        "ShardPartitioner",
        {"shard_size": 70, "keep_incomplete_shard": True},
    ),
    (
        "sorted5",
        3,
        4,
        "shard:num_shards_per_partition=3,shard_size=25",
        "ShardPartitioner",
        {"num_shards_per_partition": 3, "shard_size": 25},
    ),
    ("sparse4", 4, 8, "shard:shard_size=40", "ShardPartitioner", {"shard_size": 40}),
]


def flower_owner(labels: np.ndarray, clients: int, seed: int, name: str, kw: dict) -> np.ndarray:
    """Flower's partitioner on Dataset.from_dict: the client of each item (-1: none)."""
    import datasets
    import flwr_datasets.partitioner as P

    ds = datasets.Dataset.from_dict({"label": labels.tolist(), "idx": list(range(labels.size))})
    extra = {} if name in ("IidPartitioner",) else {"partition_by": "label", "seed": seed}
    part = getattr(P, name)(num_partitions=clients, **extra, **kw)
    part.dataset = ds
    owner = np.full(labels.size, -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pid in range(clients):
            idx = np.asarray(part.load_partition(pid)["idx"], dtype=np.int64)
            assert np.all(owner[idx] == -1), "Flower gave an item to two partitions"
            owner[idx] = pid
    return owner


def decentdiff_owner(labels: np.ndarray, clients: int, seed: int, spec: str) -> np.ndarray:
    from decentdiff.data.client_split import client_split

    owner = np.full(labels.size, -1, dtype=np.int64)
    for pid, part in enumerate(client_split(spec, labels, clients, seed=seed, min_size=0)):
        owner[part] = pid
    return owner


def frozen_cases() -> list[dict[str, Any]]:
    rows = []
    for lab, clients, seed, spec, name, kw in CASES:
        labels = labels_of(lab)
        try:
            owner = flower_owner(labels, clients, seed, name, kw).tolist()
        except ValueError:
            owner = None  # Flower refuses
        rows.append(
            {
                "labels": lab,
                "clients": clients,
                "seed": seed,
                "spec": spec,
                "flower": name,
                "kwargs": kw,
                "owner": owner,
            }
        )
    return rows


def write() -> None:
    import flwr_datasets

    doc = {
        "about": "Flower's partitioners on Dataset.from_dict({'label': labels}): the client of "
        "each item (-1: no client; null: Flower refuses). Written by tests/data/flwr_oracle.py --write.",
        "flwr_datasets": flwr_datasets.__version__,
        "labels": {k: labels_of(k).tolist() for k in ("shuffled10", "sorted5", "sparse4")},
        "cases": frozen_cases(),
    }
    FIXTURE.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({len(doc['cases'])} cases)")


def sweep() -> list[tuple[str, int, int, str, str, dict[str, Any]]]:
    """Live comparisons beyond the frozen cases: labels x clients x seeds x parameters."""
    out = []
    labels = ("shuffled10", "sorted5", "sparse4")
    for seed in range(6):
        for lab in labels:
            for clients in (2, 5, 8):
                for a in (0.1, 0.5, 2.0):
                    for bal in (False, True):
                        spec = f"dirichlet:alpha={a},min_partition_size=0,self_balancing={bal}"
                        kw = {"alpha": a, "min_partition_size": 0, "self_balancing": bal}
                        out.append((lab, clients, seed, spec, "DirichletPartitioner", kw))
                out.append(
                    (
                        lab,
                        clients,
                        seed,
                        "dirichlet:alpha=1.0",
                        "DirichletPartitioner",
                        {"alpha": 1.0},
                    )
                )
                for n in (1, 2, 3):
                    for mode in ("random", "deterministic", "first-deterministic"):
                        spec = f"pathological:num_classes_per_partition={n},class_assignment_mode={mode}"
                        kw = {"num_classes_per_partition": n, "class_assignment_mode": mode}
                        out.append((lab, clients, seed, spec, "PathologicalPartitioner", kw))
                for shard_kw in (
                    {"num_shards_per_partition": 2},
                    {"num_shards_per_partition": 3, "keep_incomplete_shard": True},
                    {"shard_size": 23},
                    {"shard_size": 23, "keep_incomplete_shard": True},
                    {"num_shards_per_partition": 2, "shard_size": 17},
                ):
                    spec = "shard:" + ",".join(f"{k}={v}" for k, v in shard_kw.items())
                    out.append((lab, clients, seed, spec, "ShardPartitioner", shard_kw))
                # Settings that Flower refuses for some of these labels and clients.
                kw = {"alpha": 0.1, "min_partition_size": 300 // clients}
                spec = f"dirichlet:alpha=0.1,min_partition_size={300 // clients}"
                out.append((lab, clients, seed, spec, "DirichletPartitioner", kw))
                spec = "pathological:num_classes_per_partition=5"
                kw = {"num_classes_per_partition": 5}
                out.append((lab, clients, seed, spec, "PathologicalPartitioner", kw))
                kw = {"shard_size": 120}
                out.append((lab, clients, seed, "shard:shard_size=120", "ShardPartitioner", kw))
    return out


def outcome(fn) -> tuple[str, Any]:
    from decentdiff.errors import ConfigError, DataError

    try:
        return "ok", fn()
    except (ValueError, ConfigError, DataError) as e:  # Flower: ValueError; decentdiff: its own
        return "refused", type(e).__name__


def check() -> int:
    import flwr_datasets

    from decentdiff.data.client_split import client_split

    bad = 0
    t0 = time.perf_counter()
    assert flwr_datasets.__version__ == FLWR_DATASETS, flwr_datasets.__version__
    frozen = json.loads(FIXTURE.read_text())
    live = frozen_cases()
    same_fixture = [a["owner"] == b["owner"] for a, b in zip(frozen["cases"], live, strict=True)]
    print(f"frozen oracle: {sum(same_fixture)}/{len(live)} cases equal to live Flower")
    bad += len(live) - sum(same_fixture)

    counts: dict[str, list[int]] = {}
    for lab, clients, seed, spec, name, kw in sweep():
        labels = labels_of(lab)
        f = outcome(lambda: flower_owner(labels, clients, seed, name, kw))  # noqa: B023
        d = outcome(lambda: decentdiff_owner(labels, clients, seed, spec))  # noqa: B023
        if f[0] == d[0] == "ok":
            ok = bool(np.array_equal(f[1], d[1]))
        else:
            ok = f[0] == d[0]  # both refuse
        row = counts.setdefault(name, [0, 0, 0])
        row[0] += 1
        row[1] += ok
        row[2] += f[0] == "refused"
        if not ok:
            bad += 1
            print(f"DIFFERENT: {lab} clients={clients} seed={seed} {spec}: Flower {f[0]}, {d[0]}")
    for name, (n, same, refused) in counts.items():
        print(f"{name}: {same}/{n} equal (both the same partitions, or both refuse: {refused})")

    # iid: Flower's IidPartitioner cuts the data as given into contiguous shards; decentdiff's iid
    # is stratified and random. What they share: the multiset of sizes.
    sizes_equal = 0
    trials = 0
    for lab in ("shuffled10", "sorted5", "sparse4"):
        labels = labels_of(lab)
        for clients in (2, 3, 7, 10):
            f = flower_owner(labels, clients, 0, "IidPartitioner", {})
            parts = client_split("iid", labels, clients, seed=0)
            trials += 1
            sizes_equal += sorted(np.bincount(f, minlength=clients).tolist()) == sorted(
                p.size for p in parts
            )
    print(f"iid: sorted client sizes equal to IidPartitioner's in {sizes_equal}/{trials} cases")
    bad += trials - sizes_equal
    print(
        f"flwr-datasets {flwr_datasets.__version__}: {bad} differences ({time.perf_counter() - t0:.0f} s)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    elif sys.argv[1:] == ["--check"]:
        sys.exit(check())
    else:
        sys.exit("usage: flwr_oracle.py --write | --check")
