"""How well a router knows the cluster of a noisy image, per noise level: accuracy, entropy,
negative log-likelihood and expected calibration error (ECE) on fresh noise. Used by the router's
training summary (:func:`decentdiff.ddm.router.router_accuracy`) and by ``diagnose``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..diffusion.paths import noisy


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """ECE of a classifier: Σ_b (n_b / n)·|accuracy_b − mean confidence_b| over confidence bins.

    Args:
        probs: (N, K) predicted probabilities.
        target: (N,) true classes.
        bins: equal-width confidence bins on [0, 1].
    """
    conf = probs.max(1)
    correct = probs.argmax(1) == target
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


@torch.no_grad()
def calibration(
    router: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None,
    clusters: np.ndarray,
    *,
    bins: int = 10,
    n: int = 1000,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, entropy, NLL and ECE of the router per t-bin (see the module docstring).

    Returns:
        {"t": centres, "accuracy", "entropy", "nll", "ece", "confidence": lists per bin,
        "prior": accuracy of always answering the largest cluster, "n": n}.
    """
    from ..training.generative import to_model_space

    g = torch.Generator().manual_seed(10_000 + seed)  # router_accuracy's draws
    idx = torch.randint(0, len(images), (n,), generator=g)
    x0 = to_model_space(np.asarray(images[idx.numpy()])).to(device)  # only these rows are read
    target = np.asarray(clusters, np.int64)[idx.numpy()]
    cond = None if labels is None else torch.from_numpy(np.asarray(labels, np.int64))[idx]
    eps = torch.randn(x0.shape, generator=g).to(device)
    out: dict[str, list[float]] = {k: [] for k in ("t", "accuracy", "entropy", "nll", "ece")}
    out["confidence"] = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        t = (lo + (hi - lo) * torch.rand(n, generator=g)).to(device)
        logp = []
        for i in range(0, n, 256):
            c = None if cond is None else cond[i : i + 256].to(device)
            logits = router(
                noisy(x0[i : i + 256], t[i : i + 256], eps[i : i + 256]), t[i : i + 256], c
            )
            logp.append(torch.log_softmax(logits.double(), 1).cpu())
        lp = torch.cat(logp).numpy()
        p = np.exp(lp)
        out["t"].append((lo + hi) / 2)
        out["accuracy"].append(float((p.argmax(1) == target).mean()))
        out["entropy"].append(float(-(p * np.where(p > 0, lp, 0.0)).sum(1).mean()))
        out["nll"].append(float(-lp[np.arange(n), target].mean()))
        out["ece"].append(expected_calibration_error(p, target))
        out["confidence"].append(float(p.max(1).mean()))
    sizes = np.bincount(np.asarray(clusters, np.int64))
    return {**out, "prior": float(sizes.max() / sizes.sum()), "n": n}
