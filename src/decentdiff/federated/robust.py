"""Byzantine-robust aggregation rules and a fault injection to test them; pure NumPy, no Flower.

``--aggregate`` replaces the weighted average of the validated updates by one of

==================  ==================================================================  ==========
rule                the group's new update (Δ_i = θ_i − θ_global, n clients)            tolerance
==================  ==================================================================  ==========
``fedavg``          Σ w_i Δ_i / Σ w_i (w_i: examples; :func:`.aggregate.aggregate`)     none
``median``          coordinate-wise median of the Δ_i (Yin et al., arXiv 1803.01498)    n ≥ 3
``trimmed-mean:B``  per coordinate, drop the k = ⌊B·n⌋ largest and k smallest, average  2k < n, k ≥ 1
                    the rest (Yin et al., arXiv 1803.01498)
``krum:F``          the Δ_i with the least Krum score: the sum of its squared distances  n > 2F + 2
                    to its n − F − 2 nearest others (Blanchard et al., NeurIPS 2017)
``multikrum:F,M``   the mean of the M updates of least Krum score (Blanchard et al.)    n > 2F + 2,
                                                                                        M ≤ n − F
``bulyan:F``        θ = n − 2F updates picked by Krum one at a time (each removed after  n ≥ 4F + 3
                    it is picked), then per coordinate the mean of the θ − 2F picked
                    values nearest their median (El Mhamdi et al., arXiv 1802.07927)
==================  ==================================================================  ==========

The robust rules weigh every client alike: the number of examples a client claims is one more
thing an attacker controls. They are applied per group (encoder, bottleneck, decoder; see
:mod:`.parts`), on the clients that reported it: a client reports a whole group or none of it,
so every rule sees the same clients for all the group's tensors, and Krum's distances are
between whole groups. Every rule is translation-equivariant, so applying it to the updates or to
the values is the same; it is computed on Δ in float64.

:class:`Attack` is the client-side fault injection (``--attack``) that studies and tests use to
measure them: chosen clients send a scaled, sign-flipped or pure-noise update instead of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import aggregate as A
from . import parts as P

__all__ = [
    "AGGREGATE_FORMS",
    "ATTACK_FORMS",
    "Attack",
    "Rule",
    "aggregate_updates",
    "apply_rule",
    "bulyan",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "multikrum",
    "parse_attack",
    "parse_rule",
    "trimmed_mean",
]

#: The valid ``--aggregate`` specs, as every error message lists them.
AGGREGATE_FORMS = (
    "fedavg, median, trimmed-mean:B, krum:F, multikrum:F,M, bulyan:F "
    "(0 < B < 0.5; F, M integers ≥ 1)"
)
#: The valid ``--attack`` specs.
ATTACK_FORMS = (
    "scale:K@C, signflip[:K]@C, noise:SIGMA@C (K, SIGMA > 0; C client ids, e.g. 3 or 1,3)"
)

_ARITY = {"fedavg": 0, "median": 0, "trimmed-mean": 1, "krum": 1, "multikrum": 2, "bulyan": 1}


def _num(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Rule:
    """A parsed aggregation rule (``str(rule)`` is its canonical spec).

    Attributes:
        kind: fedavg, median, trimmed-mean, krum, multikrum or bulyan.
        beta: the fraction trimmed per side (trimmed-mean).
        f: the attackers assumed (krum, multikrum, bulyan).
        m: the updates averaged (multikrum; krum is multikrum with m = 1).
    """

    kind: str
    beta: float = 0.0
    f: int = 0
    m: int = 1

    def __str__(self) -> str:
        if self.kind == "trimmed-mean":
            return f"trimmed-mean:{_num(self.beta)}"
        if self.kind in ("krum", "bulyan"):
            return f"{self.kind}:{self.f}"
        if self.kind == "multikrum":
            return f"multikrum:{self.f},{self.m}"
        return self.kind

    @property
    def robust(self) -> bool:
        return self.kind != "fedavg"

    def needs(self) -> str:
        """The rule's condition on n, the updates it combines, as the error message says it."""
        f = self.f
        return {
            "fedavg": "n ≥ 1",
            "median": "n ≥ 3 (the median of 2 is their mean)",
            "trimmed-mean": f"1 ≤ ⌊{_num(self.beta)}·n⌋ < n/2",
            "krum": f"n > 2F + 2 = {2 * f + 2}",
            "multikrum": f"n > 2F + 2 = {2 * f + 2} and M = {self.m} ≤ n − F",
            "bulyan": f"n ≥ 4F + 3 = {4 * f + 3}",
        }[self.kind]

    def min_n(self) -> int:
        """The fewest updates the rule accepts (trimmed-mean: the fewest that trim one per side)."""
        if self.kind == "median":
            return 3
        if self.kind == "trimmed-mean":
            return next(n for n in range(3, 10**6) if self.tolerates(n))
        if self.kind in ("krum", "multikrum"):
            return max(2 * self.f + 3, self.m + self.f)
        if self.kind == "bulyan":
            return 4 * self.f + 3
        return 1

    def tolerates(self, n: int) -> bool:
        """Whether the rule can combine n updates with its guarantee."""
        if self.kind == "trimmed-mean":
            k = math.floor(self.beta * n)
            return 1 <= k and 2 * k < n
        return n >= self.min_n()

    def require(self, n: int, who: str, clients_per_reporter: int = 1) -> None:
        """Raise ConfigError (one line naming the rule, n, F and the fix) unless it tolerates n.

        Args:
            n: the updates the rule will combine per group.
            who: what reports them, for the message (e.g. "5 clients report each group").
            clients_per_reporter: clients a run needs per reporter of a group (USPLIT: 2).
        """
        if self.tolerates(n):
            return
        fix = f"use at least {self.min_n() * clients_per_reporter} clients"
        if self.kind in ("krum", "multikrum", "bulyan") and self.f > 1:
            fix += f", or assume fewer attackers (F < {self.f})"
        elif self.kind == "trimmed-mean" and n >= 3:
            fix += f", or B ≥ 1/n = {1 / n:.3g} (B = {_num(self.beta)} trims nothing: the mean)"
        raise ConfigError(
            f"--aggregate {self} needs {self.needs()} updates per group, but {who} (n = {n}); {fix}"
        )


