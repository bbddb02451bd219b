"""Flower's partitioners (flwr-datasets 0.6.1) as client splits: their parameters, written
``name:key=value,...`` under Flower's names and defaults, and their draws, re-derived on numpy's
generator so that the same labels, clients and seed give the very partitions Flower gives
(docs/federated-splits.md). The kinds themselves are entries of
:data:`decentdiff.data.client_split.CLIENT_SPLITS`, which this module's parsers and draws fill.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from decentdiff.errors import ConfigError, DataError

#: Flower's limit on Dirichlet draws (DirichletPartitioner: 10 retries after the first draw).
FLWR_DIRICHLET_ATTEMPTS = 11


# --------------------------------------------------------------------------------------------------
# Parameters, written name:key=value,... (their names, their defaults)
# --------------------------------------------------------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of a ``name:key=value,...`` split: Flower's name, reader and default.

    ``read(text)`` returns the value or raises ValueError with the reason (``must be ...``);
    ``shown`` is how the form lists it (``key=VALUE`` or ``key=default``).
    """

    name: str
    read: Callable[[str], Any]
    default: Any = _REQUIRED
    shown: str = ""


def _finite_positive(text: str) -> float:
    value = float(text)  # ValueError for text that is no number
    if not (math.isfinite(value) and value > 0):
        raise ValueError
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def read(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError
        return value

    read.low = low  # type: ignore[attr-defined]  # for the message (_must)
    return read


def _boolean(text: str) -> bool:
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError


def _choice(*names: str) -> Callable[[str], str]:
    def read(text: str) -> str:
        if text not in names:
            raise ValueError
        return text

    read.names = names  # type: ignore[attr-defined]  # for the message (_must)
    return read


#: What a bad value of each reader is told (the reason after the parameter's name).
_MUST = {
    _finite_positive: "must be a finite number > 0",
    _boolean: "must be true or false",
}


def _must(p: Param) -> str:
    if p.read in _MUST:
        return _MUST[p.read]
    low = getattr(p.read, "low", None)
    if low is not None:
        return f"must be an integer >= {low}"
    return "must be one of " + ", ".join(getattr(p.read, "names", ()))


def _keyed(
    *params: Param, one_of: tuple[str, ...] = ()
) -> Callable[[str, str | None, Callable[[str], ConfigError]], dict[str, Any]]:
    """The parser of a ``name:key=value,...`` split with these parameters (Flower's names).

    Every parameter not given takes its default; ``one_of`` names optional parameters of which
    at least one must be given.
    """
    table = {p.name: p for p in params}
    names = ", ".join(table)

    def parse(kind: str, arg: str | None, bad: Callable[[str], ConfigError]) -> dict[str, Any]:
        if not arg:
            raise bad(f"{kind} takes key=value parameters ({names})")
        values: dict[str, Any] = {}
        for item in arg.split(","):
            key, eq, text = (x.strip() for x in item.partition("="))
            if not eq or not key:
                raise bad(f"{item.strip()!r} is not key=value; {kind}'s parameters: {names}")
            p = table.get(key)
            if p is None:
                raise bad(f"{kind} has no parameter {key!r}; its parameters: {names}")
            if key in values:
                raise bad(f"{key} is given twice")
            try:
                values[key] = p.read(text)
            except ValueError:
                raise bad(f"{key} {_must(p)}, got {text!r}") from None
        for p in params:
            if p.name not in values:
                if p.default is _REQUIRED:
                    raise bad(f"{kind} needs {p.name}=...")
                values[p.name] = p.default
        if one_of and all(values[k] is None for k in one_of):
            raise bad(f"{kind} needs {' or '.join(k + '=...' for k in one_of)}")
        return values

    return parse


def _keyed_form(kind: str, params: tuple[Param, ...], what: str) -> str:
    shown = ",".join(p.shown or f"{p.name}={p.default}".lower() for p in params)
    return f"{kind}:{shown} ({what})"


#: The parameters of DirichletPartitioner, PathologicalPartitioner and ShardPartitioner, with
#: Flower's defaults.
_FLWR_DIRICHLET = (
    Param("alpha", _finite_positive, shown="alpha=A"),
    Param("min_partition_size", _int_at_least(0), 10),
    Param("self_balancing", _boolean, False),
)
_PATHOLOGICAL = (
    Param("num_classes_per_partition", _int_at_least(1), shown="num_classes_per_partition=N"),
    Param(
        "class_assignment_mode", _choice("random", "deterministic", "first-deterministic"), "random"
    ),
)
_SHARD = (
    Param("num_shards_per_partition", _int_at_least(1), None, "num_shards_per_partition=N"),
    Param("shard_size", _int_at_least(1), None, "shard_size=S"),
    Param("keep_incomplete_shard", _boolean, False),
)


def _check_pathological(spec: str, arg: Any, n_classes: int, n_clients: int) -> None:
    count = int(arg["num_classes_per_partition"])
    if count > n_classes:
        raise ConfigError(
            f"client split {spec!r}: the data has only {n_classes} classes; use "
            f"num_classes_per_partition <= {n_classes}"
        )


# --------------------------------------------------------------------------------------------------
# Draws
# --------------------------------------------------------------------------------------------------

# Flower's partitioners (flwr-datasets 0.6.1), re-derived on the same generator calls in the same
# order: np.random.default_rng(seed) as Flower seeds it, labels in the data's order, classes in
# increasing order (Flower's sorted(dataset.unique(...))). Flower shuffles each partition at the end;
# that permutes only the order of a client's items, which decentdiff returns sorted.


def _draw_flwr_dirichlet(
    arg: dict[str, Any], by_class: list[np.ndarray], n_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, None]:
    # DirichletPartitioner: per class, proportions over partitions ~ Dirichlet(alpha); the class's
    # items, in the data's order, cut at floor(cumsum(proportions) * n_k). With self_balancing, a
    # partition already holding more than N / C items gets no more (its proportion set to 0).
    owner = np.empty(sum(ix.size for ix in by_class), dtype=np.int64)
    alpha = np.full(n_clients, float(arg["alpha"]))
    average = owner.size / n_clients
    held = np.zeros(n_clients, dtype=np.int64)
    for ix in by_class:
        share = rng.dirichlet(alpha)
        if arg["self_balancing"]:
            share = np.where(held > average, 0.0, share)
            share = share / sum(share.tolist())  # Flower sums in Python, in partition order
        cuts = (np.cumsum(share) * ix.size).astype(int)[:-1]
        for c, piece in enumerate(np.split(ix, cuts)):
            owner[piece] = c
            held[c] += piece.size
    return owner, None


def _draw_pathological(
    arg: dict[str, Any], by_class: list[np.ndarray], n_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, None]:
    # PathologicalPartitioner: each partition picks num_classes_per_partition classes; the items
    # of a class (data order) are cut by np.array_split into as many pieces as partitions picked
    # it, handed out in partition order. Items of a class nobody picked go to no client.
    n_classes = len(by_class)
    count = int(arg["num_classes_per_partition"])
    mode = arg["class_assignment_mode"]
    picked: list[list[int]] = []
    for pid in range(n_clients):
        if mode == "random":
            cs = rng.choice(n_classes, size=count, replace=False).tolist()
        elif mode == "deterministic":
            cs = [(pid + i) % n_classes for i in range(count)]
        else:  # first-deterministic: class pid mod K, then random distinct ones
            cs = [pid % n_classes]
            while len(cs) < count:
                c = int(rng.choice(n_classes, size=1)[0])
                if c not in cs:
                    cs.append(c)
        picked.append(cs)
    owner = np.full(sum(ix.size for ix in by_class), -1, dtype=np.int64)
    for c, ix in enumerate(by_class):
        holders = [pid for pid in range(n_clients) if c in picked[pid]]
        if len(holders) > ix.size:
            raise DataError(
                f"client split pathological: class {c} (in label order) has {ix.size} items but "
                f"{len(holders)} clients picked it; use fewer clients, a smaller "
                "num_classes_per_partition or class_assignment_mode=deterministic"
            )
        for pid, piece in zip(holders, np.array_split(ix, max(len(holders), 1)), strict=False):
            owner[piece] = pid
    return owner, None


def _shard_layout(arg: dict[str, Any], n: int, n_clients: int) -> tuple[int, int, int, np.ndarray]:
    """ShardPartitioner's arithmetic: (shard size, shards used, shards usable, shards per client).

    Raises DataError where Flower raises (or would divide by zero) for these sizes.
    """
    per, size, keep = (
        arg["num_shards_per_partition"],
        arg["shard_size"],
        arg["keep_incomplete_shard"],
    )

    def impossible(why: str) -> DataError:
        return DataError(f"client split shard: {why}; use fewer clients or smaller shards")

    if per is not None and size is not None and size * per * n_clients > n:
        raise impossible(f"{n_clients} clients x {per} shards x {size} items exceed the {n} items")
    if per is not None:
        used = n_clients * per
        counts = np.full(n_clients, per)
        if size is None:
            size = int(n / used)
            if size == 0:
                raise impossible(f"{used} shards of {n} items would be empty")
            usable = math.ceil(n / size) if keep else math.floor(n / size)
        else:
            usable = math.floor(n / size)
    else:
        used = math.ceil(n / size) if keep else math.floor(n / size)
        usable = used
        counts = np.full(n_clients, used // n_clients)
        counts[: used - n_clients * (used // n_clients)] += 1
    if usable < n_clients:
        raise impossible(f"{usable} shards of {size} items cannot go to {n_clients} clients")
    return size, used, usable, counts


def _draw_shard(
    arg: dict[str, Any], by_class: list[np.ndarray], n_clients: int, rng: np.random.Generator
) -> tuple[np.ndarray, None]:
    # ShardPartitioner: sort the items by label (stably, as Arrow's sort), cut the sorted list
    # into shards of shard_size, give each partition its count of shards of a random permutation
    # of the usable shards. Shards left over, and an incomplete last shard unless
    # keep_incomplete_shard, go to no client.
    by_label = np.concatenate(by_class)  # the stable sort by label: class by class, data order
    n = by_label.size
    size, used, usable, counts = _shard_layout(arg, n, n_clients)
    shards = rng.permutation(usable)[:used]
    owner = np.full(n, -1, dtype=np.int64)
    for pid, mine in enumerate(np.split(shards, np.cumsum(counts, dtype=int))[:-1]):
        for k in mine:
            owner[by_label[int(k) * size : min((int(k) + 1) * size, n)]] = pid
    return owner, None
