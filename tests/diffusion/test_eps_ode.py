"""An exact ε-model of a finite data set, sampled deterministically through the one conversion
(:class:`EpsilonVelocity`), must reproduce the data set (issue 15, part 1).

The oracle: the closed-form posterior mean x̂0 of 12 points (:class:`EmpiricalFlow`), written as a
DDPM ε-predictor in its own (variance-preserving, step-indexed) coordinates. If the conversion
(SNR matching, VP scaling, x̂0/ε̂ algebra, clipping, the guard near t = 1) were wrong anywhere, the
ODE would land off the points or with the wrong frequencies.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from decentdiff.diffusion import paths as P
from decentdiff.diffusion import solvers as S
from decentdiff.diffusion.reference import EmpiricalFlow


def _points() -> torch.Tensor:
    """12 points on a 4×3 grid in [−0.9, 0.9]², shaped like tiny images (12, 1, 1, 2)."""
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij"), -1)
    data = (grid.reshape(12, 2) - torch.tensor([1.5, 1.0])).double() * 0.55
    data = data + 0.02 * torch.randn(12, 2, dtype=torch.float64, generator=g)
    return data.reshape(12, 1, 1, 2)


class ExactEps(torch.nn.Module):
    """E[ε | x'] of the finite data set in DDPM coordinates: input x' = √ᾱ·x0 + √(1−ᾱ)·ε at model
    time τ = n/T (n fractional, ᾱ interpolated linearly in log-SNR between integer steps, as
    :meth:`DDPM.step_from_time` maps back)."""

    def __init__(self, data: torch.Tensor, ddpm: P.DDPM):
        super().__init__()
        self.flow, self.ddpm = EmpiricalFlow(data), ddpm

    def forward(self, x, tau, cond=None):
        d = self.ddpm
        n = tau.double() * d.timesteps
        lo = n.floor().long().clamp(0, d.timesteps - 2)
        w = n - lo
        key = d._neg_logsnr[lo] * (1 - w) + d._neg_logsnr[lo + 1] * w  # −log SNR
        ab = torch.sigmoid(-key)  # ᾱ = SNR / (1 + SNR)
        t = P.time_from_alpha_bar(ab)
        xd = x.double()
        x_flow = xd / P.bcast(P.vp_scale(t), xd)  # back to the flow state at time t
        x0 = self.flow.denoise(x_flow, t)
        eps = (xd - P.bcast(ab.sqrt(), xd) * x0) / P.bcast((1 - ab).sqrt(), xd)
        return eps.to(x.dtype)


def _land(x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x.reshape(len(x), -1), data.reshape(len(data), -1))
    assert d.min(1).values.max() < 0.05, "a sample ended off the data set"
    return torch.bincount(d.argmin(1), minlength=len(data))


@pytest.mark.parametrize(
    ("solver", "steps", "grid", "clip"),
    [
        ("euler", 200, "uniform", 1.0),
        ("euler", 200, "uniform", None),
        ("heun", 60, "uniform", 1.0),
        ("ddim", 200, "ddpm", None),
        ("ddpm", 100, "ddpm", 1.0),  # ancestral, what --solver auto picks for ε-models
    ],
)
def test_exact_eps_model_reproduces_the_data_set(solver, steps, grid, clip):
    data = _points()
    d = P.DDPM()
    vel = P.EpsilonVelocity(ExactEps(data, d), d, clip_x0=clip)
    ts = S.ddpm_grid(d, steps) if grid == "ddpm" else None
    n = 1200
    x = S.sample(
        vel,
        (n, 1, 1, 2),
        steps=steps,
        solver=solver,
        grid=ts,
        generator=torch.Generator().manual_seed(3),
    ).double()
    counts = _land(x, data)
    assert chisquare(counts.numpy()).pvalue > 1e-3, counts.tolist()


def test_the_check_can_fail():
    """Control: an ε-model 5% off (ε̂ scaled by 1.05, a small systematic error) fails the landing
    check, so the test above would catch a conversion error of that size."""
    data = _points()
    d = P.DDPM()
    exact = ExactEps(data, d)

    class Off(torch.nn.Module):
        def forward(self, x, tau, cond=None):
            eps = exact(x, tau)
            return eps * 1.05

    x = S.sample(
        P.EpsilonVelocity(Off(), d, clip_x0=1.0),
        (300, 1, 1, 2),
        steps=200,
        generator=torch.Generator().manual_seed(3),
    ).double()
    with pytest.raises(AssertionError):
        counts = _land(x, data)
        assert chisquare(counts.numpy()).pvalue > 1e-3


class ExactSkip(torch.nn.Module):
    """The same exact model for ``eps_param=skip``: the network output F that makes
    ε̂ = √(1−ᾱ)·z + √ᾱ·F equal E[ε | z], i.e. F = (E[ε | z] − √(1−ᾱ)·z)/√ᾱ."""

    def __init__(self, data: torch.Tensor, ddpm: P.DDPM):
        super().__init__()
        self.eps, self.ddpm = ExactEps(data, ddpm), ddpm

    def forward(self, x, tau, cond=None):
        d = self.ddpm
        n = tau.double() * d.timesteps
        lo = n.floor().long().clamp(0, d.timesteps - 2)
        w = n - lo
        ab = torch.sigmoid(-(d._neg_logsnr[lo] * (1 - w) + d._neg_logsnr[lo + 1] * w))
        ab = P.bcast(ab, x.double())
        return ((self.eps(x, tau).double() - (1 - ab).sqrt() * x.double()) / ab.sqrt()).to(x.dtype)


@pytest.mark.parametrize(
    ("solver", "steps", "grid"), [("euler", 200, "uniform"), ("ddim", 200, "ddpm")]
)
def test_exact_skip_eps_model_reproduces_the_data_set(solver, steps, grid):
    """``eps_param=skip`` goes through the same conversion: its exact network lands on the data."""
    data = _points()
    d = P.DDPM(eps_param="skip")
    vel = P.EpsilonVelocity(ExactSkip(data, d), d, clip_x0=None)
    x = S.sample(
        vel,
        (1200, 1, 1, 2),
        steps=steps,
        solver=solver,
        grid=S.ddpm_grid(d, steps) if grid == "ddpm" else None,
        generator=torch.Generator().manual_seed(3),
    ).double()
    assert chisquare(_land(x, data).numpy()).pvalue > 1e-3


def test_the_skip_model_read_as_direct_fails():
    """Control: the skip network's output read as ε̂ (``direct``) does not land on the data, so the
    test above checks that the skip connection is applied."""
    data = _points()
    d = P.DDPM(eps_param="skip")
    vel = P.EpsilonVelocity(ExactSkip(data, d), P.DDPM(eps_param="direct"), clip_x0=None)
    x = S.sample(vel, (300, 1, 1, 2), steps=200, generator=torch.Generator().manual_seed(3))
    with pytest.raises(AssertionError):
        _land(x.double(), data)


def test_skip_eps_loss_is_the_alpha_bar_weighted_v_loss():
    """Re-derived: with ε̂ = √(1−ᾱ)·z + √ᾱ·F and z = √ᾱ·x0 + √(1−ᾱ)·ε, ε̂ − ε = √ᾱ·(F − v) for
    v = √ᾱ·ε − √(1−ᾱ)·x0, so the ε-MSE equals the mean of ᾱ·(F − v)² (same draws)."""
    d = P.DDPM(eps_param="skip")
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    class Lin(torch.nn.Module):  # any network: a fixed input- and time-dependent map
        def forward(self, z, tau, cond=None):
            return 0.3 * z - P.bcast(tau, z) + 0.1

    loss = d.loss(Lin(), x0, None, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws, in the order DDPM.loss makes them
    n = torch.randint(0, d.timesteps, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g).double()
    ab = P.bcast(d.alphas_cumprod[n], x0)
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    f = 0.3 * z - P.bcast(n.double() / d.timesteps, z) + 0.1
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    expected = (ab * (f - v) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-9), (float(loss), float(expected))
