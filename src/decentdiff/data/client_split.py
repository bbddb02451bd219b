"""Client splits for federated learning: which items each federated client holds.

:func:`client_split` over labels (PAPERS.md §3, §4): ``iid``, ``dirichlet:α`` (label skew),
``quantity:α`` (quantity skew), ``classes:n`` (n classes per client), and Flower's partitioners
(flwr-datasets 0.6.1) under their names and parameters, written ``name:key=value,...``:
``dirichlet:alpha=0.5,min_partition_size=10,self_balancing=true`` (DirichletPartitioner),
``pathological:num_classes_per_partition=2`` (PathologicalPartitioner) and
``shard:num_shards_per_partition=2`` (ShardPartitioner). Those re-derive Flower's algorithms on
numpy's generator: the same labels, clients and seed give the very partitions Flower's partitioner
gives on ``datasets.Dataset.from_dict({"label": labels})`` with that seed (tests/data's frozen
oracle, re-checked against flwr-datasets itself by ``make check-flwr``), without the ~290 MB
flwr-datasets brings along (docs/federated-splits.md). A pure function of its inputs and a seed
(same inputs, same seed → same output; no global random state is read or written).

Each kind of split is one entry of :data:`CLIENT_SPLITS` (how its spec is written, how its argument
is parsed and checked against the data, how a split is drawn): adding a split is adding an entry.
Flower's parameters and draws are :mod:`decentdiff.data.flwr_splits`. The partitions of the data
among DDM experts are :mod:`decentdiff.data.partition`.

Every failure caused by the input raises :class:`~decentdiff.errors.ConfigError` (a bad option) or
:class:`~decentdiff.errors.DataError` (data that cannot be split that way) with a one-line message
naming the problem and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from decentdiff.data.checks import check_labels, int_arg
from decentdiff.data.flwr_splits import (
    _FLWR_DIRICHLET,
    _PATHOLOGICAL,
    _SHARD,
    FLWR_DIRICHLET_ATTEMPTS,
    _check_pathological,
    _draw_flwr_dirichlet,
    _draw_pathological,
    _draw_shard,
    _keyed,
    _keyed_form,
)
from decentdiff.errors import ConfigError, DataError

__all__ = [
    "CLIENT_SPLITS",
    "CLIENT_SPLIT_FORMS",
    "SplitKind",
    "client_split",
    "parse_client_split",
]

#: Redraws allowed before a client split that leaves a client too small gives up. A draw costs
#: O(N); quantity:0.1 over 10 clients with min_size 2 succeeds in ~0.3% of draws (measured), so
#: 1000 attempts find one 95% of the time.
MAX_SPLIT_ATTEMPTS = 1000

#: What the placeholders of the split forms mean (the tail of :data:`CLIENT_SPLIT_FORMS`).
_PLACEHOLDERS = "ALPHA > 0 e.g. dirichlet:0.5, N an integer >= 1"

#: The argument of a split: None (iid), a float α > 0 (dirichlet, quantity), an int N (classes), or
#: a dict of Flower's parameter names to values (the ``name:key=value,...`` forms).
Argument = float | int | dict[str, Any] | None


@dataclass(frozen=True)
class SplitKind:
    """One kind of client split: the entry of :data:`CLIENT_SPLITS` under its name.

    Attributes:
        form: how the spec is written, with a few words on what it does; listed in every client
            split error message (:data:`CLIENT_SPLIT_FORMS`).
        parse: fn(kind, arg, bad) -> the argument. ``arg`` is the stripped text after ``:``, None
            without a ``:``; ``bad(why)`` builds the ConfigError to raise for a bad argument.
        draw: fn(argument, by_class, n_clients, rng) -> (client of each item, int64 (N,), -1 for
            an item no client gets; classes each client must hold, or None). ``by_class[c]`` lists
            the items of class c (increasing, classes in increasing order of their label). One
            draw; :func:`client_split` redraws from the same stream when a client ends up too
            small, up to ``attempts`` draws in all.
        check: optional fn(spec, argument, n_classes, n_clients) raising ConfigError when no draw
            can fit the data (checked once, before drawing).
        attempts: draws allowed before giving up.
        floor: optional fn(argument) -> a minimum client size the argument itself asks for (Flower's
            min_partition_size); a draw must give every client max(min_size, floor) items.
        fix: the end of the message when no draw gave every client enough items.
        keyed: the kind that parses and draws the argument when it is written ``key=value,...``
            (``dirichlet:0.5`` is decentdiff's draw, ``dirichlet:alpha=0.5`` Flower's).
    """

    form: str
    parse: Callable[[str, str | None, Callable[[str], ConfigError]], Argument]
    draw: Callable[
        [Any, list[np.ndarray], int, np.random.Generator],
        tuple[np.ndarray, list[np.ndarray] | None],
    ]
    check: Callable[[str, Any, int, int], None] | None = None
    attempts: int = MAX_SPLIT_ATTEMPTS
    floor: Callable[[Any], int] | None = None
    fix: str = "use fewer clients, a larger ALPHA or a smaller min_size"
    keyed: SplitKind | None = None


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


def _no_argument(kind: str, arg: str | None, bad: Callable[[str], ConfigError]) -> None:
    if arg is not None:
        raise bad(f"{kind} takes no argument")
    return None


def _alpha(kind: str, arg: str | None, bad: Callable[[str], ConfigError]) -> float:
    try:
        alpha = float(arg or "")  # no ":" reads as an empty argument
    except ValueError:
        raise bad(f"{kind} needs a number ALPHA > 0") from None
    if not (math.isfinite(alpha) and alpha > 0):
        raise bad(f"ALPHA must be a finite number > 0, got {arg!r}")
    return alpha


def _class_count(kind: str, arg: str | None, bad: Callable[[str], ConfigError]) -> int:
    try:
        count = int(arg or "")
    except ValueError:
        raise bad("classes needs an integer N >= 1") from None
    if count < 1:
        raise bad(f"N must be >= 1, got {count}")
    return count


def _check_class_count(spec: str, arg: Any, n_classes: int, n_clients: int) -> None:
    count = int(arg)
    if count > n_classes:
        raise ConfigError(
            f"client split {spec!r}: the data has only {n_classes} classes; use classes:N "
            f"with N <= {n_classes}"
        )
    if count * n_clients < n_classes:
        raise ConfigError(
            f"client split {spec!r}: {n_clients} clients x {count} classes cannot cover all "
            f"{n_classes} classes; use classes:{math.ceil(n_classes / n_clients)} or more "
            "clients"
        )


# --------------------------------------------------------------------------------------------------
# Draws
# --------------------------------------------------------------------------------------------------


def _owners(by_class: list[np.ndarray]) -> np.ndarray:
    """An uninitialised int64 (N,) array for the client of each item."""
    return np.empty(sum(ix.size for ix in by_class), dtype=np.int64)


def _split_by_proportions(
    idx: np.ndarray, proportions: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffles idx and cuts it into len(proportions) pieces of about proportions * len(idx)."""
    idx = rng.permutation(idx)
    cuts = np.floor(np.cumsum(proportions)[:-1] * idx.size + 0.5).astype(np.int64)
    return np.split(idx, np.clip(cuts, 0, idx.size))


