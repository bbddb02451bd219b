"""Objectives and every change of parameterisation, in one place.

The one time convention of decentdiff: t ∈ [0, 1], **t = 0 is data, t = 1 is noise**,
x_t = (1 − t)·x0 + t·ε (rectified flow). Every trained model is used through a *velocity callable*
``velocity(x_t, t, cond=None) -> v`` with v ≈ E[ε − x0 | x_t]. Flow-matching models return it
directly; DDPM ε-prediction models are wrapped by :class:`EpsilonVelocity`, which matches the
signal-to-noise ratio of the flow time t to a DDPM step (PAPERS.md §2, Heterogeneous DDM).

The convention lives in code only here: :func:`alpha`, :func:`sigma` and :func:`noisy` (and the
conversions below, derived from them); every other module calls these.

Conversions used throughout (α_t = 1 − t, σ_t = t):
    x̂0 = x_t − t·v          ε̂ = x_t + (1 − t)·v          v = ε̂ − x̂0
A VP (DDPM) state x' = √ᾱ·x0 + √(1−ᾱ)·ε is the flow state scaled by c = 1/√((1−t)² + t²), with
ᾱ = (1−t)² / ((1−t)² + t²), i.e. t = √(1−ᾱ) / (√ᾱ + √(1−ᾱ)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError

VelocityFn = Callable[..., Tensor]


class Velocity(Protocol):
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor: ...


def bcast(t: Tensor, x: Tensor) -> Tensor:
    """Reshape (B,) times to broadcast against x of shape (B, ...)."""
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


# ---------------------------------------------------------------- the time convention
def alpha(t: Tensor | float) -> Tensor | float:
    """Signal coefficient α_t = 1 − t of x_t = α_t·x0 + σ_t·ε."""
    return 1 - t


def sigma(t: Tensor | float) -> Tensor | float:
    """Noise coefficient σ_t = t of x_t = α_t·x0 + σ_t·ε."""
    return t


def noisy(x0: Tensor, t: Tensor | float, eps: Tensor) -> Tensor:
    """x_t = α_t·x0 + σ_t·ε for per-example times t (B,) or one time (a float)."""
    if isinstance(t, Tensor):
        t = bcast(t, x0)
    return alpha(t) * x0 + sigma(t) * eps


# ---------------------------------------------------------------- conversions (flow space)
def x0_from_velocity(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """x̂0 = x_t − σ_t·v (v = ε − x0 and α_t + σ_t = 1)."""
    return x_t - sigma(bcast(t, x_t)) * v


def eps_from_velocity(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """ε̂ = x_t + α_t·v."""
    return x_t + alpha(bcast(t, x_t)) * v


def vp_scale(t: Tensor) -> Tensor:
    """c(t) = 1/√(α_t² + σ_t²): multiplies a flow state into the variance-preserving (DDPM) space."""
    return torch.rsqrt(alpha(t) ** 2 + sigma(t) ** 2)


def alpha_bar_from_time(t: Tensor) -> Tensor:
    """ᾱ of the DDPM state that has the same signal-to-noise ratio as flow time t."""
    return alpha(t) ** 2 / (alpha(t) ** 2 + sigma(t) ** 2)


def time_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """Inverse of :func:`alpha_bar_from_time`: t = √(1−ᾱ) / (√ᾱ + √(1−ᾱ))."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return s / (a + s)


def start_scale(t0: float) -> float:
    """Std of x_t at time t0 for data of negligible size: lets a sampler start at t0 < 1 (DDPM grids)."""
    return math.sqrt(alpha(t0) ** 2 + sigma(t0) ** 2)


# ---------------------------------------------------------------- schedules
def ddpm_betas(schedule: str, timesteps: int = 1000) -> Tensor:
    """β_1..β_T in float64: ``linear`` (1e-4 → 0.02, Ho et al. 2020) or ``cosine`` (Nichol & Dhariwal 2021)."""
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
        f = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    raise ConfigError(f"unknown DDPM schedule {schedule!r}; choose one of: linear, cosine")


def _loss(pred: Tensor, target: Tensor, kind: str, weight: Tensor | None = None) -> Tensor:
    """Mean loss; ``weight`` (B,) scales each example's mean loss (None: unweighted)."""
    if kind not in ("mse", "huber"):
        raise ConfigError(f"unknown loss {kind!r}; choose one of: mse, huber")
    if weight is None:
        if kind == "mse":
            return F.mse_loss(pred, target)
        return F.huber_loss(pred, target, delta=1.0)
    if kind == "mse":
        per = F.mse_loss(pred, target, reduction="none")
    else:
        per = F.huber_loss(pred, target, delta=1.0, reduction="none")
    return (per.flatten(1).mean(1) * weight.to(per.dtype)).mean()


