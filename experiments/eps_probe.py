"""Probe: why does an ε-model sampled by the ODE score far worse than sampled ancestrally?

Usage: python experiments/eps_probe.py RUN [--model monolith] [--n 500] [--variants a,b,...]
       [--structure] [--no-err]

Samples the same trained model under several sampler variants (same noise seed) and prints the
FID (classifier features, held-out reference) of each, plus the x̂0 error of the converted velocity
against the closed-form posterior mean of the training set per t. A diagnostic, not a study.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from decentdiff.config import resolve
from decentdiff.diffusion import paths as P
from decentdiff.diffusion import solvers as S
from decentdiff.evaluation.evaluate import _real, feature_net
from decentdiff.evaluation.features import extract
from decentdiff.evaluation.metrics import frechet_distance
from decentdiff.run import Run
from decentdiff.training.generative import load_generative, to_model_space


def variants(objective, unet):
    """name -> (velocity, solver, grid, solver clip)."""
    out = {}
    d = objective
    if isinstance(d, P.DDPM):
        mk = lambda clip, **kw: P.EpsilonVelocity(unet, d, clip, **kw)  # noqa: E731
        tmax = float(d.time_of_step(torch.tensor([d.timesteps - 1])))
        out["euler-clip"] = (mk(1.0), "euler", None, None)
        out["euler-noclip"] = (mk(None), "euler", None, None)
        out["euler-ddpmgrid"] = (mk(1.0), "euler", "ddpm", None)
        out["ddim-ddpmgrid-noclip"] = (mk(None), "ddim", "ddpm", None)
        out["ddim-ddpmgrid-solverclip"] = (mk(None), "ddim", "ddpm", 1.0)
        out["ddpm-ddpmgrid"] = (mk(1.0), "ddpm", "ddpm", None)
        out["euler-tmax"] = (mk(1.0), "euler", ("tmax", tmax), None)
        out["heun-clip"] = (mk(1.0), "heun", None, None)
        out["euler-ddpmgrid-noclip"] = (mk(None), "euler", "ddpm", None)
        out["euler-logsnr-noclip"] = (mk(None), "euler", ("logsnr", tmax), None)
        out["euler-logsnr-clip"] = (mk(1.0), "euler", ("logsnr", tmax), None)
        out["heun-logsnr-noclip"] = (mk(None), "heun", ("logsnr", tmax), None)
        out["ddpm-logsnr"] = (mk(1.0), "ddpm", ("logsnr", tmax), None)
        raw = mk(None)

        def consistent(x, t, cond=None):  # clip x̂0, then ε̂ consistent with it: v = (x − x̂0c)/t
            v = raw(x, t, cond)
            x0 = P.x0_from_velocity(x, t, v).clamp(-1, 1)
            return (x - x0) / P.bcast(t, x).clamp(min=1e-4)

        out["euler-consistent"] = (consistent, "euler", None, None)
        out["euler-consistent-ddpmgrid"] = (consistent, "euler", "ddpm", None)
        for tc in (0.95, 0.9, 0.8, 0.6):
            out[f"anc>{tc}-euler"] = (mk(1.0), ("hybrid", tc), None, None)
    else:
        out["euler"] = (unet, "euler", None, None)
        out["ddpm"] = (unet, "ddpm", None, None)
    return out


def structure(data, unet, objective, steps: int) -> None:
    """What kind of error the ε-model makes at high noise, and where its ODE goes."""
    import torch.nn.functional as F

    from decentdiff.diffusion.reference import EmpiricalFlow

    train = to_model_space(data.images[data.train_idx])
    flow = EmpiricalFlow(train)
    vel = P.EpsilonVelocity(unet, objective, None)
    g = torch.Generator().manual_seed(1)
    x0 = train[torch.randint(0, len(train), (256,), generator=g)]
    eps = torch.randn(x0.shape, generator=g)
    lap = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=torch.float32).view(1, 1, 3, 3)
    box = torch.ones(1, 1, 5, 5) / 25

    def band(kind: str) -> torch.Tensor:
        n = torch.randn(x0.shape, generator=g)
        if kind == "high":
            n = F.conv2d(n, lap.expand(n.shape[1], 1, 3, 3), padding=1, groups=n.shape[1])
        if kind == "low":
            for _ in range(2):
                n = F.conv2d(n, box.expand(n.shape[1], 1, 5, 5), padding=2, groups=n.shape[1])
        return n / n.pow(2).mean().sqrt() * 0.02

    with torch.no_grad():
        for t in (0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995):
            tt = torch.full((len(x0),), t)
            xt = (1 - t) * x0 + t * eps
            e = (1 - t) * (vel(xt, tt) - flow(xt, tt))  # the ε error (α_t times the velocity's)
            z = xt * P.bcast(P.vp_scale(tt), xt)
            slope = float((e * z).sum() / (z * z).sum())
            e0 = P.eps_from_velocity(xt, tt, vel(xt, tt))
            jac = []
            for kind in ("high", "white", "low"):
                p = band(kind)
                e1 = P.eps_from_velocity(xt + p, tt, vel(xt + p, tt))
                jac.append(f"{kind} {t * float(((e1 - e0) * p).sum() / (p * p).sum()):.3f}")
            print(
                f"t={t:5.3f}  ε err rms {e.pow(2).mean().sqrt():.4f}  per-pixel mean over images "
                f"{e.mean(0).pow(2).mean().sqrt():.4f}  slope on input {slope:+.4f}  "
                f"t·dε̂/dx {' '.join(jac)}",
                flush=True,
            )
        ts = S.ddpm_grid(objective, steps)
        x = torch.randn((128, *x0.shape[1:]), generator=g) * P.start_scale(float(ts[0]))
        for i in range(len(ts) - 1):
            t, s = float(ts[i]), float(ts[i + 1])
            x = x + (s - t) * vel(x, torch.full((len(x),), t))  # Euler = DDIM in flow space
            print(f"DDIM, no clipping: t={s:6.4f}  state rms {x.pow(2).mean().sqrt():.3f}")
        print(f"data rms {train.pow(2).mean().sqrt():.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--model", default="monolith")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--no-err", action="store_true")
    ap.add_argument(
        "--structure",
        action="store_true",
        help="also: the ε error's bias and scale, the Jacobian by frequency band, and the state's "
        "rms along an unclipped DDIM trajectory (stop 27's measurements)",
    )
    a = ap.parse_args()
    run = Run(a.run)
    cfg = resolve(base=run.base_config())
    data = run.data(cfg, create=False)
    net, _ = feature_net(run, data, "classifier", progress=False)
    real = _real(run, data, net, "classifier")
    _, unet, meta, objective = load_generative(run.path / a.model, ema=not a.no_ema)
    shape = tuple(meta["image_shape"])
    vs = variants(objective, unet)
    if a.variants:
        vs = {k: v for k, v in vs.items() if k in a.variants.split(",")}
    results = {}
    for name, (vel, solver, grid, clip) in vs.items():
        if grid == "ddpm":
            ts = S.ddpm_grid(objective, a.steps)
        elif isinstance(grid, tuple) and grid[0] == "logsnr":
            # uniform in log-SNR log((1-t)/t) from the largest trained t to t = 1e-3, then 0
            lo, hi = grid[1], 1e-3
            lam = torch.linspace(
                torch.tensor((1 - lo) / lo).log(),
                torch.tensor((1 - hi) / hi).log(),
                a.steps,
                dtype=torch.float64,
            )
            ts = torch.cat([1 / (1 + lam.exp()), torch.zeros(1, dtype=torch.float64)])
        elif isinstance(grid, tuple):
            ts = torch.linspace(grid[1], 0.0, a.steps + 1, dtype=torch.float64)
        else:
            ts = None
        g = torch.Generator().manual_seed(a.seed)
        t0 = time.time()
        imgs = []
        for i in range(0, a.n, 250):
            b = min(250, a.n - i)
            if isinstance(solver, tuple):  # ancestral while t >= tc, then Euler
                tc = solver[1]
                u = S.uniform_grid(a.steps)
                x = torch.randn((b, *shape), generator=g)
                with torch.no_grad():
                    x = S.ddpm(vel, x, u[u >= tc - 1e-9], generator=g)
                    x = S.euler(vel, x, u[u <= tc + 1e-9])
                imgs.append(x)
                continue
            imgs.append(
                S.sample(
                    vel,
                    (b, *shape),
                    steps=a.steps,
                    solver=solver,
                    generator=g,
                    grid=ts,
                    clip_x0=clip,
                )
            )
        x = torch.cat(imgs).clamp(-1, 1)
        f = extract(net, x)
        fid = frechet_distance(real["held_features"], f["features"])
        results[name] = fid
        print(
            f"{name:28s} FID {fid:8.2f}  mean {x.mean():+.3f}  ({time.time() - t0:.0f}s)",
            flush=True,
        )
    if a.structure:
        if not (isinstance(objective, P.DDPM) and objective.kind == "ddpm"):
            raise SystemExit("--structure measures an ε-model (--objective ddpm); this one is not")
        structure(data, unet, objective, a.steps)
    if a.no_err:
        return
    # x̂0 error per t against the closed-form posterior mean of the training set
    from decentdiff.diffusion.reference import EmpiricalFlow

    train = to_model_space(data.images[data.train_idx])
    flow = EmpiricalFlow(train)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, len(train), (128,), generator=g)
    x0 = train[idx]
    eps = torch.randn(x0.shape, generator=g)
    vel = (
        objective.velocity(unet)
        if not isinstance(objective, P.DDPM)
        else P.EpsilonVelocity(unet, objective, None)
    )
    errs = {}
    with torch.no_grad():
        for t in (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.995):
            tt = torch.full((128,), t)
            xt = (1 - t) * x0 + t * eps
            v_true = flow(xt, tt)
            v = vel(xt, tt)
            ev = (v - v_true).pow(2).mean().sqrt().item()
            ex0 = (t * (v - v_true)).pow(2).mean().sqrt().item()
            errs[t] = (ev, ex0)
            print(f"t={t:5.3f}  rms v err {ev:8.4f}  rms x0 err {ex0:8.4f}", flush=True)
    if a.out:
        a.out.write_text(json.dumps({"fid": results, "err": {str(k): v for k, v in errs.items()}}))


if __name__ == "__main__":
    sys.exit(main())
