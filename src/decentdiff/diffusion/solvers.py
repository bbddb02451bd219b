"""Samplers over a velocity callable ``velocity(x_t, t, cond) -> v`` (t = 1 noise → t = 0 data).

Every sampler is a plain function with one signature (as in k-diffusion): it never knows whether it
integrates one model, an ε-model behind a converter, or an ensemble of experts.
``ddim`` and ``ddpm`` are written in flow space with the x̂0/ε̂ the velocity implies, so they apply to
any model; on an ε-model with the DDPM time grid they reproduce the classic DDIM / ancestral steps
(the tests check this against diffusers' schedulers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from .paths import (
    DDPM,
    Velocity,
    alpha,
    bcast,
    eps_from_velocity,
    noisy,
    sigma,
    start_scale,
    x0_from_velocity,
)


def uniform_grid(steps: int) -> Tensor:
    """(steps + 1,) times from 1 to 0."""
    if steps < 1:
        raise ConfigError(f"sampling steps must be ≥ 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def ddpm_grid(ddpm: DDPM, steps: int) -> Tensor:
    """Flow times of ``steps`` evenly spaced DDPM steps ("leading" spacing, as diffusers), then 0."""
    if not 1 <= steps <= ddpm.timesteps:
        raise ConfigError(f"sampling steps must be in 1..{ddpm.timesteps}, got {steps}")
    n = torch.arange(0, steps) * (ddpm.timesteps // steps)
    t = ddpm.time_of_step(n.flip(0))
    return torch.cat([t, torch.zeros(1, dtype=t.dtype)])


def guided(velocity: Velocity, scale: float, null_class: int) -> Velocity:
    """Classifier-free guidance (Ho & Salimans 2022): v_u + w·(v_c − v_u); w = 1 is plain conditional."""
    if scale == 1.0:
        return velocity

    def v(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            return velocity(x, t, None)
        null = torch.full_like(cond, null_class)
        both = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
        vc, vu = both.chunk(2)
        return vu + scale * (vc - vu)

    return v


def _t(ts: Tensor, i: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(ts[i]), dtype=x.dtype, device=x.device)


def euler(velocity: Velocity, x: Tensor, ts: Tensor, cond: Tensor | None = None, **_) -> Tensor:
    """Euler on the probability-flow ODE dx/dt = v."""
    for i in range(len(ts) - 1):
        x = x + float(ts[i + 1] - ts[i]) * velocity(x, _t(ts, i, x), cond)
    return x


def heun(velocity: Velocity, x: Tensor, ts: Tensor, cond: Tensor | None = None, **_) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1); the last step to t = 0 is Euler."""
    for i in range(len(ts) - 1):
        dt = float(ts[i + 1] - ts[i])
        v = velocity(x, _t(ts, i, x), cond)
        x_next = x + dt * v
        if float(ts[i + 1]) > 0:
            x_next = x + dt * 0.5 * (v + velocity(x_next, _t(ts, i + 1, x), cond))
        x = x_next
    return x


def ddim(
    velocity: Velocity,
    x: Tensor,
    ts: Tensor,
    cond: Tensor | None = None,
    clip_x0: float | None = None,
    **_,
) -> Tensor:
    """DDIM (Song et al. 2021, η = 0): x_s = (1 − s)·x̂0 + s·ε̂. Without clipping this equals Euler."""
    for i in range(len(ts) - 1):
        t = _t(ts, i, x)
        v = velocity(x, t, cond)
        x0, eps = x0_from_velocity(x, t, v), eps_from_velocity(x, t, v)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        x = noisy(x0, float(ts[i + 1]), eps)
    return x


