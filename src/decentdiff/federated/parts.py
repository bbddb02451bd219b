"""Which UNet parameters each federated method exchanges, as data (PAPERS.md §3).

de Goede et al., "Training Diffusion Models with Federated Learning", arXiv 2406.12575.

The UNet's top-level modules (``decentdiff.models.unet.PARTS``) are grouped into three *groups*:

==============  ====================================================  ===========================
group           top-level modules                                     paper's name
==============  ====================================================  ===========================
``encoder``     ``time_embed``, ``class_embed``, ``down`` (incl. the  first conv + time MLP + down
                stem conv ``down.0``)
``bottleneck``  ``mid``                                               middle blocks
``decoder``     ``up``, ``out``                                       up levels + final block
==============  ====================================================  ===========================

=============  ===========================================  ==========================================
method         a client reports (uplink)                    the server sends (downlink, round ≥ 2)
=============  ===========================================  ==========================================
``full``       everything                                   everything
``usplit``     its assigned groups (random pairs, below)    everything
``udec``       decoder                                      decoder
``ulatdec``    decoder + bottleneck                         decoder + bottleneck
=============  ===========================================  ==========================================

Round 1's downlink is always the whole model (the initial broadcast: every client starts from the
same weights). Every client trains all its weights locally; only what travels differs. With
``--full-rounds N`` the first N rounds of UDEC / ULATDEC are FULL rounds (everything both ways)
and round N+1 still receives the whole averaged model: the clients' private parts start from a
model averaged over every client's data, then stay private.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..models.unet import PARTS

#: group -> the UNet's top-level modules it holds.
GROUPS: dict[str, tuple[str, ...]] = {
    "encoder": ("time_embed", "class_embed", "down"),
    "bottleneck": ("mid",),
    "decoder": ("up", "out"),
}
ALL_GROUPS: frozenset[str] = frozenset(GROUPS)

# Every UNet part belongs to exactly one group: a new part must be placed here explicitly.
assert sorted(p for g in GROUPS.values() for p in g) == sorted(PARTS), "GROUPS must cover PARTS"


@dataclass(frozen=True)
class Method:
    """What travels for one method.

    Attributes:
        name: the method's name on the command line.
        shared: groups the server sends after the initial broadcast (and the only groups a client
            may ever report).
        split: clients report disjoint groups assigned per round (USPLIT); otherwise every client
            reports all of ``shared``.
        personal: the usable generators are the clients' own models (the server's model is not).
    """

    name: str
    shared: frozenset[str]
    split: bool = False
    personal: bool = False


METHODS: dict[str, Method] = {
    "full": Method("full", ALL_GROUPS),
    "usplit": Method("usplit", ALL_GROUPS, split=True),
    "udec": Method("udec", frozenset({"decoder"}), personal=True),
    "ulatdec": Method("ulatdec", frozenset({"decoder", "bottleneck"}), personal=True),
}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name`` (case-insensitive); ConfigError lists the valid ones."""
    key = str(name).strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown federated method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[key]


def group_of(key: str) -> str:
    """The group of a state-dict key (``down.1.blocks.0.conv1.weight`` -> ``encoder``)."""
    top = key.split(".", 1)[0]
    for group, parts in GROUPS.items():
        if top in parts:
            return group
    raise ValueError(f"parameter {key!r} belongs to no UNet part; expected one of {PARTS}")


def keys_for(groups: Iterable[str], keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` (in their order) that belong to ``groups``."""
    want = set(groups)
    unknown = want - ALL_GROUPS
    if unknown:
        raise ValueError(f"unknown groups {sorted(unknown)}; valid: {sorted(ALL_GROUPS)}")
    return [k for k in keys if group_of(k) in want]


def assignments(
    method: str | Method,
    client_ids: Sequence[int],
    round_: int,
    seed: int = 0,
    *,
    full_rounds: int = 0,
) -> dict[int, frozenset[str]]:
    """The groups each client reports in round ``round_`` (a pure function of its arguments).

    For USPLIT the clients (sorted by id) are shuffled and paired; in each pair one reports the
    encoder and the other the decoder, a coin flip gives the bottleneck to one of them; with an odd
    number of clients the one left over reports the bottleneck plus, at random, the encoder or the
    decoder. The random draws depend only on (seed, round, number of clients), so the bytes sent
    are predictable without knowing the clients' ids.

    Args:
        method: a method name or :class:`Method`.
        client_ids: the clients taking part (distinct).
        round_: the round, from 1.
        seed: the run's seed.
        full_rounds: rounds 1..full_rounds are FULL rounds (every client reports every group)
            before the method's own (``--full-rounds``: a shared start for UDEC / ULATDEC).
    Returns:
        client id -> frozenset of group names.
    """
    m = method if isinstance(method, Method) else get_method(method)
    ids = sorted(client_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("client ids must be distinct")
    if round_ <= full_rounds:
        return {c: ALL_GROUPS for c in ids}
    if not m.split:
        return {c: m.shared for c in ids}
    rng = np.random.default_rng([seed, round_])
    order = [ids[i] for i in rng.permutation(len(ids))]
    out: dict[int, frozenset[str]] = {}
    for a, b in zip(order[0::2], order[1::2], strict=False):
        flip = bool(rng.integers(2))  # who takes the encoder
        mid_to_first = bool(rng.integers(2))  # coin flip for the bottleneck
        enc, dec = (a, b) if flip else (b, a)
        out[enc] = frozenset({"encoder"} | ({"bottleneck"} if mid_to_first else set()))
        out[dec] = frozenset({"decoder"} | (set() if mid_to_first else {"bottleneck"}))
    if len(order) % 2:
        other = "encoder" if rng.integers(2) == 0 else "decoder"
        out[order[-1]] = frozenset({"bottleneck", other})
    return out


def downlink_groups(method: str | Method, round_: int, *, full_rounds: int = 0) -> frozenset[str]:
    """Groups the server sends in ``round_``: the whole model in round 1 (initial broadcast).

    With ``full_rounds`` N > 0 also in rounds 2..N+1: the FULL rounds' downlink, and round N+1's,
    which hands every client the model averaged in round N (its private parts start there).
    """
    m = method if isinstance(method, Method) else get_method(method)
    return ALL_GROUPS if round_ <= 1 + full_rounds else m.shared


def split_by_group(keys: Iterable[str]) -> dict[str, list[str]]:
    """group -> its keys (every key lands in exactly one group)."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for k in keys:
        out[group_of(k)].append(k)
    return out


def group_sizes(numels: Mapping[str, int]) -> dict[str, int]:
    """group -> number of elements, from key -> numel."""
    out = dict.fromkeys(GROUPS, 0)
    for k, n in numels.items():
        out[group_of(k)] += int(n)
    return out
