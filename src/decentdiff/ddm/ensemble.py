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
``oracle``         one-hot at given labels (the cluster each sample "belongs to"); no router call.
                   The paper's Table 1 row; ``generate`` draws the labels from the cluster sizes,
                   which for an unconditional model is the same procedure as ``mixture``
``mixture``        ONE expert per sample, drawn once per trajectory from the cluster prior
                   π_k = |S_k|/N (class-conditional: p(k | class)); no router call. With exact
                   experts this is exact ancestral sampling of Σ_k π_k p_k, i.e. of the data
``sticky:P``       as mixture, but at each step the router may take the trajectory over: when
                   its top probability is ≥ P the sample switches to that expert (router + one
                   expert per step)
``schedule:T0,R``  as mixture while t ≥ T0 (high noise, where the router cannot see the
                   cluster); routing R (e.g. top1, topk:2) below T0
=================  =========================================================================

Trajectory state: mixture, sticky and schedule keep each sample's expert between calls; it is
drawn at the first call after :meth:`EnsembleVelocity.reset_trace`, or when the batch size or
its classes change; call ``reset_trace()`` before sampling each new batch.

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

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from decentdiff.ddm.routing import Routing, parse_routing
from decentdiff.errors import ConfigError

__all__ = ["EnsembleVelocity"]