def ddpm_step(x: Tensor, t: float, s: float, x0: Tensor, noise: Tensor | None) -> Tensor:
    """One ancestral step t → s < t: a draw from q(x_s | x_t, x̂0) (α, σ of :mod:`.paths`).

    With α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α_{t|s}²σ_s², the posterior has
    mean α_{t|s}σ_s²/σ_t²·x_t + α_s σ²_{t|s}/σ_t²·x̂0 and variance σ²_{t|s}σ_s²/σ_t² (Kingma et al. 2021).
    """
    a_t, a_s, sig_t, sig_s = alpha(t), alpha(s), sigma(t), sigma(s)
    a_ts = a_t / a_s
    var_ts = sig_t**2 - a_ts**2 * sig_s**2
    mean = (a_ts * sig_s**2 / sig_t**2) * x + (a_s * var_ts / sig_t**2) * x0
    if s <= 0 or noise is None:
        return mean
    return mean + (var_ts * sig_s**2 / sig_t**2) ** 0.5 * noise


def ddpm(
    velocity: Velocity,
    x: Tensor,
    ts: Tensor,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_x0: float | None = None,
    **_,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020), posterior variance ("fixed small")."""
    for i in range(len(ts) - 1):
        t = _t(ts, i, x)
        x0 = x0_from_velocity(x, t, velocity(x, t, cond))
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x = ddpm_step(x, float(ts[i]), float(ts[i + 1]), x0, noise)
    return x


SOLVERS: dict[str, Callable[..., Tensor]] = {
    "euler": euler,
    "heun": heun,
    "ddim": ddim,
    "ddpm": ddpm,
}


def sampling_grid(objectives, solver: str, steps: int) -> Tensor | None:
    """The time grid of a (resolved) solver: the DDPM grid of the first ε-objective for
    ``ddpm``/``ddim`` when the model has one (the classic DDIM / ancestral steps), else None
    (uniform in t). One rule for ``generate`` and ``diagnose`` alike."""
    if solver in ("ddpm", "ddim"):
        for o in objectives:
            if isinstance(o, DDPM):
                return ddpm_grid(o, steps)
    return None


#: ``--solver auto``: the solver per objective kind, chosen by measurement (docs/models.md, "How
#: well ε- and v-models sample").
AUTO_SOLVER = {"fm": "euler", "ddpm": "ddpm", "vpred": "euler"}


def get_solver(name: str) -> Callable[..., Tensor]:
    if name == "auto":
        raise ConfigError("solver 'auto' must be resolved against a model first (resolve_solver)")
    if name not in SOLVERS:
        raise ConfigError(f"unknown solver {name!r}; choose one of: auto, {', '.join(SOLVERS)}")
    return SOLVERS[name]


def sample(
    velocity: Velocity,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    solver: str = "euler",
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
    device: torch.device | str = "cpu",
    grid: Tensor | None = None,
    clip_x0: float | None = None,
) -> Tensor:
    """Draw samples by integrating ``velocity`` from noise at t = grid[0] (default 1) to 0.

    Args:
        velocity: velocity callable.
        shape: (N, C, H, W) of the output.
        steps: number of solver steps (ignored when ``grid`` is given).
        solver: one of :data:`SOLVERS`.
        generator: CPU generator for the initial noise and any stochastic steps.
        cond: (N,) long class ids or None.
        grid: decreasing times ending at 0 (e.g. :func:`ddpm_grid` for an ε-model).
    Returns:
        (N, C, H, W) samples (not clamped).
    """
    fn = get_solver(solver)
    ts = uniform_grid(steps) if grid is None else grid
    noise = torch.randn(shape, generator=generator)
    x = (noise * start_scale(float(ts[0]))).to(device)
    if cond is not None:
        cond = cond.to(device)
    with torch.no_grad():
        return fn(velocity, x, ts, cond, generator=generator, clip_x0=clip_x0)


__all__ = [
    "AUTO_SOLVER",
    "SOLVERS",
    "bcast",
    "ddim",
    "ddpm",
    "ddpm_grid",
    "ddpm_step",
    "euler",
    "get_solver",
    "guided",
    "heun",
    "sample",
    "sampling_grid",
    "uniform_grid",
]