def _draw_iid(
    arg: None, by_class: list[np.ndarray], n_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, None]:
    # Stratified dealing: every client gets floor or ceil of its share of every class, so class
    # proportions match the global ones as closely as integers allow.
    owner = _owners(by_class)
    order = np.concatenate([rng.permutation(ix) for ix in by_class])
    owner[order] = (np.arange(owner.size) + rng.integers(n_clients)) % n_clients
    return owner, None


def _draw_quantity(
    arg: float, by_class: list[np.ndarray], n_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, None]:
    # de Goede et al. §3: client sizes ~ Dirichlet(α); items drawn IID (labels follow).
    owner = _owners(by_class)
    sizes = rng.dirichlet(np.full(n_clients, float(arg)))
    for c, piece in enumerate(_split_by_proportions(np.arange(owner.size), sizes, rng)):
        owner[piece] = c
    return owner, None


def _draw_dirichlet(
    arg: float, by_class: list[np.ndarray], n_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, None]:
    # Label skew (Hsu et al. 2019): per class, proportions over clients ~ Dirichlet(α).
    owner = _owners(by_class)
    for ix in by_class:
        share = rng.dirichlet(np.full(n_clients, float(arg)))
        for c, piece in enumerate(_split_by_proportions(ix, share, rng)):
            owner[piece] = c
    return owner, None


