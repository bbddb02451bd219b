"""Tests of the DDM ensemble (decentdiff.ddm.ensemble): exactness, routing semantics and cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decentdiff.ddm.ensemble import EnsembleVelocity
from decentdiff.ddm.routing import ROUTING_FORMS, Routing, parse_routing
from decentdiff.diffusion.reference import EmpiricalFlow, EmpiricalRouter, cluster_velocities
from decentdiff.errors import ConfigError


def _euler(velocity, noise: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """Plain Euler on dx/dt = v from t = 1 (noise) to t = 0 (data)."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x = noise.clone()
    for i in range(steps):
        t = ts[i].expand(x.shape[0])
        x = x + (ts[i + 1] - ts[i]) * velocity(x, t)
    return x


class _Counting:
    """Mock expert k: v = (k + 1)·x; records which sample ids (stored in x) it was evaluated on."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls: list[list[int]] = []

    def __call__(self, x, t, cond=None):
        assert x.shape[0] == t.shape[0]
        self.calls.append(x[:, 0, 0, 0].long().tolist())
        return (self.k + 1) * x


def _fixed_router(logits: torch.Tensor):
    def router(x, t, cond=None):
        assert x.shape[0] == logits.shape[0]
        return logits

    return router


def _mock_setup(b: int = 12, k: int = 4, seed: int = 0):
    """Experts 0..k-1, ids in x, logits whose argmax never picks expert k-1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(b, dtype=torch.float64).reshape(b, 1, 1, 1).expand(b, 1, 2, 2).clone()
    assign = torch.arange(b) % (k - 1)
    logits = torch.randn(b, k, dtype=torch.float64, generator=g)
    logits[torch.arange(b), assign] += 10.0
    return (
        x,
        torch.full((b,), 0.5, dtype=torch.float64),
        logits,
        assign,
        [_Counting(i) for i in range(k)],
    )


# ---------------------------------------------------------------------------------- exactness