def parse_rule(spec: object) -> Rule:
    """``"krum:1"`` -> Rule("krum", f=1); ConfigError (listing :data:`AGGREGATE_FORMS`) otherwise."""
    text = str(spec).strip().lower()
    name, _, args = text.partition(":")
    name = name.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid --aggregate {spec!s}: {why}; valid forms: {AGGREGATE_FORMS}")

    if name not in _ARITY:
        raise bad(f"unknown rule {name!r}")
    parts = [a.strip() for a in args.split(",")] if args else []
    if len(parts) != _ARITY[name]:
        raise bad(f"{name} takes {_ARITY[name]} parameter(s), got {len(parts)}")
    if name == "trimmed-mean":
        try:
            beta = float(parts[0])
        except ValueError:
            raise bad(f"B = {parts[0]!r} is not a number") from None
        if not 0 < beta < 0.5:
            raise bad(f"B must be in (0, 0.5), got {parts[0]}")
        return Rule(name, beta=beta)
    try:
        ints = [int(p) for p in parts]
    except ValueError:
        raise bad(f"{', '.join(parts)} must be integers") from None
    if any(i < 1 for i in ints):
        raise bad("F and M must be ≥ 1")
    if name in ("krum", "bulyan"):
        return Rule(name, f=ints[0])
    if name == "multikrum":
        return Rule(name, f=ints[0], m=ints[1])
    return Rule(name)


