"""v-prediction (issue 15): the exact v-model of a finite data set, sampled through the one
conversion (:class:`VVelocity`), reproduces the data set; its loss target is Salimans & Ho's v."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from decentdiff.diffusion import paths as P
from decentdiff.diffusion import solvers as S
from decentdiff.errors import ConfigError

from .test_eps_ode import ExactEps, _land, _points


class ExactV(torch.nn.Module):
    """v = √ᾱ·ε − √(1−ᾱ)·x0 of the data set, from the exact ε-model (x0 = (x' − √(1−ᾱ)ε)/√ᾱ
    written as v = (ε − √(1−ᾱ)·x')/√ᾱ)."""

    def __init__(self, data: torch.Tensor, obj: P.VPrediction, scale: float = 1.0):
        super().__init__()
        self.eps, self.obj, self.scale = ExactEps(data, obj), obj, scale

    def forward(self, x, tau, cond=None):
        d = self.obj
        n = tau.double() * d.timesteps
        lo = n.floor().long().clamp(0, d.timesteps - 2)
        w = n - lo
        ab = torch.sigmoid(-(d._neg_logsnr[lo] * (1 - w) + d._neg_logsnr[lo + 1] * w))
        eps = self.eps(x, tau).double()
        a, s = P.bcast(ab.sqrt(), eps), P.bcast((1 - ab).sqrt(), eps)
        x0 = (x.double() - s * eps) / a
        return (self.scale * (a * eps - s * x0)).to(x.dtype)


@pytest.mark.parametrize(("solver", "steps"), [("euler", 200), ("heun", 60), ("ddpm", 100)])
def test_exact_v_model_reproduces_the_data_set(solver, steps):
    data = _points()
    obj = P.VPrediction()
    grid = S.ddpm_grid(obj, steps) if solver == "ddpm" else None
    x = S.sample(P.VVelocity(ExactV(data, obj), obj), (1200, 1, 1, 2), steps=steps,
                 solver=solver, grid=grid, generator=torch.Generator().manual_seed(3))  # fmt: skip
    counts = _land(x.double(), data)
    assert chisquare(counts.numpy()).pvalue > 1e-3, counts.tolist()


def test_the_check_can_fail():
    """Control: the same exact v-model read through the wrong conversion (as if it were an
    ε-model) misses the data set, so the test above catches a conversion that mixes them up. (A
    v-model whose output is 20% off still lands on the points: x̂0's error √(1−ᾱ)·δ vanishes as
    t → 0, the robustness v-prediction is chosen for.)"""
    data = _points()
    obj = P.VPrediction()
    x = S.sample(P.EpsilonVelocity(ExactV(data, obj), obj), (300, 1, 1, 2), steps=200,
                 generator=torch.Generator().manual_seed(3))  # fmt: skip
    with pytest.raises(AssertionError):
        counts = _land(x.double(), data)
        assert chisquare(counts.numpy()).pvalue > 1e-3


def test_loss_target_is_salimans_and_hos_v():
    """The loss regresses √ᾱ_n·ε − √(1−ᾱ_n)·x0 at the state √ᾱ_n·x0 + √(1−ᾱ_n)·ε (re-derived from
    the β schedule in NumPy-free float64 here, independently of the class's cumprod)."""
    obj = P.VPrediction(schedule="linear", timesteps=50)
    betas = torch.linspace(1e-4, 0.02, 50, dtype=torch.float64)
    ab_all = torch.ones(50, dtype=torch.float64)
    acc = 1.0
    for i in range(50):
        acc *= 1 - float(betas[i])
        ab_all[i] = acc
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 2, 2, generator=g)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, tau, cond=None):
            seen["x"], seen["tau"] = x, tau
            return torch.zeros_like(x)

    gen = torch.Generator().manual_seed(1)
    loss = obj.loss(Spy(), x0, None, gen)
    gen = torch.Generator().manual_seed(1)  # the same draws as inside loss
    n = torch.randint(0, 50, (6,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    ab = ab_all[n].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    torch.testing.assert_close(seen["tau"], n.float() / 50)
    target = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(loss, target.pow(2).mean())


def test_vpred_is_an_objective_and_auto_samples_it_by_euler(tmp_path):
    assert isinstance(P.make_objective("vpred"), P.VPrediction)
    with pytest.raises(ConfigError, match="weighting"):
        P.make_objective("vpred", weighting="velocity:10")
    assert S.AUTO_SOLVER["vpred"] == "euler"