def test_full_ensemble_sampling_equals_global_flow():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(40, 6, dtype=torch.float64, generator=g)
    labels = (torch.arange(40) % 3)[torch.randperm(40, generator=g)]
    noise = torch.randn(16, 6, dtype=torch.float64, generator=g)
    ens = EnsembleVelocity(cluster_velocities(data, labels), EmpiricalRouter(data, labels), "full")
    got = _euler(ens, noise)
    want = _euler(EmpiricalFlow(data), noise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Sanity of the integration itself: the empirical flow lands next to training points.
    assert torch.cdist(want, data).min(1).values.max() < 0.3


def test_top1_agrees_when_posterior_one_hot_and_differs_when_mixed():
    g = torch.Generator().manual_seed(1)
    centres = torch.zeros(2, 4, dtype=torch.float64)
    centres[0, 0], centres[1, 0] = 4.0, -4.0
    labels = torch.arange(30) % 2
    data = centres[labels] + 0.3 * torch.randn(30, 4, dtype=torch.float64, generator=g)
    router = EmpiricalRouter(data, labels)
    experts = cluster_velocities(data, labels)
    full = EnsembleVelocity(experts, router, "full")
    top1 = EnsembleVelocity(experts, router, "top1")

    # Near cluster 0's centre at small t: the posterior is one-hot.
    t = torch.full((5,), 0.05, dtype=torch.float64)
    x = (1 - t[:, None]) * centres[0] + t[:, None] * torch.randn(5, 4, dtype=torch.float64)
    assert (router(x, t).exp().max(1).values > 1 - 1e-9).all()
    torch.testing.assert_close(top1(x, t), full(x, t), rtol=0, atol=1e-6)

    # Midway between the clusters at larger t: mixed posterior, top1 is a different velocity.
    t = torch.full((5,), 0.7, dtype=torch.float64)
    x = 0.7 * torch.randn(5, 4, dtype=torch.float64, generator=g)
    x[:, 0] = 0.0
    assert (router(x, t).exp().max(1).values < 0.9).all()
    assert ((top1(x, t) - full(x, t)).abs().amax(1) > 0.5).all()


# ---------------------------------------------------------------------------------- cost


def test_cost_full_top1_topk_and_scatter_back():
    x, t, logits, assign, experts = _mock_setup()
    b, k = logits.shape
    probs = torch.softmax(logits, 1)
    ids = list(range(b))

    full = EnsembleVelocity(experts, _fixed_router(logits), "full")
    want = (probs * torch.arange(1, k + 1, dtype=torch.float64)).sum(1)
    torch.testing.assert_close(full(x, t), want.reshape(b, 1, 1, 1) * x)
    assert full.expert_calls == [b] * k and full.router_calls == b
    assert all(e.calls == [ids] for e in experts)

    x, t, logits, assign, experts = _mock_setup()
    top1 = EnsembleVelocity(experts, _fixed_router(logits), "top1")
    torch.testing.assert_close(top1(x, t), (assign + 1).double().reshape(b, 1, 1, 1) * x)
    assert sum(top1.expert_calls) == b
    for i, e in enumerate(experts[:-1]):
        assert e.calls == [torch.nonzero(assign == i).reshape(-1).tolist()]
    assert experts[-1].calls == [] and top1.expert_calls[-1] == 0  # no sample: never called

    x, t, logits, assign, experts = _mock_setup()
    top2 = EnsembleVelocity(experts, _fixed_router(logits), "topk:2")
    v = top2(x, t)
    assert sum(top2.expert_calls) == 2 * b
    order = np.argsort(-probs.numpy(), axis=1)[:, :2]
    p2 = np.take_along_axis(probs.numpy(), order, 1)
    want = (p2 * (order + 1)).sum(1) / p2.sum(1)
    np.testing.assert_allclose(v[:, 0, 0, 0].numpy(), want * np.arange(b), rtol=1e-12)
    for i, e in enumerate(experts):
        assert e.calls in ([], [np.nonzero((order == i).any(1))[0].tolist()])


def test_cost_drop_and_zero_probability_experts():
    x, t, logits, assign, experts = _mock_setup()
    b = logits.shape[0]
    ens = EnsembleVelocity(experts, _fixed_router(logits), "top1", drop=[0])
    v = ens(x, t)
    assert experts[0].calls == [] and ens.expert_calls[0] == 0 and sum(ens.expert_calls) == b
    second = logits[:, 1:].argmax(1) + 1  # best remaining expert
    want = torch.where(assign == 0, second, assign) + 1
    torch.testing.assert_close(v, want.double().reshape(b, 1, 1, 1) * x)
    w = ens.weights(x, t)
    assert (w[:, 0] == 0).all()

    # full routing: a dropped expert and one the router rules out (−inf) are not called; the
    # rest are renormalised.
    x, t, logits, _, experts = _mock_setup()
    logits[:, 3] = float("-inf")
    ens = EnsembleVelocity(experts, _fixed_router(logits), "full", drop=[1])
    v = ens(x, t)
    assert experts[1].calls == [] and experts[3].calls == []
    p = torch.softmax(logits[:, [0, 2]], 1)
    want = p[:, 0] * 1 + p[:, 1] * 3
    torch.testing.assert_close(v, want.reshape(b, 1, 1, 1) * x)
    assert ens.expert_calls == [b, 0, b, 0]


def test_drop_validation():
    experts = [_Counting(i) for i in range(3)]
    router = _fixed_router(torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="every expert"):
        EnsembleVelocity(experts, router, "full", drop=[0, 1, 2])
    with pytest.raises(ConfigError, match="outside"):
        EnsembleVelocity(experts, router, "full", drop=[3])
    with pytest.raises(ConfigError, match="only 3"):
        EnsembleVelocity(experts, router, "topk:4")
    with pytest.raises(ConfigError, match="needs a router"):
        EnsembleVelocity(experts, None, "top1")
    # k larger than the experts left after a drop uses all of them.
    x = torch.arange(2, dtype=torch.float64).reshape(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    ens = EnsembleVelocity(experts, router, "topk:3", drop=[2])
    w = ens.weights(x, torch.full((2,), 0.5))
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5, 0.0]] * 2, dtype=torch.float64))