# ------------------------------------------------------------------------------ the rules
def coordinate_median(x: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of ``x`` (n, d) -> (d,) (the mean of the middle two for even n)."""
    return np.median(x, axis=0)


def trimmed_mean(x: np.ndarray, beta: float) -> np.ndarray:
    """Coordinate-wise mean of ``x`` (n, d) after dropping the ⌊beta·n⌋ largest and smallest."""
    n = x.shape[0]
    k = math.floor(beta * n)
    if not 2 * k < n:
        raise ValueError(f"trimming {k} per side of {n} leaves nothing")
    return np.sort(x, axis=0)[k : n - k].mean(axis=0)


def _sq_distances(x: np.ndarray) -> np.ndarray:
    """(n, n) squared Euclidean distances between the rows of ``x``, from their differences
    (not from a Gram matrix, which loses the digits of nearby updates)."""
    n = x.shape[0]
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = x[i] - x[j]
            d[i, j] = d[j, i] = float(np.dot(diff, diff))
    return d


def _scores(d: np.ndarray, f: int) -> np.ndarray:
    n = d.shape[0]
    closest = max(1, n - f - 2)
    return np.array([np.sort(np.delete(d[i], i))[:closest].sum() for i in range(n)])


def krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Krum's score of each row of ``x`` (n, d): the sum of its squared distances to its
    max(1, n − f − 2) nearest other rows (Blanchard et al. 2017; the max as Flower's, for
    Bulyan's last picks)."""
    return _scores(_sq_distances(x), f)


def krum_select(x: np.ndarray, f: int, m: int = 1) -> list[int]:
    """Indices of the ``m`` rows of least Krum score (ties: the lower index)."""
    return [int(i) for i in np.argsort(krum_scores(x, f), kind="stable")[:m]]


def multikrum(x: np.ndarray, f: int, m: int) -> tuple[np.ndarray, list[int]]:
    """(mean of the ``m`` rows of least Krum score, their indices); m = 1 is Krum."""
    sel = krum_select(x, f, m)
    return x[sel].mean(axis=0), sel


def bulyan(x: np.ndarray, f: int) -> tuple[np.ndarray, list[int]]:
    """Bulyan (El Mhamdi et al. 2018) over Krum: (aggregate, indices picked in order).

    θ = n − 2f rows are picked by Krum one at a time from the rows not yet picked; then per
    coordinate the θ − 2f picked values nearest the picked values' median are averaged.
    """
    n = x.shape[0]
    theta, left = n - 2 * f, list(range(n))
    picked: list[int] = []
    dist = _sq_distances(x)  # once: each pick's Krum runs on the rows left
    for _ in range(theta):
        best = left[int(np.argsort(_scores(dist[np.ix_(left, left)], f), kind="stable")[0])]
        picked.append(best)
        left.remove(best)
    s = x[picked]
    med = np.median(s, axis=0)
    nearest = np.argsort(np.abs(s - med), axis=0, kind="stable")[: theta - 2 * f]
    return np.take_along_axis(s, nearest, axis=0).mean(axis=0), picked


def combine(rule: Rule, x: np.ndarray) -> tuple[np.ndarray, list[int] | None]:
    """The rule applied to the rows of ``x`` (n, d): (aggregate (d,), rows picked or None)."""
    if rule.kind == "median":
        return coordinate_median(x), None
    if rule.kind == "trimmed-mean":
        return trimmed_mean(x, rule.beta), None
    if rule.kind in ("krum", "multikrum"):
        return multikrum(x, rule.f, rule.m)
    if rule.kind == "bulyan":
        return bulyan(x, rule.f)
    raise ValueError(f"{rule} is not a robust rule")


def apply_rule(
    rule: Rule,
    global_: Mapping[str, np.ndarray],
    clients: Sequence[int],
    updates: Sequence[Mapping[str, np.ndarray]],
    groups: Mapping[str, Sequence[str]],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, object]]]:
    """A robust rule per group, over the clients that reported the group.

    Args:
        rule: a robust :class:`Rule` (not fedavg).
        global_: the current global arrays.
        clients: an id per update (recorded for Krum's and Bulyan's picks).
        updates: the clients' full values for the keys they reported.
        groups: group -> its keys among ``global_``'s.
    Returns:
        (new global arrays: same keys, shapes and dtypes; a group with no reporter, or with fewer
        than the rule tolerates, keeps its arrays bitwise; per group reported: {"n", "applied",
        and "picked": the client ids of Krum's / Bulyan's picks}).
    """
    out = dict(global_)
    report: dict[str, dict[str, object]] = {}
    for group, keys in groups.items():
        keys = list(keys)
        who = [i for i, u in enumerate(updates) if keys and keys[0] in u]
        if not who:
            continue
        if any(k not in updates[i] for i in who for k in keys):
            raise ValueError(f"an update reports part of group {group}, not all of it")
        row: dict[str, object] = {"n": len(who), "applied": rule.tolerates(len(who))}
        report[group] = row
        if not row["applied"]:
            continue  # too few updates for the rule's guarantee: the group keeps its value
        refs = [np.asarray(global_[k], dtype=np.float64).ravel() for k in keys]
        x = np.stack(
            [
                np.concatenate(
                    [
                        np.asarray(updates[i][k], np.float64).ravel() - r
                        for k, r in zip(keys, refs, strict=True)
                    ]
                )
                for i in who
            ]
        )
        delta, picked = combine(rule, x)
        if picked is not None:
            row["picked"] = [int(clients[who[p]]) for p in picked]
        at = 0
        for k, r in zip(keys, refs, strict=True):
            ref = np.asarray(global_[k])
            out[k] = (r + delta[at : at + r.size]).reshape(ref.shape).astype(ref.dtype)
            at += r.size
    return out, report


