"""Why a routing helps or hurts (docs/routing.md): the router's accuracy, entropy and calibration per
noise level, and which expert a router-driven routing picks at each sampling step.

``decentdiff diagnose RUN`` writes RUN/diagnostics.json and RUN/figures/routing_diagnostics.png;
``report`` shows both. Everything is measured, nothing is modelled:

- calibration: training images drawn at their natural frequencies, fresh noise and t in each of
  ``bins`` equal t-bins (the router saw these images, with other noise); per bin: top-1 accuracy,
  the accuracy of always answering the largest cluster, mean entropy of p(k | x_t) in nats, the
  negative log-likelihood of the true cluster, and the expected calibration error (ECE: confidence
  bins of width 0.1, |accuracy − confidence| weighted by the bin's share);
- usage: ``n`` images sampled with a routing (default top1) by the RUN's solver; per step, the
  share of samples each expert made, and the share of trajectories whose expert changed since the
  previous step; per trajectory, the number of switches.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..run import Run
from .calibration import calibration
from .router import load_router, router_dir

__all__ = ["diagnose", "summary_lines", "usage"]


def usage(
    run: Run,
    cfg: Config,
    routing: str = "top1",
    *,
    n: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Which expert a routing uses at each sampling step, and how often trajectories switch.

    Returns:
        {"routing", "n", "t": per step, "share": (steps, K) share of samples per expert,
        "switch_rate": per step (0 at the first), "switches_per_image": mean, "ever_switch": share
        of images whose expert changed at least once}.
    """
    from ..config import ObjectiveConfig
    from ..diffusion.solvers import sample, sampling_grid
    from ..loading import resolve_guidance, resolve_solver
    from ..precision import autocast_velocity, fast_bf16, resolve_precision
    from ..training.generative import objective_from
    from .load import load_ensemble

    s = cfg.sample
    solver = resolve_solver(run, "ensemble", s.solver)
    guidance = resolve_guidance(run, "ensemble", s.guidance)
    g = torch.Generator().manual_seed(s.seed)
    ens, metas, rec, networks = load_ensemble(run, routing, device=device, ema=s.ema,
                                              guidance=guidance, generator=g)  # fmt: skip
    ens.history = []
    unet = networks[next(k for k in networks if k.startswith("expert"))]
    shape = tuple(metas[0]["image_shape"])
    ncls = unet.num_classes
    cond = (torch.arange(n) % ncls).to(device) if ncls > 0 else None
    # The network calls in sample.precision, as `sample` and `eval` make them (auto: bf16 only on
    # a device with fast bf16 and for a large enough network, decentdiff.precision).
    flops = 0.0
    if s.precision == "auto" and fast_bf16(device):
        from ..evaluation.flops import SampleCounter

        counter = SampleCounter(networks)
        try:
            flops = max(counter.per_sample_flops(shape, device).values(), default=0.0)
        finally:
            counter.close()
    precision = resolve_precision(s.precision, device, flops)
    with torch.no_grad():
        grid = sampling_grid([objective_from(ObjectiveConfig.from_meta(m["objective"])) for m in metas],
                             solver, s.steps)  # the grid `eval` samples on  # fmt: skip
        sample(autocast_velocity(ens, precision, device), (n, *shape), steps=s.steps,
               solver=solver, generator=g, cond=cond, device=device, grid=grid)  # fmt: skip
    # One entry per velocity call; a multi-evaluation solver (heun) calls twice per step.
    ts = [float(t[0]) for t, _ in ens.history]
    picks = np.stack([w.argmax(1).numpy() for _, w in ens.history])  # (calls, n)
    k = rec.num_parts
    share = np.stack([np.bincount(p, minlength=k) / n for p in picks])
    changed = np.concatenate([[0.0], (picks[1:] != picks[:-1]).mean(1)])
    per_image = (picks[1:] != picks[:-1]).sum(0) if len(picks) > 1 else np.zeros(n)
    # What the expert mix should be: the cluster prior, averaged over the classes sampled when
    # the model is class-conditional (the members' counts: added sources in, withdrawn out).
    from .membership import cluster_prior

    table = cluster_prior(run, cfg, class_cond=ncls > 0, num_classes=ncls)
    if table.ndim == 2 and cond is not None:
        rows = table[cond.cpu().numpy()]
        marginal = table.sum(0)
        rows = np.where(rows.sum(1, keepdims=True) > 0, rows, marginal)
        prior = (rows / rows.sum(1, keepdims=True)).mean(0)
    else:
        sizes = table if table.ndim == 1 else table.sum(0)
        prior = sizes / sizes.sum()
    return {
        "prior": prior.tolist(),
        "tv_final": float(0.5 * np.abs(share[-1] - prior).sum()),
        "tv_first": float(0.5 * np.abs(share[0] - prior).sum()),
        "routing": routing,
        "n": n,
        "precision": precision,
        "t": ts,
        "share": share.tolist(),
        "switch_rate": changed.tolist(),
        "switches_per_image": float(per_image.mean()),
        "ever_switch": float((per_image > 0).mean()),
    }


