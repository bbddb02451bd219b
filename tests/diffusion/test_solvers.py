"""Samplers against analytic velocity fields and against diffusers' DDIM / DDPM schedulers."""

import pytest
import torch

from decentdiff.diffusion import paths as P
from decentdiff.diffusion import solvers as S
from decentdiff.errors import ConfigError

from .test_paths import gaussian_velocity

MU, SD = 0.4, 0.6


def gauss_v(x, t, cond=None):
    return gaussian_velocity(x, t, MU, SD)


@pytest.mark.parametrize(
    "solver,steps,tol", [("euler", 400, 1e-2), ("heun", 40, 3e-3), ("heun", 160, 2e-4)]
)
def test_ode_solvers_follow_the_exact_gaussian_flow_map(solver, steps, tol):
    """For Gaussian data the probability-flow map is affine: noise z ↦ μ + s·z exactly."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 1, 2, 2, generator=g, dtype=torch.float64)
    x = S.get_solver(solver)(gauss_v, z.clone(), S.uniform_grid(steps))
    assert torch.allclose(x, MU + SD * z, atol=tol)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_convergence_order(solver, order):
    """Quadrupling the steps divides the error by about 4**order."""
    z = torch.randn(32, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errs = [
        (S.get_solver(solver)(gauss_v, z.clone(), S.uniform_grid(n)) - (MU + SD * z)).abs().max()
        for n in (40, 160)
    ]
    ratio = (errs[0] / errs[1]).item()
    assert 4**order * 0.7 < ratio < 4**order * 1.5


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    z = torch.randn(32, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    err = {
        name: (S.get_solver(name)(gauss_v, z.clone(), S.uniform_grid(20)) - (MU + SD * z))
        .abs()
        .max()
        for name in ("euler", "heun")
    }
    assert err["heun"] < err["euler"] / 5


def test_ddpm_ancestral_sampler_matches_gaussian_moments():
    g = torch.Generator().manual_seed(2)
    x = S.sample(gauss_v, (20000, 1, 1, 1), steps=100, solver="ddpm", generator=g)
    assert abs(x.mean().item() - MU) < 0.02
    assert abs(x.std().item() - SD) < 0.02


class ExactEps(torch.nn.Module):
    """Optimal DDPM ε-predictor of N(MU, SD²) data at integer steps (re-derived in DDPM space)."""

    def __init__(self, ddpm):
        super().__init__()
        self.d = ddpm

    def forward(self, x, tau, cond=None):
        n = (tau.double() * self.d.timesteps).round().long()
        ab = self.d.alphas_cumprod[n].reshape(-1, 1, 1, 1)
        return ((1 - ab).sqrt() * (x.double() - ab.sqrt() * MU) / (ab * SD**2 + 1 - ab)).to(x.dtype)

    def diffusers_eps(self, x, n: int):
        return self.forward(x, torch.full((x.shape[0],), n / self.d.timesteps, dtype=torch.float64))


def test_ddim_on_eps_model_matches_diffusers_ddim():
    diffusers = pytest.importorskip("diffusers")
    d = P.DDPM()
    model = ExactEps(d)
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False
    )
    ref.set_timesteps(20)
    z = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xr = z.clone()
    for n in ref.timesteps:
        xr = ref.step(model.diffusers_eps(xr, int(n)), int(n), xr).prev_sample
    grid = S.ddpm_grid(d, 20)
    x = z * P.start_scale(float(grid[0]))  # the same VP noise, expressed in flow space
    ours = S.ddim(P.EpsilonVelocity(model, d, clip_x0=None), x, grid)
    assert torch.allclose(ours, xr, atol=1e-5)


def test_ddpm_ancestral_on_eps_model_matches_diffusers_ddpm():
    diffusers = pytest.importorskip("diffusers")
    d = P.DDPM()
    model = ExactEps(d)
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False
    )
    ref.set_timesteps(20)
    z = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xr, gr = z.clone(), torch.Generator().manual_seed(5)
    for n in ref.timesteps:
        xr = ref.step(
            model.diffusers_eps(xr, int(n)).float(), int(n), xr.float(), generator=gr
        ).prev_sample
        xr = xr.double()
    grid = S.ddpm_grid(d, 20)
    x = z * P.start_scale(float(grid[0]))
    ours = S.ddpm(
        P.EpsilonVelocity(model, d, clip_x0=None),
        x,
        grid,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.allclose(ours.float(), xr.float(), atol=1e-4)


def test_ddim_equals_euler_without_clipping():
    z = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    grid = S.uniform_grid(10)
    assert torch.allclose(
        S.ddim(gauss_v, z.clone(), grid), S.euler(gauss_v, z.clone(), grid), atol=1e-12
    )


def test_classifier_free_guidance_formula():
    # v_c(x) = c·1, v_u(x) = 0  ->  guided = w·c
    def v(x, t, cond=None):
        return torch.where(
            (cond == 10).reshape(-1, 1, 1, 1), 0.0, cond.reshape(-1, 1, 1, 1).float()
        ).expand_as(x)

    gv = S.guided(v, 3.0, null_class=10)
    out = gv(torch.zeros(2, 1, 2, 2), torch.rand(2), torch.tensor([1, 2]))
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([3.0, 6.0]))
    assert S.guided(v, 1.0, 10) is v


def test_guidance_uses_the_unconditional_branch():
    """v_u = 1, v_c = c: u + w(c − u) gives 1 + w(c − 1), which w·c (dropping u) or c + w·u
    would not: (1, 4) at w = 3 for c = (1, 2)."""

    def v(x, t, cond=None):
        val = torch.where(cond == 10, 1.0, cond.float())
        return val.reshape(-1, 1, 1, 1).expand_as(x)

    out = S.guided(v, 3.0, null_class=10)(
        torch.zeros(2, 1, 2, 2), torch.rand(2), torch.tensor([1, 2])
    )
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([1.0, 4.0]))


def test_sample_is_seeded_and_respects_shape():
    a = S.sample(gauss_v, (3, 1, 2, 2), steps=5, generator=torch.Generator().manual_seed(7))
    b = S.sample(gauss_v, (3, 1, 2, 2), steps=5, generator=torch.Generator().manual_seed(7))
    assert a.shape == (3, 1, 2, 2) and torch.equal(a, b)


def test_bad_solver_and_steps():
    with pytest.raises(ConfigError, match="euler, heun, ddim, ddpm"):
        S.get_solver("rk45")
    with pytest.raises(ConfigError):
        S.uniform_grid(0)