# ---------------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("full", Routing("full")),
        ("top1", Routing("top1")),
        (" TopK:2 ", Routing("topk", k=2)),
        ("sample:1", Routing("sample", k=1)),
        ("threshold:0.05", Routing("threshold", p=0.05)),
        ("threshold:1", Routing("threshold", p=1.0)),
        ("nucleus:0.9", Routing("nucleus", p=0.9)),
        ("nucleus:0.9,0.5", Routing("nucleus", p=0.9, temperature=0.5)),
        ("oracle", Routing("oracle")),
    ],
)
def test_parse_valid(spec, want):
    got = parse_routing(spec)
    assert got == want
    assert parse_routing(str(got)) == got
    assert parse_routing(got) is got


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "top2",
        "topk",
        "topk:",
        "topk:0",
        "topk:1.5",
        "topk:-1",
        "sample:two",
        "threshold:0",
        "threshold:1.5",
        "threshold:nan",
        "nucleus:0.9,0",
        "nucleus:0.9,-1",
        "nucleus:0.9,1,2",
        "full:1",
        "oracle:3",
    ],
)
def test_parse_invalid(spec):
    with pytest.raises(ConfigError) as err:
        parse_routing(spec)
    msg = str(err.value)
    assert "\n" not in msg and ROUTING_FORMS in msg
    for form in ("full", "top1", "topk:K", "sample:K", "threshold:P", "nucleus:P,T", "oracle"):
        assert form in msg


def _random_setup(b: int = 64, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(b, k, dtype=torch.float64, generator=g)
    x = torch.randn(b, 3, dtype=torch.float64, generator=g)
    experts = [lambda x, t, c=None, i=i: (i + 1) * x for i in range(k)]
    return x, torch.full((b,), 0.5, dtype=torch.float64), logits, experts


@pytest.mark.parametrize(
    "spec", ["full", "top1", "topk:2", "sample:1", "sample:3", "threshold:0.2", "nucleus:0.8,2"]
)
def test_weights_are_distributions(spec):
    x, t, logits, experts = _random_setup()
    ens = EnsembleVelocity(experts, _fixed_router(logits), spec, generator=torch.Generator())
    w = ens.weights(x, t)
    assert w.shape == logits.shape and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(64, dtype=torch.float64))
    nnz = (w > 0).sum(1)
    if spec in ("top1", "sample:1") or spec.startswith("nucleus"):
        assert (nnz == 1).all()
    if spec in ("topk:2", "sample:3"):
        assert (nnz == int(spec[-1])).all()
    # The velocity mixes the experts with exactly these weights.
    ens.generator = None
    if not parse_routing(spec).stochastic:
        v = ens(x, t)
        torch.testing.assert_close(
            v, (w * torch.arange(1.0, 6.0, dtype=w.dtype)).sum(1)[:, None] * x
        )


def test_sample_deterministic_with_seeded_generator_and_right_frequencies():
    x, t, logits, experts = _random_setup()

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return EnsembleVelocity(experts, _fixed_router(logits), "sample:2", generator=gen).weights(
            x, t
        )

    torch.testing.assert_close(draw(7), draw(7), rtol=0, atol=0)
    assert not torch.equal(draw(7), draw(8))
    # sample:2 keeps the router's probabilities of the two drawn experts, renormalised.
    w, probs = draw(3), torch.softmax(logits, 1)
    kept = w > 0
    torch.testing.assert_close(w, probs * kept / (probs * kept).sum(1, keepdim=True))

    # sample:1 frequencies follow the router softmax (4000 draws of one row).
    row = torch.tensor([[1.0, 0.0, -1.0, 0.5]], dtype=torch.float64).expand(4000, 4)
    ens = EnsembleVelocity(
        [lambda x, t, c=None: x] * 4,
        _fixed_router(row),
        "sample:1",
        generator=torch.Generator().manual_seed(0),
    )
    freq = ens.weights(torch.zeros(4000, 1), torch.full((4000,), 0.5)).mean(0)
    torch.testing.assert_close(freq, torch.softmax(row[0], 0), rtol=0, atol=0.03)