def _draw_classes(
    arg: int, by_class: list[np.ndarray], n_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    # classes:N — client i holds the N consecutive classes starting at i*N of a random cyclic order
    # of the classes: distinct per client (N <= #classes), every class covered (clients*N >=
    # #classes), and every class shared by floor or ceil of clients*N/#classes clients.
    owner = _owners(by_class)
    n_classes = len(by_class)
    count = int(arg)
    cyc = rng.permutation(n_classes)
    held = [cyc[(i * count + np.arange(count)) % n_classes] for i in range(n_clients)]
    holders: list[list[int]] = [[] for _ in range(n_classes)]
    for i, cs in enumerate(held):
        for c in cs:
            holders[int(c)].append(i)
    for c, ix in enumerate(by_class):
        # Items of a shared class are split evenly (sizes differ by <= 1) among its holders.
        pieces = np.array_split(rng.permutation(ix), len(holders[c]))
        for i, piece in zip(rng.permutation(holders[c]), pieces, strict=True):
            owner[piece] = i
    return owner, held


# --------------------------------------------------------------------------------------------------
# The registry and the public functions
# --------------------------------------------------------------------------------------------------


#: Registry of client split kinds: name -> SplitKind. Listing order is the order of the forms in
#: :data:`CLIENT_SPLIT_FORMS` (a kind's ``keyed`` form right after it).
CLIENT_SPLITS: dict[str, SplitKind] = {
    "iid": SplitKind("iid", _no_argument, _draw_iid),
    "dirichlet": SplitKind(
        "dirichlet:ALPHA (label skew)",
        _alpha,
        _draw_dirichlet,
        keyed=SplitKind(
            _keyed_form("dirichlet", _FLWR_DIRICHLET, "Flower's DirichletPartitioner"),
            _keyed(*_FLWR_DIRICHLET),
            _draw_flwr_dirichlet,
            attempts=FLWR_DIRICHLET_ATTEMPTS,
            floor=lambda arg: int(arg["min_partition_size"]),
            fix="use fewer clients, a larger alpha or a smaller min_partition_size",
        ),
    ),
    "quantity": SplitKind("quantity:ALPHA (size skew)", _alpha, _draw_quantity),
    "classes": SplitKind(
        "classes:N (N classes per client)", _class_count, _draw_classes, _check_class_count
    ),
    "pathological": SplitKind(
        _keyed_form("pathological", _PATHOLOGICAL, "Flower's PathologicalPartitioner"),
        _keyed(*_PATHOLOGICAL),
        _draw_pathological,
        _check_pathological,
        attempts=1,
        fix="use fewer clients or a larger num_classes_per_partition",
    ),
    "shard": SplitKind(
        _keyed_form("shard", _SHARD, "Flower's ShardPartitioner; one of the first two"),
        _keyed(*_SHARD, one_of=("num_shards_per_partition", "shard_size")),
        _draw_shard,
        attempts=1,
        fix="use fewer clients or more shards per client",
    ),
}


def _forms() -> str:
    forms = []
    for split in CLIENT_SPLITS.values():
        forms.append(split.form)
        if split.keyed is not None:
            forms.append(split.keyed.form)
    return ", ".join(forms)


#: The valid client split specs, as listed in every client split error message.
CLIENT_SPLIT_FORMS = _forms() + "; " + _PLACEHOLDERS


def _kind(kind: str, arg: Argument) -> SplitKind:
    """The entry that draws ``kind`` with this parsed argument (its keyed form for a dict)."""
    split = CLIENT_SPLITS[kind]
    if isinstance(arg, dict) and split.keyed is not None:
        return split.keyed
    return split


def parse_client_split(spec: str) -> tuple[str, Argument]:
    """Parses a client split spec.

    Args:
        spec: ``iid``, ``dirichlet:ALPHA``, ``quantity:ALPHA``, ``classes:N``, or one of Flower's
            partitioners as ``name:key=value,...`` (``dirichlet:alpha=0.5,min_partition_size=10``,
            ``pathological:num_classes_per_partition=2``, ``shard:num_shards_per_partition=2``).

    Returns:
        (kind, argument): argument is None for iid, a float α > 0 for dirichlet / quantity, an int
        N >= 1 for classes, a dict of every parameter (defaults filled in) for a key=value form.

    Raises:
        ConfigError: unknown form or bad argument; the message lists the valid forms.
    """

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"invalid client split {spec!r}: {why}; valid forms: {CLIENT_SPLIT_FORMS}"
        )

    if not isinstance(spec, str):
        raise bad("not a string")
    kind, sep, arg = spec.strip().lower().partition(":")
    kind, arg = kind.strip(), arg.strip()
    split = CLIENT_SPLITS.get(kind)
    if split is None:
        raise bad(f"unknown kind {kind!r}")
    if split.keyed is not None and "=" in arg:
        split = split.keyed
    return kind, split.parse(kind, arg if sep else None, bad)