def parse_weighting(spec: str) -> float | None:
    """DDPM loss weighting: ``uniform`` -> None, ``velocity:G`` -> the cap G ≥ 1."""
    if spec == "uniform":
        return None
    if spec.startswith("velocity:"):
        try:
            cap = float(spec.split(":", 1)[1])
        except ValueError:
            cap = 0.0
        if math.isfinite(cap) and cap >= 1:
            return cap
    raise ConfigError(
        f"unknown DDPM weighting {spec!r}; choose uniform or velocity:G with a finite cap G ≥ 1 "
        "(e.g. velocity:100)"
    )


# ---------------------------------------------------------------- objectives
#: How a DDPM ε-model's network output becomes ε̂ (:meth:`DDPM.predict_eps`).
EPS_PARAMS = ("direct", "skip")
#: How a DDPM ε- or v-model draws its training noise levels (:meth:`DDPM.sample_levels`).
STEP_DISTS = ("uniform", "logit_normal")


class FlowMatching:
    """Rectified flow matching (Liu et al. 2022; Lipman et al. 2022): regress v = ε − x0."""

    kind = "fm"

    def __init__(self, time_dist: str = "logit_normal", loss: str = "mse"):
        if time_dist not in ("uniform", "logit_normal"):
            raise ConfigError(
                f"unknown time distribution {time_dist!r}; choose one of: uniform, logit_normal"
            )
        _loss(torch.zeros(1), torch.zeros(1), loss)  # validate early
        self.time_dist, self.loss_kind = time_dist, loss

    def sample_t(self, n: int, generator: torch.Generator) -> Tensor:
        """(n,) training times; logit-normal(0, 1) concentrates on mid times (Esser et al. 2024)."""
        if self.time_dist == "uniform":
            return torch.rand(n, generator=generator)
        return torch.sigmoid(torch.randn(n, generator=generator))

    def noisy(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return noisy(x0, t, eps)

    def loss(
        self, model: nn.Module, x0: Tensor, cond: Tensor | None, generator: torch.Generator
    ) -> Tensor:
        """Scalar loss on a batch. Noise and times come from ``generator`` (CPU) for reproducibility."""
        t = self.sample_t(x0.shape[0], generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        return _loss(model(self.noisy(x0, t, eps), t, cond), eps - x0, self.loss_kind)

    def velocity(self, model: nn.Module) -> Velocity:
        return model  # the model already predicts the velocity

    def model_time(self, t: Tensor) -> Tensor:
        return t


class DDPM:
    """DDPM ε-prediction (Ho et al. 2020) with T discrete steps; the model sees time n / T."""

    kind = "ddpm"

    def __init__(
        self,
        schedule: str = "linear",
        timesteps: int = 1000,
        loss: str = "mse",
        weighting: str = "uniform",
        eps_param: str = "direct",
        step_dist: str = "uniform",
    ):
        if timesteps < 2:
            raise ConfigError(f"DDPM needs at least 2 timesteps, got {timesteps}")
        if eps_param not in EPS_PARAMS:
            raise ConfigError(
                f"unknown objective.eps_param {eps_param!r}; choose one of: {', '.join(EPS_PARAMS)}"
            )
        if step_dist not in STEP_DISTS:
            raise ConfigError(
                f"unknown objective.step_dist {step_dist!r}; choose one of: {', '.join(STEP_DISTS)}"
            )
        _loss(torch.zeros(1), torch.zeros(1), loss)
        self.schedule, self.timesteps, self.loss_kind = schedule, timesteps, loss
        self.eps_param, self.step_dist = eps_param, step_dist
        self.weighting, self.weight_cap = weighting, parse_weighting(weighting)
        self.betas = ddpm_betas(schedule, timesteps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # (T,) float64, index n = 0..T-1
        # −log SNR increases with n: the key for mapping a continuous ᾱ back to a (fractional) step.
        self._neg_logsnr = -torch.log(self.alphas_cumprod / (1 - self.alphas_cumprod))

    def q_sample(self, x0: Tensor, n: Tensor, eps: Tensor) -> Tensor:
        """x_n = √ᾱ_n·x0 + √(1−ᾱ_n)·ε for integer steps n (B,)."""
        ab = self.alphas_cumprod.to(x0.device)[n]
        return bcast(ab.sqrt(), x0) * x0 + bcast((1 - ab).sqrt(), x0) * eps

    def sample_levels(
        self, n: int, generator: torch.Generator, like: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(ᾱ float64, model time τ, flow time t float64), each (n,) on ``like``'s device, τ in
        its dtype, of n training examples.

        ``uniform``: integer steps uniform over 0..T−1 (Ho et al. 2020), τ = n/T divided on the
        device as it always was (resumed runs stay bitwise). ``logit_normal``: flow time t ~
        logit-normal(0, 1), flow matching's default (Esser et al. 2024), clamped to the
        schedule's range [t(0), t(T−1)]; ᾱ = (1−t)²/((1−t)²+t²) exactly and τ the fractional
        step of the same SNR (:meth:`model_time`, as the samplers query it).
        """
        if self.step_dist == "uniform":
            k = torch.randint(0, self.timesteps, (n,), generator=generator).to(like.device)
            ab = self.alphas_cumprod.to(like.device)[k]
            return ab, k.to(like.dtype) / self.timesteps, time_from_alpha_bar(ab)
        lo, hi = self.time_of_step(torch.tensor([0, self.timesteps - 1])).tolist()
        t = torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float64)).clamp(lo, hi)
        t = t.to(like.device)
        return alpha_bar_from_time(t), self.model_time(t).to(like.dtype), t

    def loss(
        self, model: nn.Module, x0: Tensor, cond: Tensor | None, generator: torch.Generator
    ) -> Tensor:
        ab, tau, t = self.sample_levels(x0.shape[0], generator, x0)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        z = bcast(ab.sqrt(), x0) * x0 + bcast((1 - ab).sqrt(), x0) * eps
        pred = self.predict_eps(model, z, tau, cond, ab)
        return _loss(pred, eps, self.loss_kind, self.loss_weight(t))

    def predict_eps(
        self, model: nn.Module, z: Tensor, tau: Tensor, cond: Tensor | None, alpha_bar: Tensor
    ) -> Tensor:
        """ε̂ for the VP state z at model time τ = n/T whose ᾱ is ``alpha_bar`` (B,).

        ``direct``: the network's output is ε̂ (Ho et al. 2020). ``skip``: ε̂ = √(1−ᾱ)·z + √ᾱ·F(z),
        a skip connection (the c_skip/c_out preconditioning of Karras et al. 2022) that carries z
        to the output as the true ε is carried near t = 1. The loss is the same ε-MSE; x̂0 =
        (z − √(1−ᾱ)·ε̂)/√ᾱ = √ᾱ·z − √(1−ᾱ)·F no longer divides the network's error by √ᾱ
        (the cause of the plain ε-network's deterministic-sampling gap: docs/models.md, "How well
        ε- and v-models sample").
        """
        out = model(z, tau, cond)
        if self.eps_param == "direct":
            return out
        ab = bcast(alpha_bar, z).to(z.dtype)
        return (1 - ab).sqrt() * z + ab.sqrt() * out

    def loss_weight(self, t: Tensor) -> Tensor | None:
        """Per-example weight of the ε-loss at flow times t, or None (uniform, Ho et al.'s simple
        loss).

        ``velocity:G`` weights by min(1/(1 − t)², G): an ε error δ is a velocity error δ/(1 − t),
        so this is the flow-matching loss of the converted velocity, capped at G where 1 − t → 0.
        """
        if self.weight_cap is None:
            return None
        return (1 / (1 - t) ** 2).clamp(max=self.weight_cap).float()

    def step_from_time(self, t: Tensor) -> Tensor:
        """Fractional DDPM step whose SNR equals that of flow time t (linear in log-SNR), clamped to [0, T−1]."""
        ab = alpha_bar_from_time(t.double().clamp(1e-7, 1 - 1e-7))
        key = -torch.log(ab / (1 - ab))
        grid = self._neg_logsnr.to(key.device)
        hi = torch.searchsorted(grid, key).clamp(1, self.timesteps - 1)
        lo = hi - 1
        w = ((key - grid[lo]) / (grid[hi] - grid[lo])).clamp(0, 1)
        return (lo.double() + w).clamp(0, self.timesteps - 1)

    def time_of_step(self, n: Tensor) -> Tensor:
        """Flow time of integer DDPM step n (B,)."""
        return time_from_alpha_bar(self.alphas_cumprod.to(n.device)[n])

    def velocity(self, model: nn.Module, clip_x0: float | None = 1.0) -> Velocity:
        return EpsilonVelocity(model, self, clip_x0)

    def model_time(self, t: Tensor) -> Tensor:
        return self.step_from_time(t).to(t.dtype) / self.timesteps


class EpsilonVelocity(nn.Module):
    """An ε-prediction model seen as a velocity callable (SNR matching, PAPERS.md §2).

    For flow state x_t at time t: feed the model c·x_t (c = :func:`vp_scale`) at the DDPM step with
    the same SNR, read ε̂, form x̂0 = (x_t − t·ε̂)/(1 − t) (guarded near t = 1, optionally clamped to
    [−clip, clip]) and return v = ε̂ − x̂0.
    """

    def __init__(self, model: nn.Module, ddpm: DDPM, clip_x0: float | None = 1.0):
        super().__init__()
        self.model, self.ddpm, self.clip_x0 = model, ddpm, clip_x0

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        eps = self.ddpm.predict_eps(
            self.model, bcast(vp_scale(t), x) * x, self.ddpm.model_time(t), cond,
            alpha_bar_from_time(t),
        )  # fmt: skip
        tb = bcast(t, x)
        x0 = (x - sigma(tb) * eps) / alpha(tb).clamp(min=1e-4)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return eps - x0


class VPrediction(DDPM):
    """v-prediction (Salimans & Ho 2022) on the DDPM schedule: the network regresses
    v = √ᾱ·ε − √(1−ᾱ)·x0 of the variance-preserving state z = √ᾱ·x0 + √(1−ᾱ)·ε.

    x̂0 = √ᾱ·z − √(1−ᾱ)·v̂ comes out without dividing by √ᾱ, so a network error δ is an x̂0 error
    √(1−ᾱ)·δ, never amplified near t = 1 as an ε-model's t·δ/(1 − t) is (docs/models.md). The model sees
    the DDPM step as a DDPM ε-model does; sampled through :class:`VVelocity`.
    """

    kind = "vpred"

    def loss(
        self, model: nn.Module, x0: Tensor, cond: Tensor | None, generator: torch.Generator
    ) -> Tensor:
        ab, tau, _ = self.sample_levels(x0.shape[0], generator, x0)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        a, s = bcast(ab.sqrt(), x0), bcast((1 - ab).sqrt(), x0)
        pred = model(a * x0 + s * eps, tau, cond)
        return _loss(pred, a * eps - s * x0, self.loss_kind)

    def velocity(self, model: nn.Module, clip_x0: float | None = None) -> Velocity:
        return VVelocity(model, self, clip_x0)


class VVelocity(nn.Module):
    """A v-prediction model seen as a velocity callable: at flow time t, the VP state
    z = c·x_t (c = :func:`vp_scale`, ᾱ = :func:`alpha_bar_from_time`), v̂ = model(z),
    x̂0 = √ᾱ·z − √(1−ᾱ)·v̂, ε̂ = √(1−ᾱ)·z + √ᾱ·v̂, velocity ε̂ − x̂0 (x̂0 optionally clamped)."""

    def __init__(self, model: nn.Module, obj: VPrediction, clip_x0: float | None = None):
        super().__init__()
        self.model, self.obj, self.clip_x0 = model, obj, clip_x0

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        z = bcast(vp_scale(t), x) * x
        v = self.model(z, self.obj.model_time(t), cond)
        ab = bcast(alpha_bar_from_time(t), x)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = a * z - s * v
        eps = s * z + a * v
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return eps - x0


def _flow_matching(*, time_dist: str, loss: str, weighting: str, **_) -> FlowMatching:
    if weighting != "uniform":
        raise ConfigError(
            f"objective.weighting={weighting} applies to --objective ddpm only (flow matching "
            "already regresses the velocity); set objective.weighting=uniform"
        )
    return FlowMatching(time_dist=time_dist, loss=loss)


def _ddpm(
    *, schedule: str, timesteps: int, loss: str, weighting: str, eps_param: str, step_dist: str, **_
) -> DDPM:
    return DDPM(schedule=schedule, timesteps=timesteps, loss=loss, weighting=weighting,
                eps_param=eps_param, step_dist=step_dist)  # fmt: skip


def _vpred(
    *, schedule: str, timesteps: int, loss: str, weighting: str, step_dist: str, **_
) -> VPrediction:
    if weighting != "uniform":
        raise ConfigError(
            f"objective.weighting={weighting} applies to --objective ddpm only; set "
            "objective.weighting=uniform"
        )
    return VPrediction(schedule=schedule, timesteps=timesteps, loss=loss, step_dist=step_dist)


#: Objective kinds: each builds its objective from the config values it uses.
OBJECTIVES: dict[str, Callable[..., FlowMatching | DDPM]] = {
    "fm": _flow_matching,
    "ddpm": _ddpm,
    "vpred": _vpred,
}


def make_objective(
    kind: str,
    *,
    time_dist: str = "logit_normal",
    schedule: str = "linear",
    loss: str = "mse",
    timesteps: int = 1000,
    weighting: str = "uniform",
    eps_param: str = "skip",
    step_dist: str = "uniform",
) -> FlowMatching | DDPM:
    """Build an objective from config values; unknown kinds list the valid choices."""
    if kind not in OBJECTIVES:
        raise ConfigError(f"unknown objective {kind!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[kind](
        time_dist=time_dist, schedule=schedule, loss=loss, timesteps=timesteps,
        weighting=weighting, eps_param=eps_param, step_dist=step_dist,
    )  # fmt: skip
