"""The DDM ensemble: K experts mixed by a router, itself a velocity callable.

PAPERS.md §1: the marginal velocity of the full data set is u_t(x) = Σ_k p(k | x_t)·u_t^(k)(x), so
experts trained in isolation on their clusters plus a router predicting p(k | x_t) together are one
model. :class:`EnsembleVelocity` evaluates that sum, or one of the paper's cheaper approximations
of it (Table 1), chosen by a routing spec:

=================  =========================================================================
``full``           w = p (every expert with p > 0 is evaluated)
``top1``           one-hot at argmax p
``topk:K``         the K most probable experts, p renormalised over them
``sample:K``       K distinct experts drawn from p without replacement, p renormalised over them
``threshold:P``    experts with p ≥ P, renormalised (none → top1)
``nucleus:P[,T]``  q = softmax(logits / T); the smallest set of largest q with mass ≥ P; ONE
                   expert drawn from q renormalised over that set (one-hot); T defaults to 1
``oracle``         one-hot at given labels (the cluster each sample "belongs to"); no router call
=================  =========================================================================

Cost: an expert is evaluated only on the sub-batch of samples that give it a nonzero weight, and
not at all when no sample does, so top1 costs one expert evaluation per sample. ``expert_calls``
counts the samples each expert was evaluated on and ``router_calls`` the router's, for FLOP
accounting.

Resilience: ``drop`` removes experts (e.g. a cluster whose data was withdrawn): their probability is
set to 0 and the router's distribution renormalised over the others, with no retraining.

Attribution: every call adds its weights to a per-sample trace;
:meth:`EnsembleVelocity.mean_weights` gives, for each sample of the trajectory, the mean weight of
each expert (so of each data cluster).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from decentdiff.errors import ConfigError

__all__ = [
    "ROUTING_FORMS",
    "EnsembleVelocity",
    "Routing",
    "parse_routing",
]

#: The valid routing specs, as listed in every routing error message.
ROUTING_FORMS = (
    "full, top1, topk:K, sample:K, threshold:P, nucleus:P, nucleus:P,T, oracle "
    "(K an integer >= 1, 0 < P <= 1, T > 0)"
)

Velocity = Callable[..., Tensor]
Router = Callable[..., Tensor]


def _bad(spec: object, why: str) -> ConfigError:
    return ConfigError(f"invalid routing {spec!s}: {why}; valid forms: {ROUTING_FORMS}")


@dataclass(frozen=True)
class Routing:
    """A parsed routing strategy.

    Attributes:
        kind: one of "full", "top1", "topk", "sample", "threshold", "nucleus", "oracle".
        k: number of experts for topk / sample, else None.
        p: threshold for threshold, mass for nucleus, else None.
        temperature: softmax temperature for nucleus (1 otherwise).
    """

    kind: str
    k: int | None = None
    p: float | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        # Validate here too so a Routing built by hand is as safe as a parsed one.
        why = _problem(self.kind, self.k, self.p, self.temperature)
        if why:
            raise _bad(repr(self), why)

    def __str__(self) -> str:
        """The canonical spec, e.g. "topk:2" or "nucleus:0.9,0.5" (parse_routing(str(r)) == r)."""
        if self.kind in ("topk", "sample"):
            return f"{self.kind}:{self.k}"
        if self.kind == "threshold":
            return f"threshold:{self.p:g}"
        if self.kind == "nucleus":
            return f"nucleus:{self.p:g}" + (
                "" if self.temperature == 1.0 else f",{self.temperature:g}"
            )
        return self.kind

    @property
    def stochastic(self) -> bool:
        """Whether the weights depend on the random generator."""
        return self.kind in ("sample", "nucleus")


# Which parameters each strategy takes: the registry parse_routing and Routing validate against.
_ARITY: dict[str, tuple[str, ...]] = {
    "full": (),
    "top1": (),
    "topk": ("k",),
    "sample": ("k",),
    "threshold": ("p",),
    "nucleus": ("p", "T?"),
    "oracle": (),
}


def _problem(kind: str, k: object, p: object, temperature: object) -> str | None:
    """Why these routing parameters are invalid, or None when they are valid."""
    if kind not in _ARITY:
        return "unknown strategy"
    needs = _ARITY[kind]
    if "k" in needs:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            return "k must be an integer >= 1"
    elif k is not None:
        return f"{kind} takes no k"
    if "p" in needs:
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0:
            return "p must satisfy 0 < p <= 1"
    elif p is not None:
        return f"{kind} takes no p"
    if not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        return "temperature T must be > 0"
    if kind != "nucleus" and temperature != 1.0:
        return f"{kind} takes no temperature"
    return None


def parse_routing(spec: str | Routing) -> Routing:
    """Parse a routing spec such as "top1", "topk:2", "threshold:0.05" or "nucleus:0.9,0.5".

    Args:
        spec: the spec (case and surrounding spaces ignored), or an already parsed Routing.

    Returns:
        The validated :class:`Routing`.

    Raises:
        ConfigError: unknown form or out-of-range value; the one-line message lists the valid forms.
    """
    if isinstance(spec, Routing):
        return spec
    if not isinstance(spec, str):
        raise _bad(repr(spec), "expected a string")
    text = spec.strip().lower()
    kind, sep, rest = text.partition(":")
    kind = kind.strip()
    if kind not in _ARITY:
        raise _bad(repr(spec), "unknown strategy")
    args = [a.strip() for a in rest.split(",")] if sep else []
    needs = _ARITY[kind]
    required = [n for n in needs if not n.endswith("?")]
    if not (len(required) <= len(args) <= len(needs)) or any(a == "" for a in args):
        counts = {0: "no arguments", 1: "one argument", 2: "one or two arguments"}
        raise _bad(repr(spec), f"{kind} takes {counts[len(needs)]}")
    try:
        k = p = None
        temperature = 1.0
        if kind in ("topk", "sample"):
            if not args[0].isdigit():  # "2.0", "-1", "two": not an integer count
                raise _bad(repr(spec), "k must be an integer >= 1")
            k = int(args[0])
        elif kind in ("threshold", "nucleus"):
            p = float(args[0])
            temperature = float(args[1]) if len(args) > 1 else 1.0
    except ValueError:
        raise _bad(repr(spec), "arguments must be numbers") from None
    why = _problem(kind, k, p, temperature)
    if why:
        raise _bad(repr(spec), why)
    return Routing(kind, k=k, p=p, temperature=temperature)


# --------------------------------------------------------------------------------------------------
# Strategies: (probs, logits, available, routing, generator) -> weights, all (B, K) float64.
# probs is the router softmax with dropped experts at 0; logits has them at −inf.


def _one_hot(idx: Tensor, k: int) -> Tensor:
    return torch.nn.functional.one_hot(idx, k).to(torch.float64)


def _renorm(probs: Tensor, mask: Tensor) -> Tensor:
    w = probs * mask
    return w / w.sum(1, keepdim=True)


def _masked_softmax(logits: Tensor, available: Tensor, temperature: float = 1.0) -> Tensor:
    z = (logits / temperature).masked_fill(~available, float("-inf"))
    # A row with no finite logit among the available experts carries no information: use uniform
    # over them rather than NaN (happens e.g. when the only clusters with mass were dropped).
    dead = ~torch.isfinite(z).any(1, keepdim=True)
    z = torch.where(dead & available, torch.zeros_like(z), z)
    return torch.softmax(z, dim=1)


def _full(probs: Tensor, **_: object) -> Tensor:
    return probs


def _top1(probs: Tensor, **_: object) -> Tensor:
    return _one_hot(probs.argmax(1), probs.shape[1])


def _topk(probs: Tensor, *, k: int, **_: object) -> Tensor:
    idx = probs.topk(k, dim=1).indices
    return _renorm(probs, torch.zeros_like(probs).scatter(1, idx, 1.0))


def _sample(
    probs: Tensor, *, k: int, available: Tensor, generator: torch.Generator | None, **_: object
) -> Tensor:
    # multinomial without replacement needs >= k nonzero entries: give available experts with
    # p = 0 a negligible mass (1e-200: drawn only once every positive expert is taken, and they
    # still get weight 0 below, so they are not evaluated).
    draw = torch.where(available, probs.clamp(min=1e-200), torch.zeros_like(probs))
    idx = torch.multinomial(draw, k, replacement=False, generator=generator)
    return _renorm(probs, torch.zeros_like(probs).scatter(1, idx, 1.0))


def _threshold(probs: Tensor, *, p: float, **_: object) -> Tensor:
    mask = (probs >= p).to(probs.dtype)
    none = mask.sum(1, keepdim=True) == 0
    mask = torch.where(none, _top1(probs), mask)
    return _renorm(probs, mask)


def _nucleus(
    probs: Tensor,
    *,
    logits: Tensor,
    available: Tensor,
    p: float,
    temperature: float,
    generator: torch.Generator | None,
    **_: object,
) -> Tensor:
    q = _masked_softmax(logits, available, temperature)
    # Stable descending sort: on ties the first index comes first, as in argmax, so p → 0 is top1.
    qs, order = torch.sort(q, dim=1, descending=True, stable=True)
    before = torch.cumsum(qs, dim=1) - qs  # mass strictly before each sorted entry
    keep_sorted = (before < p).to(q.dtype)  # the first entry always (before = 0 < p)
    keep = torch.zeros_like(q).scatter(1, order, keep_sorted)
    idx = torch.multinomial(q * keep, 1, generator=generator).reshape(-1)
    return _one_hot(idx, q.shape[1])


_STRATEGIES: dict[str, Callable[..., Tensor]] = {
    "full": _full,
    "top1": _top1,
    "topk": _topk,
    "sample": _sample,
    "threshold": _threshold,
    "nucleus": _nucleus,
}


class EnsembleVelocity:
    """K experts mixed by a router: a velocity callable ``(x_t, t, cond=None) -> v``.

    Args:
        experts: K velocity callables ``(x, t, cond) -> v``, one per cluster, in cluster order.
        router: callable ``(x, t, cond) -> logits (B, K)``; may be None for ``oracle`` routing.
        routing: a spec (see :func:`parse_routing`) or a :class:`Routing`.
        generator: random generator for ``sample`` / ``nucleus`` (seed it for reproducible draws).
        oracle_labels: (B,) long expert index per sample, required for ``oracle`` routing; the
            attribute can be reassigned between batches.
        drop: expert indices to remove; the router's distribution is renormalised over the rest.
            ``topk:K`` / ``sample:K`` use min(K, number of remaining experts).

    Attributes:
        expert_calls: per expert, the number of samples it has been evaluated on (cost accounting);
            reset with :meth:`reset_counts`.
        router_calls: number of samples the router has been evaluated on.
        trace: (B, K) float64 running sum of the weights used for each sample since
            :meth:`reset_trace` (None before the first call). A call whose batch size differs from
            the trace's starts a new trace.

    Raises:
        ConfigError: bad routing, k > K, bad drop list (out of range, or every expert), oracle
            routing without labels, or no router for a strategy that needs one.
    """

    def __init__(
        self,
        experts: Sequence[Velocity],
        router: Router | None,
        routing: str | Routing = "full",
        *,
        generator: torch.Generator | None = None,
        oracle_labels: Tensor | None = None,
        drop: Sequence[int] = (),
    ) -> None:
        self.experts = list(experts)
        k = len(self.experts)
        if k == 0:
            raise ConfigError("an ensemble needs at least one expert")
        self.routing = parse_routing(routing)
        if self.routing.k is not None and self.routing.k > k:
            raise ConfigError(
                f"routing {self.routing} asks for {self.routing.k} experts but there are only {k}"
            )
        dropped = sorted({int(d) for d in drop})
        if any(d < 0 or d >= k for d in dropped):
            raise ConfigError(f"drop {list(drop)} refers to experts outside 0..{k - 1}")
        if len(dropped) == k:
            raise ConfigError(f"drop {list(drop)} removes every expert; keep at least one")
        self.dropped = tuple(dropped)
        self._available = torch.ones(k, dtype=torch.bool)
        self._available[list(dropped)] = False
        if self.routing.kind == "oracle":
            if oracle_labels is None:
                raise ConfigError(
                    "routing oracle needs oracle_labels (one expert index per sample)"
                )
        elif router is None:
            raise ConfigError(f"routing {self.routing} needs a router")
        self.router = router
        self.generator = generator
        self.oracle_labels = oracle_labels
        self.expert_calls: list[int] = [0] * k
        self.router_calls = 0
        self.trace: Tensor | None = None
        self._steps = 0

    @property
    def num_experts(self) -> int:
        """K, including dropped experts."""
        return len(self.experts)

    def __repr__(self) -> str:
        return (
            f"EnsembleVelocity(K={self.num_experts}, routing={self.routing!s}, "
            f"drop={list(self.dropped)})"
        )

    # ---------------------------------------------------------------------------------- weights

    def _time(self, x: Tensor, t: Tensor | float) -> Tensor:
        # Samplers pass (B,); accept a scalar too and broadcast, so sub-batches can be indexed.
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(()).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ConfigError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return t

    def _weights(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        b, k = x.shape[0], self.num_experts
        available = self._available.to(x.device)
        r = self.routing
        if r.kind == "oracle":
            labels = torch.as_tensor(self.oracle_labels, device=x.device).reshape(-1).long()
            if labels.shape[0] != b:
                raise ConfigError(
                    f"oracle_labels has {labels.shape[0]} entries for a batch of {b} samples"
                )
            if bool(((labels < 0) | (labels >= k)).any()):
                raise ConfigError(f"oracle_labels must lie in 0..{k - 1}")
            if not bool(available[labels].all()):
                raise ConfigError(f"oracle_labels select a dropped expert {list(self.dropped)}")
            return _one_hot(labels, k)
        assert self.router is not None
        logits = self.router(x, t, cond)
        self.router_calls += b
        if logits.shape != (b, k):
            raise ValueError(f"router returned shape {tuple(logits.shape)}, expected ({b}, {k})")
        logits = logits.detach().to(torch.float64)
        # The softmax is computed once per call; every strategy derives from it (nucleus re-tempers
        # the same logits).
        probs = _masked_softmax(logits, available)
        if bool(torch.isnan(probs).any()):
            raise ValueError("router returned NaN logits")
        n_avail = k - len(self.dropped)
        return _STRATEGIES[r.kind](
            probs,
            logits=logits,
            available=available,
            k=None if r.k is None else min(r.k, n_avail),
            p=r.p,
            temperature=r.temperature,
            generator=self.generator,
        )

    def weights(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """The mixing weights the routing gives (evaluates the router, not the experts).

        Stochastic strategies draw from ``generator``, so this call advances it; the trace is not
        updated (only :meth:`__call__` records).

        Args:
            x: (B, ...) noisy samples x_t.
            t: (B,) times.
            cond: (B,) long class labels or None.

        Returns:
            (B, K) weights in float64: rows sum to 1, exact zeros for unused and dropped experts.
        """
        return self._weights(x, self._time(x, t), cond)

    # ---------------------------------------------------------------------------------- velocity

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Mixed velocity v = Σ_k w_k·v_k(x, t, cond).

        Each expert runs once, on the samples giving it a nonzero weight only (none: not called).

        Args:
            x: (B, ...) noisy samples x_t.
            t: (B,) times in [0, 1].
            cond: (B,) long class labels or None; passed to the router and the experts.

        Returns:
            (B, ...) velocity in x's dtype.
        """
        b = x.shape[0]
        t = self._time(x, t)
        w = self._weights(x, t, cond)  # (B, K) float64
        self._record(w)
        out = torch.zeros_like(x)
        bcast = (-1,) + (1,) * (x.ndim - 1)
        for k, expert in enumerate(self.experts):  # loop over experts only, never over samples
            col = w[:, k]
            idx = torch.nonzero(col > 0).reshape(-1)
            n = idx.numel()
            if n == 0:
                continue
            if n == b:  # whole batch: no gather/scatter copies
                v = expert(x, t, cond)
                out = out + col.to(x.dtype).reshape(bcast) * v.to(x.dtype)
            else:
                sub_cond = None if cond is None else cond.index_select(0, idx)
                v = expert(x.index_select(0, idx), t.index_select(0, idx), sub_cond)
                term = col.index_select(0, idx).to(x.dtype).reshape(bcast) * v.to(x.dtype)
                out = out.index_add(0, idx, term)
            self.expert_calls[k] += n
        return out

    # ---------------------------------------------------------------------------------- records

    def _record(self, w: Tensor) -> None:
        if self.trace is None or self.trace.shape != w.shape:
            self.trace = w.detach().clone()
            self._steps = 1
        else:
            self.trace += w.detach()
            self._steps += 1

    def reset_trace(self) -> None:
        """Forget the attribution trace (call before sampling a new batch)."""
        self.trace = None
        self._steps = 0

    def reset_counts(self) -> None:
        """Zero ``expert_calls`` and ``router_calls``."""
        self.expert_calls = [0] * self.num_experts
        self.router_calls = 0

    def mean_weights(self) -> Tensor:
        """Mean weight of each expert for each sample over the calls since :meth:`reset_trace`.

        Returns:
            (B, K) float64, rows sum to 1.

        Raises:
            RuntimeError: no call was recorded yet.
        """
        if self.trace is None or self._steps == 0:
            raise RuntimeError("no ensemble call recorded since reset_trace()")
        return self.trace / self._steps
