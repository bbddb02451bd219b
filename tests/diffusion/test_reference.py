"""Tests of the closed-form oracle (decentdiff.diffusion.reference) against independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from decentdiff.diffusion.reference import (
    EmpiricalFlow,
    EmpiricalRouter,
    cluster_velocities,
)
from decentdiff.errors import ConfigError


def _partitioned(seed: int, n: int = 40, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random float64 data (n, dim) and cluster labels in [0, K) with no empty cluster."""
    g = torch.Generator().manual_seed(seed)
    k = [2, 3, 5][int(torch.randint(0, 3, (1,), generator=g))]
    data = torch.randn(n, dim, dtype=torch.float64, generator=g)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    return data, labels, k


def _noisy(data: torch.Tensor, b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t for random data points (half) or pure random points (half), t ~ U(0.05, 0.95)."""
    g = torch.Generator().manual_seed(seed + 1000)
    t = 0.05 + 0.9 * torch.rand(b, dtype=torch.float64, generator=g)
    idx = torch.randint(0, data.shape[0], (b,), generator=g)
    eps = torch.randn(b, *data.shape[1:], dtype=torch.float64, generator=g)
    tb = t.reshape(-1, *([1] * (data.ndim - 1)))
    x = (1 - tb) * data[idx] + tb * eps
    x[b // 2 :] = 2 * torch.randn(b - b // 2, *data.shape[1:], dtype=torch.float64, generator=g)
    return x, t


def _numpy_flow(data, x, t, cls=None, cond=None):
    """Brute force: Gaussian-mixture posterior over points, then Σ p_i (ε_i − x0_i)."""
    x0 = data.reshape(data.shape[0], -1)
    xf = x.reshape(x.shape[0], -1)
    out = np.empty_like(xf)
    for b in range(xf.shape[0]):
        keep = np.ones(x0.shape[0], bool) if cond is None else cls == cond[b]
        pts = x0[keep]
        logk = -((xf[b] - (1 - t[b]) * pts) ** 2).sum(1) / (2 * t[b] ** 2)
        post = np.exp(logk - logsumexp(logk))
        eps = (xf[b] - (1 - t[b]) * pts) / t[b]
        out[b] = (post[:, None] * (eps - pts)).sum(0)
    return out.reshape(x.shape)


def test_flow_matches_numpy_bruteforce():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 2, 3))  # non-image sample shape on purpose
    x = rng.normal(size=(5, 2, 3))
    t = rng.uniform(0.05, 0.95, size=5)
    want = _numpy_flow(data, x, t)
    got = EmpiricalFlow(torch.from_numpy(data))(torch.from_numpy(x), torch.from_numpy(t))
    assert got.shape == x.shape and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_router_matches_numpy_bruteforce():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(9, 4))
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1])
    x = rng.normal(size=(6, 4))
    t = rng.uniform(0.1, 0.9, size=6)
    logk = -((x[:, None, :] - (1 - t[:, None, None]) * data[None]) ** 2).sum(-1) / (
        2 * t[:, None] ** 2
    )
    want = np.stack([logsumexp(logk[:, labels == k], axis=1) for k in range(3)], 1)
    want -= logsumexp(logk, axis=1, keepdims=True)
    got = EmpiricalRouter(torch.from_numpy(data), torch.from_numpy(labels))(
        torch.from_numpy(x), torch.from_numpy(t)
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_mixture_identity(seed):
    """PAPERS.md §1: Σ_k p(k|x_t)·u^(k)(x_t) = u_t(x_t) with the exact posterior and flows."""
    data, labels, k = _partitioned(seed)
    x, t = _noisy(data, 16, seed)
    probs = EmpiricalRouter(data, labels)(x, t).exp()
    assert probs.shape == (16, k)
    torch.testing.assert_close(probs.sum(1), torch.ones(16, dtype=torch.float64))
    mix = sum(probs[:, i : i + 1] * f(x, t) for i, f in enumerate(cluster_velocities(data, labels)))
    torch.testing.assert_close(mix, EmpiricalFlow(data)(x, t), rtol=1e-6, atol=1e-6)


def test_mixture_identity_class_conditional():
    data, clusters, _ = _partitioned(3, n=60)
    classes = torch.arange(60) % 4
    x, t = _noisy(data, 12, 3)
    cond = torch.arange(12) % 4
    probs = EmpiricalRouter(data, clusters, class_labels=classes)(x, t, cond).exp()
    flows = cluster_velocities(data, clusters, class_labels=classes)
    mix = torch.zeros_like(x)
    for i, f in enumerate(flows):
        rows = probs[:, i] > 0  # a cluster without points of class c has p = 0 and no velocity
        mix[rows] += probs[rows, i : i + 1] * f(x[rows], t[rows], cond[rows])
    torch.testing.assert_close(mix, EmpiricalFlow(data, classes)(x, t, cond), rtol=1e-6, atol=1e-6)


def test_class_conditional_restricts_to_class():
    data, _, _ = _partitioned(4, n=30)
    classes = torch.tensor([0, 1, 2] * 10)
    x, t = _noisy(data, 9, 4)
    cond = torch.tensor([0, 1, 2] * 3)
    got = EmpiricalFlow(data, classes)(x, t, cond)
    for c in range(3):
        rows = cond == c
        want = EmpiricalFlow(data[classes == c])(x[rows], t[rows])
        torch.testing.assert_close(got[rows], want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        got.numpy(),
        _numpy_flow(data.numpy(), x.numpy(), t.numpy(), classes.numpy(), cond.numpy()),
        rtol=1e-9,
        atol=1e-9,
    )
    # Without labels cond is ignored (unconditional model); an absent class is a user error.
    torch.testing.assert_close(EmpiricalFlow(data)(x, t, cond), EmpiricalFlow(data)(x, t))
    with pytest.raises(ConfigError, match="no data points"):
        EmpiricalFlow(data, classes)(x, t, torch.full((9,), 7))


def test_chunking_does_not_change_results():
    data, labels, _ = _partitioned(5, n=50)
    x, t = _noisy(data, 10, 5)
    torch.testing.assert_close(
        EmpiricalFlow(data, chunk_size=3)(x, t), EmpiricalFlow(data)(x, t), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        EmpiricalRouter(data, labels, chunk_size=7)(x, t),
        EmpiricalRouter(data, labels)(x, t),
        rtol=1e-12,
        atol=1e-12,
    )


def test_limits_in_time():
    data, _, _ = _partitioned(6, n=20)
    flow = EmpiricalFlow(data)
    x = torch.randn(4, 6, dtype=torch.float64)
    # t = 1: every kernel has the same mean 0, the posterior is uniform, u = x − mean(data).
    torch.testing.assert_close(flow(x, torch.ones(4)), x - data.mean(0))
    # t → 0 on a data point: the posterior collapses onto it; t = 0 is clamped (finite output).
    t = torch.full((4,), 1e-3, dtype=torch.float64)
    on_point = (1 - t[:, None]) * data[:4] + t[:, None] * torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(flow.denoise(on_point, t), data[:4])
    assert torch.isfinite(flow(data[:4], torch.zeros(4))).all()
    # A scalar t is broadcast.
    torch.testing.assert_close(flow(x, 0.3), flow(x, torch.full((4,), 0.3, dtype=torch.float64)))
    post = flow.posterior(x, torch.full((4,), 0.5))
    assert post.shape == (4, 20)
    torch.testing.assert_close(post.sum(1), torch.ones(4, dtype=torch.float64))


def test_empty_cluster():
    data, _, _ = _partitioned(7, n=12)
    labels = torch.tensor([0, 2] * 6)  # cluster 1 empty
    logits = EmpiricalRouter(data, labels, num_parts=4)(data[:3], torch.full((3,), 0.5))
    assert logits.shape == (3, 4)
    assert torch.isneginf(logits[:, [1, 3]]).all() and torch.isfinite(logits[:, [0, 2]]).all()
    with pytest.raises(ConfigError, match="cluster 1 is empty"):
        cluster_velocities(data, labels)
    with pytest.raises(ConfigError):
        EmpiricalRouter(data, labels, num_parts=2)


def test_mnist_sized_float32_fits():
    """N = 5000 points of 784 dims, B = 64: chunked, float64 inside, float32 out."""
    g = torch.Generator().manual_seed(0)
    data = torch.rand(5000, 1, 28, 28, generator=g) * 2 - 1
    x = torch.randn(64, 1, 28, 28, generator=g)
    t = torch.rand(64, generator=g)
    v = EmpiricalFlow(data)(x, t)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    logp = EmpiricalRouter(data, torch.arange(5000) % 8)(x, t)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(64))
