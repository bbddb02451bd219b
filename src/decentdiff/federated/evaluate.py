"""Quality of a federated run, as de Goede et al. (arXiv 2406.12575) report it.

FULL and USPLIT produce one global model: one FID. UDEC and ULATDEC leave every client with its
own personal model (private encoder, shared decoder): one FID per client, summarised as mean ± std
(population std, as a spread over the clients of this run), min and max. Every model is scored by
the ordinary ``decentdiff eval`` machinery against the held-out part of the whole data set, so the
numbers compare directly with DDM and monolith rows of the same data.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..config import Config
from ..errors import RunError
from ..run import Run
from .store import read_settings


def federated_models(run: Run) -> list[str]:
    """The ``--model`` specs of a federated RUN's generators: ``federated`` or ``client:0..N-1``."""
    settings = read_settings(run.path)
    if settings is None:
        raise RunError(f"{run.path} has no federated run; run `decentdiff fed run {run.path} ...`")
    if settings.method_spec.personal:
        return [f"client:{i}" for i in range(settings.clients)]
    return ["federated"]


def summarise(values: list[float]) -> dict[str, float]:
    """mean, std (population), min, max of per-model scores."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def evaluate_federated(
    run: Run,
    cfg: Config,
    *,
    features: str = "auto",
    device: str = "cpu",
    progress: bool = True,
    memorisation: float | None = None,
) -> dict[str, Any]:
    """Evaluate every generator of a federated RUN (``cfg.sample.n`` images each).

    Appends one ``eval`` row per model (as ``decentdiff eval`` does) and one ``fed_eval`` summary
    row to RUN/metrics.jsonl, and returns the summary: method, models, per-model FID / precision /
    recall, and for each metric its mean, std, min and max over the models. With
    ``memorisation`` (a copy threshold) every model's images are checked for copies of each
    client's training images; their summaries are the summary's ``memorisation``.
    """
    from ..evaluation.evaluate import evaluate
    from ..training.loop import append_jsonl

    settings = read_settings(run.path)
    models = federated_models(run)
    t0 = time.perf_counter()
    rows = [
        evaluate(
            run,
            cfg,
            m,
            features=features,
            device=device,
            progress=progress,
            memorisation=memorisation,
        )
        for m in models
    ]
    metrics = ("fid", "kid_mean", "precision", "recall", "confident_share")
    summary: dict[str, Any] = {
        "kind": "fed_eval",
        "method": settings.method,
        "split": settings.split,
        "clients": settings.clients,
        "models": models,
        "n": cfg.sample.n,
        "steps": cfg.sample.steps,
        "seed": cfg.sample.seed,
        "solver": rows[0].get("solver"),  # resolved (auto: by the objective), as each row's
        "guidance": rows[0].get("guidance"),  # resolved (the model's default), as each row's
        "features": rows[0].get("features"),  # resolved (auto: by the data), as each row's
        "per_model": {m: {k: r.get(k) for k in metrics} for m, r in zip(models, rows, strict=True)},
        "floor_fid": rows[0]["floor"].get("fid"),
        "wall_s": time.perf_counter() - t0,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if settings.dp != "off":  # the (ε, δ) the run spent (privacy.py), with its FID
        from .privacy import final
        from .store import read_rounds

        summary["privacy"] = final(read_rounds(run.path))
    if memorisation is not None:
        summary["memorisation"] = {m: r["memorisation"] for m, r in zip(models, rows, strict=True)}
    for k in metrics:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            summary[k] = summarise(vals)
    append_jsonl(run.metrics_path, summary)
    return summary


def summary_line(s: dict[str, Any]) -> str:
    """One line for the terminal: global FID, or per-client mean ± std (min … max)."""
    fid = s["fid"]
    dp = s.get("privacy")
    tail = f"; (ε = {dp['epsilon']:.3g}, δ = {dp['delta']:g})-DP" if dp else ""
    if len(s["models"]) == 1:
        return (
            f"{s['method']}: global model FID {fid['mean']:.2f} (floor {s['floor_fid']:.2f}){tail}"
        )
    return (
        f"{s['method']}: per-client FID {fid['mean']:.2f} ± {fid['std']:.2f} "
        f"(min {fid['min']:.2f}, max {fid['max']:.2f}; {len(s['models'])} clients; "
        f"floor {s['floor_fid']:.2f}){tail}"
    )