def aggregate_updates(
    rule: Rule, global_: Mapping[str, np.ndarray], updates: Sequence[A.Update]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, object]]]:
    """The server's step for validated ``updates``: fedavg's weighted average per key
    (:func:`.aggregate.aggregate`), or a robust rule per group (:func:`apply_rule`, on the
    updates in :func:`.aggregate.canonical_order`, so ties do not depend on arrival).

    Returns:
        (new global arrays, per group {"n", "applied", "picked"}: empty for fedavg).
    """
    if not rule.robust:
        return A.aggregate(global_, updates), {}
    ordered = A.canonical_order(updates)
    groups = {g: ks for g, ks in P.split_by_group(global_).items() if ks}
    clients = [u.client for u in ordered]
    return apply_rule(rule, global_, clients, [u.arrays for u in ordered], groups)


# ------------------------------------------------------------------------------ fault injection
@dataclass(frozen=True)
class Attack:
    """What chosen clients send instead of their update Δ (``--attack``; studies and tests only).

    Attributes:
        kind: ``scale`` (K·Δ), ``signflip`` (−K·Δ) or ``noise`` (Gaussian, σ per element, in
            place of Δ).
        value: K or σ.
        clients: the partition ids that attack.
    """

    kind: str
    value: float
    clients: frozenset[int]

    def __str__(self) -> str:
        who = ",".join(str(c) for c in sorted(self.clients))
        return f"{self.kind}:{_num(self.value)}@{who}"

    def corrupt(
        self,
        local: Mapping[str, np.ndarray],
        received: Mapping[str, np.ndarray],
        keys: Sequence[str],
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """The values a corrupted client sends for ``keys`` (θ_global + the corrupted Δ)."""
        out: dict[str, np.ndarray] = {}
        for k in keys:
            x = np.asarray(local[k])
            if not np.issubdtype(x.dtype, np.floating):
                out[k] = x
                continue
            ref = np.asarray(received[k], dtype=np.float64)
            delta = x.astype(np.float64) - ref
            if self.kind == "scale":
                delta = self.value * delta
            elif self.kind == "signflip":
                delta = -self.value * delta
            else:
                delta = rng.normal(0.0, self.value, size=delta.shape)
            out[k] = (ref + delta).astype(x.dtype)
        return out


def parse_attack(spec: object) -> Attack | None:
    """``"scale:100@3"`` -> Attack; "" -> None; ConfigError (listing :data:`ATTACK_FORMS`)."""
    text = str(spec).strip().lower()
    if not text:
        return None

    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid --attack {spec!s}: {why}; valid forms: {ATTACK_FORMS}")

    what, at, who = text.partition("@")
    if not at or not who:
        raise bad("name the attacking clients after @")
    kind, _, arg = what.partition(":")
    if kind not in ("scale", "signflip", "noise"):
        raise bad(f"unknown attack {kind!r}")
    if not arg and kind != "signflip":
        raise bad(f"{kind} needs a value")
    try:
        value = float(arg) if arg else 1.0
        clients = frozenset(int(c) for c in who.split(","))
    except ValueError:
        raise bad("values must be numbers and clients integers") from None
    if not (math.isfinite(value) and value > 0):
        raise bad(f"the value must be a finite number > 0, got {arg}")
    if any(c < 0 for c in clients):
        raise bad("client ids are ≥ 0")
    return Attack(kind, value, clients)