def client_split(
    spec: str, labels: np.ndarray, n_clients: int, *, seed: int = 0, min_size: int = 2
) -> list[np.ndarray]:
    """Splits items among federated clients (PAPERS.md §3; de Goede et al., arXiv 2406.12575).

    ==========================  ================================================================
    ``iid``                     stratified random: every client's class proportions match the
                                global ones (up to rounding), sizes differ by at most one
    ``dirichlet:α``             label skew: for each class, its items are split over clients in
                                proportions ~ Dirichlet(α); small α → each client sees few classes
    ``quantity:α``              quantity skew: client sizes ~ Dirichlet(α), labels IID within a
                                client
    ``classes:n``               each client holds exactly n distinct classes (every class held by
                                someone); a class shared by several clients is split evenly
    ``dirichlet:alpha=α,...``   Flower's DirichletPartitioner (``min_partition_size=10``,
                                ``self_balancing=false``)
    ``pathological:...``        Flower's PathologicalPartitioner (``num_classes_per_partition=n``,
                                ``class_assignment_mode=random``)
    ``shard:...``               Flower's ShardPartitioner (``num_shards_per_partition=n`` and/or
                                ``shard_size=s``, ``keep_incomplete_shard=false``)
    ==========================  ================================================================

    Draws that leave a client with fewer than ``min_size`` items (or, for ``classes:n``, without an
    item of one of its classes) are redrawn from the same seeded stream, up to 1000 times. Flower's
    forms keep Flower's rules: ``dirichlet:alpha=...`` redraws up to 11 times, while a client has
    fewer than max(min_partition_size, min_size) items; ``pathological`` and ``shard`` draw once.
    They give the partitions Flower's partitioner gives on ``Dataset.from_dict({"label": labels})``
    seeded with ``seed``, including the items Flower gives to no client (a class no client picked,
    shards left over).

    Args:
        spec: the split, see above.
        labels: integer (N,) class labels (any values). For unlabeled data, pass zeros: iid and
            quantity work unchanged.
        n_clients: number of clients C >= 1.
        seed: seeds ``np.random.default_rng``; the same inputs and seed give the same split.
        min_size: minimum number of items per client (>= 0).

    Returns:
        C sorted int64 index arrays, disjoint; their union is arange(N) except for the items a
        ``pathological`` or ``shard`` split gives to no client.

    Raises:
        ConfigError: bad spec, C < 1, min_size < 0, no labels, or ``classes:n`` with n larger than
            the number of classes or too few clients to cover every class.
        DataError: C * min_size > N, no valid draw in the attempts allowed, or data that Flower's
            partitioner cannot split that way.
    """
    kind, arg = parse_client_split(spec)
    split = _kind(kind, arg)
    y = check_labels(labels, f"client split {spec!r}", "pass labels (zeros for unlabeled data)")
    n_clients = int_arg(n_clients, "the number of clients", 1, "use --clients 1 or more")
    min_size = int_arg(min_size, "min_size", 0, "use 0 or more")
    n = y.size
    if n_clients * min_size > n:
        raise DataError(
            f"{n} items cannot give {n_clients} clients at least {min_size} each; use fewer "
            "clients or a smaller min_size"
        )
    need = max(min_size, split.floor(arg)) if split.floor is not None else min_size
    if n_clients * need > n:
        raise DataError(
            f"client split {spec!r}: {n} items cannot give {n_clients} clients at least {need} "
            f"each; {split.fix}"
        )
    classes, inverse = np.unique(y, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_classes = classes.size
    if split.check is not None:
        split.check(spec, arg, n_classes, n_clients)
    by_class = [np.flatnonzero(inverse == c) for c in range(n_classes)]
    rng = np.random.default_rng(seed)
    held = None
    for _ in range(split.attempts):
        owner, held = split.draw(arg, by_class, n_clients, rng)
        dropped = int(np.count_nonzero(owner < 0))
        sizes = np.bincount(owner[owner >= 0], minlength=n_clients)
        if sizes.min() < need:
            continue
        if held is not None and any(
            np.unique(inverse[owner == i]).size != len(cs) for i, cs in enumerate(held)
        ):
            continue
        # Stable: indices stay sorted per client; the items of no client (-1) come first.
        order = np.argsort(owner, kind="stable")[dropped:]
        return np.split(order.astype(np.int64), np.cumsum(sizes)[:-1])
    what = f"at least {need} items" + (f" and all of its {arg} classes" if held else "")
    draws = f"no draw in {split.attempts} attempts" if split.attempts > 1 else "the draw"
    raise DataError(
        f"client split {spec!r}: {draws} gave every one of {n_clients} clients {what}; {split.fix}"
    )
