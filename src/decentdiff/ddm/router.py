"""Router training (PAPERS.md §1): cross-entropy on the cluster of x0 from (x_t, t).

x0 is drawn from the whole training part at its natural frequencies (so the router learns the
prior |S_k|/N too), t ~ U(0, 1) because the router is evaluated at every sampling step.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import Config
from ..data.cache import rows_of
from ..diffusion.paths import noisy
from ..errors import CheckpointError
from ..models.registry import build_router, router_from_dict, router_net_config
from ..run import Run
from ..training.checkpoint import atomic_write_text, load_tensors, read_meta
from ..training.generative import image_batches
from ..training.loop import resolve_device, train
from .store import PartitionRecord, load_partition


def router_dir(run: Run) -> Path:
    return run.path / "router"


def train_router(
    run: Run, cfg: Config, *, fresh: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the router of RUN's partition into ``RUN/router`` and measure its accuracy vs t."""
    data = run.data(cfg, create=False, heldout=False)
    rec = load_partition(run, data)
    return fit_router(
        run,
        cfg,
        rows_of(data.images, data.train_idx),
        data.labels[data.train_idx] if data.labels is not None else None,
        rec.assignments,
        rec,
        num_classes=data.num_classes if cfg.model.class_cond else 0,
        meta={"data_fingerprint": data.fingerprint},
        fresh=fresh,
        progress=progress,
    )


def fit_router(
    run: Run,
    cfg: Config,
    images: np.ndarray,
    labels: np.ndarray | None,
    clusters: np.ndarray,
    rec: PartitionRecord,
    *,
    num_classes: int,
    meta: dict[str, Any],
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Cross-entropy on (x_t, t[, class]) -> cluster of x0, x0 drawn from ``images`` at their
    natural frequencies; writes RUN/router, its accuracy.json and figures/router_accuracy.png.

    Args:
        images: uint8 (N, C, H, W), every image the router must know; ``clusters[i]`` is the
            cluster of ``images[i]`` (0..K-1).
        labels: (N,) class labels, used when ``num_classes`` > 0.
        meta: extra entries for meta.json (e.g. the data fingerprint).
    """
    device = resolve_device(cfg.train.device)
    from ..latent import model_inputs, resumed_meta

    router_net_config(cfg.model.preset, 1, rec.num_parts, 0, cfg.model.arch)  # before encoding
    images, vae_meta = model_inputs(
        images,
        cfg.model.vae,
        run.path / "latents",
        device,
        resumed=resumed_meta(router_dir(run), fresh),
    )
    if vae_meta:
        meta = {**meta, "vae": vae_meta}
    rcfg = router_net_config(
        cfg.model.preset, images.shape[1], rec.num_parts, num_classes, cfg.model.arch
    )
    torch.manual_seed(cfg.train.seed)
    model = build_router(rcfg).to(device)
    parts = torch.from_numpy(np.asarray(clusters, dtype=np.int64))
    draw = image_batches(images, labels, cfg.train.batch, device, cfg.train.cond_drop, num_classes)

    def loss_fn(m: nn.Module, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        x0, cond, idx = draw(g)
        t = torch.rand(x0.shape[0], generator=g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        logits = m(noisy(x0, t, eps), t, cond)
        target = parts[idx].to(device)
        loss = F.cross_entropy(logits, target)
        return loss, {"acc": float((logits.argmax(1) == target).float().mean())}

    out = train(
        model,
        loss_fn,
        router_dir(run),
        cfg.train,
        meta={
            "kind": "router",
            "router": rcfg.to_dict(),
            "model": asdict(cfg.model),
            "num_parts": rec.num_parts,
            "partition_id": rec.partition_id,
            "image_shape": list(images.shape[1:]),
            **meta,
        },
        metrics_path=router_dir(run) / "metrics.jsonl",
        role="router",
        fresh=fresh,
        progress=progress,
    )
    router, _ = load_router(router_dir(run), device=device)
    acc = router_accuracy(
        router,
        images,
        labels if num_classes else None,
        clusters,
        device=device,
        seed=cfg.train.seed,
    )
    atomic_write_text(router_dir(run) / "accuracy.json", json.dumps(acc, indent=2) + "\n")
    if cfg.train.log == "tensorboard":
        from ..events import EventWriter

        # Accuracy against the noise level: the x-axis is t in thousandths (TensorBoard's step).
        w = EventWriter(router_dir(run))
        for t, a in zip(acc["t"], acc["accuracy"], strict=True):
            w.scalars(round(1000 * t), {"accuracy_vs_t": a, "prior": acc["prior"]}, "router/")
    from ..figures import router_accuracy_figure

    router_accuracy_figure(acc, run.path / "figures" / "router_accuracy.png")
    return {**out, "accuracy": acc}


def load_router(
    directory: Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    meta = read_meta(directory, f"decentdiff train router {directory.parent}")
    try:
        rcfg = router_from_dict(meta["router"])
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{directory}/meta.json lacks the router description; retrain"
        ) from None
    model = build_router(rcfg)
    model.load_state_dict(
        load_tensors(directory, "ema" if ema else "model", meta, expected=model.state_dict())
    )
    return model.to(device).eval(), meta


@torch.no_grad()
def router_accuracy(
    router: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None,
    assignments: np.ndarray,
    *,
    bins: int = 10,
    n: int = 1000,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Top-1 accuracy of the router in ``bins`` equal t-bins, on fresh noise over ``n`` images.

    Returns a dict with ``t`` (bin centres), ``accuracy`` per bin, and ``prior`` (the accuracy of
    always answering the largest cluster: what the router must beat). The same draws as
    :func:`decentdiff.ddm.calibration.calibration`, which also gives entropy, NLL and ECE.
    """
    from .calibration import calibration

    cal = calibration(router, images, labels, assignments, bins=bins, n=n, device=device, seed=seed)
    return {k: cal[k] for k in ("t", "accuracy", "prior", "n")}


def router_summary(run: Run, meta: dict[str, Any]) -> str:
    """One line: the router's accuracy at the lowest and highest noise level measured."""
    acc = meta["accuracy"]
    return (
        f"router: step {meta['step']}, accuracy {acc['accuracy'][0]:.2f} (t≈{acc['t'][0]:.2f}) "
        f"… {acc['accuracy'][-1]:.2f} (t≈{acc['t'][-1]:.2f}); prior {acc['prior']:.2f} "
        f"-> {run.path / 'figures' / 'router_accuracy.png'}"
    )