def test_threshold_fallback_and_selection():
    logits = torch.log(torch.tensor([[0.4, 0.35, 0.25], [0.7, 0.2, 0.1]], dtype=torch.float64))
    experts = [lambda x, t, c=None: x] * 3
    x, t = torch.zeros(2, 1), torch.full((2,), 0.5)
    w = EnsembleVelocity(experts, _fixed_router(logits), "threshold:0.3").weights(x, t)
    want = torch.tensor([[0.4 / 0.75, 0.35 / 0.75, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(w, want)
    # Nothing reaches 0.9: fall back to top1.
    w = EnsembleVelocity(experts, _fixed_router(logits), "threshold:0.9").weights(x, t)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64))


def test_nucleus():
    x, t, logits, experts = _random_setup()
    router = _fixed_router(logits)
    gen = torch.Generator().manual_seed(0)
    tiny = EnsembleVelocity(experts, router, "nucleus:1e-9,0.3", generator=gen).weights(x, t)
    top1 = EnsembleVelocity(experts, router, "top1").weights(x, t)
    torch.testing.assert_close(tiny, top1, rtol=0, atol=0)

    # probs (0.5, 0.3, 0.2) with p = 0.6: the nucleus is {0, 1}, drawn with 0.625 / 0.375.
    row = torch.log(torch.tensor([[0.3, 0.5, 0.2]], dtype=torch.float64)).expand(4000, 3)
    ens = EnsembleVelocity(
        [lambda x, t, c=None: x] * 3, _fixed_router(row), "nucleus:0.6", generator=gen
    )
    freq = ens.weights(torch.zeros(4000, 1), torch.full((4000,), 0.5)).mean(0)
    torch.testing.assert_close(
        freq, torch.tensor([0.375, 0.625, 0.0], dtype=torch.float64), atol=0.03, rtol=0
    )

    # Temperature: p = 1 keeps every expert, drawn from softmax(logits / T).
    row = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64).expand(4000, 3)
    ens = EnsembleVelocity(
        [lambda x, t, c=None: x] * 3, _fixed_router(row), "nucleus:1,2", generator=gen
    )
    freq = ens.weights(torch.zeros(4000, 1), torch.full((4000,), 0.5)).mean(0)
    torch.testing.assert_close(freq, torch.softmax(row[0] / 2, 0), atol=0.03, rtol=0)


def test_oracle():
    experts = [_Counting(i) for i in range(3)]
    x = torch.arange(4, dtype=torch.float64).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    t = torch.full((4,), 0.5, dtype=torch.float64)
    labels = torch.tensor([2, 0, 2, 1])
    ens = EnsembleVelocity(experts, None, "oracle", oracle_labels=labels)  # no router needed
    torch.testing.assert_close(ens(x, t), (labels + 1).double().reshape(4, 1, 1, 1) * x)
    assert ens.expert_calls == [1, 1, 2] and ens.router_calls == 0
    assert experts[2].calls == [[0, 2]]
    with pytest.raises(ConfigError, match="oracle_labels"):
        EnsembleVelocity(experts, None, "oracle")
    ens.oracle_labels = torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="oracle_labels"):
        ens(x, t)
    dropped = EnsembleVelocity(experts, None, "oracle", oracle_labels=labels, drop=[2])
    with pytest.raises(ConfigError, match="dropped"):
        dropped(x, t)


def test_trace_mean_weights_for_attribution():
    x, t, logits, experts = _random_setup(b=8)
    calls = iter([logits, torch.flip(logits, [1])])
    ens = EnsembleVelocity(experts, lambda x, t, c=None: next(calls), "top1")
    with pytest.raises(RuntimeError):
        ens.mean_weights()
    ens(x, t)
    ens(x, t)
    first = torch.nn.functional.one_hot(logits.argmax(1), 5).double()
    second = torch.nn.functional.one_hot(4 - logits.argmax(1), 5).double()
    torch.testing.assert_close(ens.mean_weights(), (first + second) / 2)
    torch.testing.assert_close(ens.trace, first + second)
    ens.reset_trace()
    assert ens.trace is None
    ens.reset_counts()
    assert ens.expert_calls == [0] * 5 and ens.router_calls == 0


def test_conditional_ensemble_passes_cond_to_experts():
    """Class-conditional exact experts + conditional router reproduce the conditional flow."""
    g = torch.Generator().manual_seed(2)
    data = torch.randn(48, 5, dtype=torch.float64, generator=g)
    clusters = torch.arange(48) % 3
    classes = (torch.arange(48) // 3) % 4
    ens = EnsembleVelocity(
        cluster_velocities(data, clusters, class_labels=classes),
        EmpiricalRouter(data, clusters, class_labels=classes),
        "full",
    )
    x = torch.randn(8, 5, dtype=torch.float64, generator=g)
    t = torch.rand(8, dtype=torch.float64, generator=g) * 0.9 + 0.05
    cond = torch.arange(8) % 4
    torch.testing.assert_close(ens(x, t, cond), EmpiricalFlow(data, classes)(x, t, cond))
