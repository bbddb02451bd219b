"""Routings that draw one expert per trajectory from the cluster prior (issue 14): mixture, sticky,
schedule. Exactness is checked against the closed-form flows of a finite data set: a sampler that
is exact turns noise into the data's own distribution (uniform over its points)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from decentdiff.ddm.ensemble import EnsembleVelocity
from decentdiff.ddm.routing import Routing, parse_routing
from decentdiff.diffusion.reference import EmpiricalFlow, EmpiricalRouter, cluster_velocities
from decentdiff.errors import ConfigError


def _euler(velocity, noise: torch.Tensor, steps: int = 60) -> torch.Tensor:
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x = noise.clone()
    for i in range(steps):
        x = x + (ts[i + 1] - ts[i]) * velocity(x, ts[i].expand(x.shape[0]))
    return x


def _points():
    """12 well separated points in 2-D in 3 clusters of 2, 4 and 6 points (prior 1/6, 1/3, 1/2)."""
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij"), -1)
    data = (grid.reshape(12, 2) - torch.tensor([1.5, 1.0])).double() * 1.2
    data = data + 0.05 * torch.randn(12, 2, dtype=torch.float64, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    return data, labels


def _landing_counts(x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, data)
    assert d.min(1).values.max() < 0.35  # every sample ends on a data point
    return torch.bincount(d.argmin(1), minlength=data.shape[0])


def _sample(ens: EnsembleVelocity, n: int, seed: int) -> torch.Tensor:
    noise = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ens.reset_trace()
    return _euler(ens, noise)


@pytest.mark.parametrize("spec", ["mixture", "schedule:0.4,full"])
def test_exact_routings_reproduce_the_data_distribution(spec):
    """mixture: k ~ π, then cluster k's exact flow: exact ancestral sampling of Σ π_k p_k = the
    data. schedule:T0,full: the cluster flow to T0 gives x_T0 ~ p_T0 exactly, then the exact full
    mixture. Both must land uniformly on the 12 points (chi-square), as the global flow does."""
    data, labels = _points()
    sizes = torch.bincount(labels).double()
    n = 2400
    ens = EnsembleVelocity(
        cluster_velocities(data, labels),
        EmpiricalRouter(data, labels),
        spec,
        generator=torch.Generator().manual_seed(1),
        prior=sizes,
    )
    counts = _landing_counts(_sample(ens, n, seed=2), data)
    assert chisquare(counts.numpy()).pvalue > 1e-3, counts.tolist()
    # The same test passes for the global exact flow (the reference) ...
    g = torch.Generator().manual_seed(3)
    ref = _landing_counts(
        _euler(EmpiricalFlow(data), torch.randn(n, 2, dtype=torch.float64, generator=g)), data
    )
    assert chisquare(ref.numpy()).pvalue > 1e-3
    # ... and can fail: a uniform prior over clusters (not their sizes) over-weights the small one.
    wrong = EnsembleVelocity(
        cluster_velocities(data, labels),
        EmpiricalRouter(data, labels),
        spec,
        generator=torch.Generator().manual_seed(1),
        prior=torch.ones(3, dtype=torch.float64),
    )
    bad = _landing_counts(_sample(wrong, n, seed=2), data)
    assert chisquare(bad.numpy()).pvalue < 1e-6


def test_mixture_costs_one_expert_and_no_router():
    data, labels = _points()
    calls = []

    def router(x, t, cond=None):
        calls.append(x.shape[0])
        raise AssertionError("mixture must not call the router")

    ens = EnsembleVelocity(
        cluster_velocities(data, labels),
        router,
        "mixture",
        generator=torch.Generator().manual_seed(0),
        prior=torch.bincount(labels),
    )
    x = torch.randn(50, 2, dtype=torch.float64)
    for t in (0.9, 0.5, 0.1):
        ens(x, torch.full((50,), t, dtype=torch.float64))
    assert ens.router_calls == 0 and not calls
    assert sum(ens.expert_calls) == 3 * 50
    # One expert per trajectory: the weights never change between calls of one batch.
    w = ens.mean_weights()
    assert ((w == 0) | (w == 1)).all() and (w.sum(1) == 1).all()
    # A router-less mixture is valid (deployable without a router).
    EnsembleVelocity([lambda x, t, c=None: x] * 3, None, "mixture", prior=torch.ones(3))


def test_mixture_draws_follow_the_prior_per_class_and_respect_drop():
    experts = [lambda x, t, c=None: x] * 3
    table = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])  # class 2: no images
    gen = torch.Generator().manual_seed(0)
    ens = EnsembleVelocity(experts, None, "mixture", generator=gen, prior=table)
    n = 6000
    cond = torch.arange(n) % 3
    w = ens.weights(torch.zeros(n, 1), torch.full((n,), 1.0), cond)
    for c, want in ((0, [0.25, 0, 0.75]), (1, [0, 1, 0]), (2, [1 / 6, 2 / 6, 3 / 6])):
        got = w[cond == c].mean(0)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=0.03, rtol=0)
    # Dropping expert 2: class 0 now only has expert 0; the marginal fallback excludes expert 2.
    ens = EnsembleVelocity(experts, None, "mixture", generator=gen, prior=table, drop=[2])
    w = ens.weights(torch.zeros(n, 1), torch.full((n,), 1.0), cond)
    assert (w[:, 2] == 0).all()
    assert (w[cond == 0, 0] == 1).all()
    # Unconditional sizes (K,): frequencies = sizes / N.
    ens = EnsembleVelocity(experts, None, "mixture", generator=gen, prior=torch.tensor([1.0, 1, 2]))
    freq = ens.weights(torch.zeros(n, 1), torch.full((n,), 1.0)).mean(0)
    torch.testing.assert_close(
        freq, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64), atol=0.03, rtol=0
    )


def test_trajectory_state_is_kept_until_reset_and_reproducible():
    experts = [lambda x, t, c=None: x] * 4

    def draw(seed):
        ens = EnsembleVelocity(
            experts,
            None,
            "mixture",
            generator=torch.Generator().manual_seed(seed),
            prior=torch.ones(4),
        )
        x = torch.zeros(32, 1)
        a = ens.weights(x, torch.full((32,), 0.9))
        b = ens.weights(x, torch.full((32,), 0.1))
        assert torch.equal(a, b)  # the same trajectory keeps its expert
        ens.reset_trace()
        c = ens.weights(x, torch.full((32,), 0.9))
        return a, c

    a1, c1 = draw(5)
    a2, _ = draw(5)
    assert torch.equal(a1, a2) and not torch.equal(a1, c1)


def test_a_new_batch_of_other_classes_draws_again_without_reset():
    """Experts drawn for one batch's classes are not reused for another batch of the same size
    with other classes, even if the caller forgets reset_trace()."""
    experts = [lambda x, t, c=None: x] * 2
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class 0 -> expert 0, class 1 -> expert 1
    ens = EnsembleVelocity(experts, None, "mixture", generator=torch.Generator(), prior=table)
    x, t = torch.zeros(4, 1), torch.full((4,), 0.5)
    assert (ens.weights(x, t, torch.zeros(4, dtype=torch.long))[:, 0] == 1).all()
    assert (ens.weights(x, t, torch.ones(4, dtype=torch.long))[:, 1] == 1).all()


def test_sticky_switches_only_on_a_confident_router_and_keeps_the_switch():
    k, b = 3, 6
    experts = [lambda x, t, c=None: x] * k
    confident = torch.full((b, k), -10.0, dtype=torch.float64)
    confident[:, 2] = 10.0  # p(2) ~ 1 for every sample
    unsure = torch.zeros(b, k, dtype=torch.float64)
    unsure[:, 1] = 0.5  # top prob 0.45 < P
    sequence = iter([unsure, confident, unsure])
    ens = EnsembleVelocity(
        experts,
        lambda x, t, c=None: next(sequence),
        "sticky:0.9",
        generator=torch.Generator().manual_seed(0),
        prior=torch.tensor([1.0, 0.0, 0.0]),  # every trajectory starts at expert 0
    )
    x, t = torch.zeros(b, 1), torch.full((b,), 0.5)
    w1 = ens.weights(x, t)
    assert (w1[:, 0] == 1).all()  # unsure router: keep the prior's expert
    w2 = ens.weights(x, t)
    assert (w2[:, 2] == 1).all() and ens.switches == b  # confident: switch
    w3 = ens.weights(x, t)
    assert (w3[:, 2] == 1).all()  # unsure again: keep the expert switched to
    assert ens.router_calls == 3 * b


def test_schedule_uses_prior_above_t0_and_the_low_routing_below():
    k, b = 4, 8
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(b, k, dtype=torch.float64, generator=g)
    seen = []

    def router(x, t, cond=None):
        seen.append(t.clone())
        return logits[: x.shape[0]]

    experts = [lambda x, t, c=None: x] * k
    ens = EnsembleVelocity(experts, router, "schedule:0.5,top1", generator=g, prior=torch.ones(k))
    x = torch.zeros(b, 1)
    hi = ens.weights(x, torch.full((b,), 0.8))
    assert ens.router_calls == 0 and not seen and ((hi == 0) | (hi == 1)).all()
    lo = ens.weights(x, torch.full((b,), 0.3))
    torch.testing.assert_close(lo, torch.nn.functional.one_hot(logits.argmax(1), k).double())
    # Mixed times in one batch: only the low-t samples are routed (and counted).
    t = torch.tensor([0.9, 0.2] * (b // 2), dtype=torch.float64)
    ens.reset_trace()
    w = ens.weights(x, t)
    assert ens.router_calls == b + b // 2
    assert torch.equal(w[1::2], torch.nn.functional.one_hot(logits[: b // 2].argmax(1), k).double())


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("mixture", Routing("mixture")),
        ("sticky:0.9", Routing("sticky", p=0.9)),
        ("schedule:0.5,top1", Routing("schedule", t0=0.5, low=Routing("top1"))),
        (" Schedule:0.3, TopK:2 ", Routing("schedule", t0=0.3, low=Routing("topk", k=2))),
        (
            "schedule:0.5,nucleus:0.9,0.5",
            Routing("schedule", t0=0.5, low=Routing("nucleus", p=0.9, temperature=0.5)),
        ),
    ],
)
def test_parse_prior_routings(spec, want):
    got = parse_routing(spec)
    assert got == want and parse_routing(str(got)) == got
    assert got.experts_per_step == (2 if "topk" in spec.lower() else 1)


@pytest.mark.parametrize(
    "spec",
    ["mixture:1", "sticky", "sticky:0", "sticky:2", "schedule", "schedule:0.5", "schedule:1,top1",
     "schedule:0,top1", "schedule:x,top1", "schedule:0.5,mixture", "schedule:0.5,oracle",
     "schedule:0.5,schedule:0.2,top1", "schedule:0.5,sticky:0.9", "schedule:0.5,topk:0"],
)  # fmt: skip
def test_parse_prior_routings_invalid(spec):
    with pytest.raises(ConfigError) as err:
        parse_routing(spec)
    assert "\n" not in str(err.value) and "mixture" in str(err.value)


def test_prior_errors():
    experts = [lambda x, t, c=None: x] * 3
    with pytest.raises(ConfigError, match="prior"):
        EnsembleVelocity(experts, None, "mixture")
    with pytest.raises(ConfigError, match="shape"):
        EnsembleVelocity(experts, None, "mixture", prior=torch.ones(4))
    with pytest.raises(ConfigError, match=">= 0"):
        EnsembleVelocity(experts, None, "mixture", prior=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ConfigError, match="no weight"):
        EnsembleVelocity(experts, None, "mixture", prior=torch.tensor([0.0, 0.0, 1.0]), drop=[2])
    with pytest.raises(ConfigError, match="router"):
        EnsembleVelocity(experts, None, "sticky:0.9", prior=torch.ones(3))
    with pytest.raises(ConfigError, match="only 3"):
        EnsembleVelocity(
            experts, lambda x, t, c=None: x, "schedule:0.5,topk:4", prior=torch.ones(3)
        )