Velocity = Callable[..., Tensor]
Router = Callable[..., Tensor]


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
        prior: the cluster prior for ``mixture`` / ``sticky`` / ``schedule``: (K,) non-negative
            weights (e.g. cluster sizes), or (C, K) for a class-conditional model (row c:
            training images of class c in each cluster, so p(k | c) up to normalisation). Dropped
            experts get 0; a class whose row is all 0 falls back to the marginal Σ_c prior[c].

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
        prior: Tensor | None = None,
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
        elif self.routing.needs_router and router is None:
            raise ConfigError(f"routing {self.routing} needs a router")
        self.prior = None if prior is None else self._check_prior(prior, k)
        if self.routing.needs_prior and self.prior is None:
            raise ConfigError(
                f"routing {self.routing} needs the cluster prior (the sizes of the parts)"
            )
        low = self.routing.low
        if low is not None and low.k is not None and low.k > k:
            raise ConfigError(
                f"routing {self.routing} asks for {low.k} experts but there are only {k}"
            )
        self._assigned: Tensor | None = None  # (B,) each trajectory's expert (prior routings)
        self._assigned_cond: Tensor | None = None  # the classes it was drawn for
        #: When a list: every call appends (t (B,), weights (B, K)) on the CPU (diagnostics:
        #: which expert is used at which t, and how often a trajectory switches).
        self.history: list[tuple[Tensor, Tensor]] | None = None
        # sticky: samples whose expert changed; schedule: low-t evaluations whose main expert
        # differs from the trajectory's
        self.switches = 0
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

    def _check_prior(self, prior: Tensor, k: int) -> Tensor:
        p = torch.as_tensor(prior, dtype=torch.float64).detach().cpu()
        if p.ndim not in (1, 2) or p.shape[-1] != k:
            raise ConfigError(f"prior must have shape ({k},) or (C, {k}), got {tuple(p.shape)}")
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
            raise ConfigError("prior weights must be finite and >= 0")
        p = p * self._available.to(torch.float64)
        if float(p.sum()) <= 0:
            raise ConfigError("the prior gives no weight to any expert that is kept")
        return p

    def _draw_prior(self, b: int, cond: Tensor | None, device: torch.device) -> Tensor:
        """(B,) one expert per sample from the prior (per class when the prior is (C, K))."""
        assert self.prior is not None
        marginal = self.prior if self.prior.ndim == 1 else self.prior.sum(0)
        if self.prior.ndim == 2 and cond is not None:
            c = torch.as_tensor(cond).reshape(-1).long().cpu()
            if bool(((c < 0) | (c >= self.prior.shape[0])).any()):
                raise ConfigError(f"class labels must lie in 0..{self.prior.shape[0] - 1}")
            rows = self.prior[c]
            empty = rows.sum(1, keepdim=True) <= 0
            rows = torch.where(empty, marginal.expand_as(rows), rows)
        else:
            rows = marginal.expand(b, -1)
        # Drawn on the CPU with the ensemble's generator: the same draws on every device.
        idx = torch.multinomial(rows, 1, replacement=True, generator=self.generator)
        return idx.reshape(-1).to(device)

    def _trajectory(self, b: int, cond: Tensor | None, device: torch.device) -> Tensor:
        # A new batch (other size or other classes) draws its experts afresh, even when the
        # caller forgot reset_trace().
        c = None if cond is None else torch.as_tensor(cond).reshape(-1).detach().cpu()
        same_cond = (c is None and self._assigned_cond is None) or (
            c is not None
            and self._assigned_cond is not None
            and torch.equal(c, self._assigned_cond)
        )
        if self._assigned is None or self._assigned.shape[0] != b or not same_cond:
            self._assigned = self._draw_prior(b, cond, device)
            self._assigned_cond = c
        return self._assigned.to(device)

    def _router_probs(
        self, x: Tensor, t: Tensor, cond: Tensor | None, available: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(logits, probs), both (B, K) float64; dropped experts at −inf / 0."""
        assert self.router is not None
        b, k = x.shape[0], self.num_experts
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
        return logits, probs

    def _strategy(
        self, r: Routing, x: Tensor, t: Tensor, cond: Tensor | None, available: Tensor
    ) -> Tensor:
        logits, probs = self._router_probs(x, t, cond, available)
        n_avail = self.num_experts - len(self.dropped)
        return _STRATEGIES[r.kind](
            probs,
            logits=logits,
            available=available,
            k=None if r.k is None else min(r.k, n_avail),
            p=r.p,
            temperature=r.temperature,
            generator=self.generator,
        )

    def _prior_weights(
        self, x: Tensor, t: Tensor, cond: Tensor | None, available: Tensor
    ) -> Tensor:
        """mixture / sticky / schedule: the trajectory's expert, overridden by the router where
        the routing says so."""
        r, b, k = self.routing, x.shape[0], self.num_experts
        assigned = self._trajectory(b, cond, x.device)
        if r.kind == "mixture":
            return _one_hot(assigned, k)
        if r.kind == "sticky":
            assert r.p is not None
            _, probs = self._router_probs(x, t, cond, available)
            conf, top = probs.max(1)
            new = torch.where(conf >= r.p, top, assigned)
            self.switches += int((new != assigned).sum())
            self._assigned = new
            return _one_hot(new, k)
        assert r.kind == "schedule" and r.low is not None and r.t0 is not None
        w = _one_hot(assigned, k)
        low = torch.nonzero(t < r.t0).reshape(-1)
        if low.numel() == 0:
            return w
        sub_cond = None if cond is None else cond.index_select(0, low)
        wl = self._strategy(
            r.low, x.index_select(0, low), t.index_select(0, low), sub_cond, available
        )
        # Below T0 the low routing decides; a sample whose main expert differs has switched.
        self.switches += int((wl.argmax(1) != assigned.index_select(0, low)).sum())
        return w.index_copy(0, low, wl)

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
        if r.needs_prior:
            return self._prior_weights(x, t, cond, available)
        return self._strategy(r, x, t, cond, available)

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
        if self.history is not None:
            self.history.append((t.detach().cpu(), w.detach().cpu()))
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
        """Forget the attribution trace and each trajectory's expert (call before sampling a new
        batch: mixture / sticky / schedule draw the next batch's experts afresh)."""
        self.trace = None
        self._steps = 0
        self._assigned = None
        self._assigned_cond = None

    def reset_counts(self) -> None:
        """Zero ``expert_calls`` and ``router_calls``."""
        self.expert_calls = [0] * self.num_experts
        self.router_calls = 0
        self.switches = 0

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