def diagnose(
    run: Run,
    cfg: Config,
    *,
    routings: tuple[str, ...] = ("top1",),
    n: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Calibration + usage of each routing; writes RUN/diagnostics.json and the figure."""
    from ..figures import routing_diagnostics_figure
    from ..loading import resolve_guidance, resolve_solver
    from ..training.checkpoint import atomic_write_text
    from .membership import member_data

    images, labels, clusters, rec = member_data(run, cfg)
    router, rmeta = load_router(router_dir(run), ema=cfg.sample.ema, device=device)
    from ..latent import model_inputs

    # A latent router is calibrated on the latents it was trained on.
    vae = (rmeta.get("vae") or {}).get("path", "")
    images, _ = model_inputs(images, vae, run.path / "latents", device, resumed=rmeta)
    class_cond = int(rmeta.get("router", {}).get("num_classes", 0)) > 0
    cal = calibration(router, images, labels if class_cond else None, clusters, device=device,
                      seed=cfg.sample.seed)  # fmt: skip
    out = {
        "calibration": cal,
        "usage": [usage(run, cfg, r, n=n, device=device) for r in routings],
        "num_parts": rec.num_parts,
        "class_cond": class_cond,
        "sample": {
            "steps": cfg.sample.steps,
            "solver": resolve_solver(run, "ensemble", cfg.sample.solver),
            "guidance": resolve_guidance(run, "ensemble", cfg.sample.guidance),
            "seed": cfg.sample.seed,
        },
    }
    atomic_write_text(run.path / "diagnostics.json", json.dumps(out, indent=1) + "\n")
    routing_diagnostics_figure(out, run.path / "figures" / "routing_diagnostics.png")
    return out


def summary_lines(diag: dict[str, Any]) -> list[str]:
    """A few sentences of numbers for report.md and the command's output."""
    cal = diag["calibration"]
    lines = [
        f"router accuracy {cal['accuracy'][0]:.2f} at t≈{cal['t'][0]:.2f} … "
        f"{cal['accuracy'][-1]:.2f} at t≈{cal['t'][-1]:.2f} (largest cluster: {cal['prior']:.2f}); "
        f"entropy {cal['entropy'][0]:.2f} … {cal['entropy'][-1]:.2f} nats; "
        f"ECE {min(cal['ece']):.3f} … {max(cal['ece']):.3f}",
    ]
    for u in diag["usage"]:
        lines.append(
            f"{u['routing']}: {u['switches_per_image']:.1f} expert switches per image; "
            f"{100 * u['ever_switch']:.0f}% of images change expert at least once; its expert "
            f"mix departs from the cluster sizes by TV {u['tv_first']:.2f} at the first step, "
            f"{u['tv_final']:.2f} at the last"
        )
    return lines
