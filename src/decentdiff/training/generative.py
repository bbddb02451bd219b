"""Train and load generative models (a UNet or DiT + objective) from uint8 images: monolith, experts, ...

A trained model directory is self-describing: ``meta.json`` holds the network's architecture (its
``unet`` entry, named so before DiTs existed; ``arch`` says which) and the
objective, so :func:`load_generative` rebuilds a velocity callable from the directory alone.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config, ObjectiveConfig
from ..diffusion.paths import DDPM, FlowMatching, Velocity, make_objective
from ..errors import CheckpointError, ConfigError
from ..models.registry import build_network, config_from_dict, network_config
from .checkpoint import load_tensors, read_meta
from .loop import resolve_device, train


def to_model_space(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, C, H, W) in 0..255 -> float32 in [−1, 1]; float input is taken as already in [−1, 1]."""
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.dtype.is_floating_point:
        return x.float()
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: Tensor) -> np.ndarray:
    """float (N, C, H, W) in [−1, 1] -> uint8 numpy."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


#: The objective settings each kind trains with (the others are ignored by it).
RELEVANT = {
    "fm": ("time_dist", "loss"),
    "ddpm": ("schedule", "loss", "timesteps", "weighting", "eps_param", "step_dist"),
    "vpred": ("schedule", "loss", "timesteps", "step_dist"),
}


def check_resumed_objective(meta: dict[str, Any] | None, cfg: ObjectiveConfig, where: Path) -> None:
    """A checkpoint continues only with the objective it was trained with (``meta``: the
    resumed meta.json, None for a fresh start); a difference is one line naming the setting."""
    if not meta or not isinstance(meta.get("objective"), dict):
        return
    try:
        was = asdict(ObjectiveConfig.from_meta(meta["objective"]))
    except TypeError:
        return  # a damaged meta is the training loop's to report
    now = asdict(cfg.resolved())
    for key in ("kind", *RELEVANT.get(was["kind"], ())):
        value = was.get(key)
        if now.get(key) != value:
            raise ConfigError(
                f"{where} was trained with objective.{key}={value}, not {now.get(key)}; resume "
                f"with --set objective.{key}={value} or pass --fresh to start over"
            )


def objective_from(cfg: ObjectiveConfig) -> FlowMatching | DDPM:
    """The objective ``cfg`` describes, ``auto`` settings resolved for its kind."""
    cfg = cfg.resolved()
    return make_objective(
        cfg.kind,
        time_dist=cfg.time_dist,
        schedule=cfg.schedule,
        loss=cfg.loss,
        timesteps=cfg.timesteps,
        weighting=cfg.weighting,
        eps_param=cfg.eps_param,
        step_dist=cfg.step_dist,
    )


def image_batches(
    images: Any,
    labels: np.ndarray | None,
    batch: int,
    device: torch.device,
    cond_drop: float,
    num_classes: int,
):
    """A batch drawer: (generator) -> (x0 (B, C, H, W) in [−1, 1], cond (B,) or None, indices (B,)).

    Indices are drawn with replacement from ``images`` only, so a model trained on a shard never
    touches any other shard. ``images`` is uint8 (N, C, H, W): an array, a memmap or an
    :class:`~decentdiff.data.cache.ImageRows`; only the batch's rows are read (a memmap or a row
    view is never materialised), and the batches are the same whichever of them holds the pixels.
    """
    in_memory = isinstance(images, np.ndarray) and not isinstance(images, np.memmap)
    data = torch.from_numpy(np.ascontiguousarray(images)) if in_memory else None
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if labels is not None else None
    n = len(images)

    def draw(g: torch.Generator) -> tuple[Tensor, Tensor | None, Tensor]:
        idx = torch.randint(0, n, (batch,), generator=g)
        rows = data[idx] if data is not None else torch.from_numpy(np.asarray(images[idx.numpy()]))
        x0 = to_model_space(rows).to(device)
        cond = None
        if lab is not None and num_classes > 0:
            c = lab[idx].clone()
            drop = torch.rand(batch, generator=g) < cond_drop
            c[drop] = num_classes  # the null class: trains the unconditional model for guidance
            cond = c.to(device)
        return x0, cond, idx

    return draw


def train_generative(
    out_dir: Path,
    images: np.ndarray,
    labels: np.ndarray | None,
    num_classes: int,
    cfg: Config,
    *,
    role: str,
    meta: dict[str, Any] | None = None,
    metrics_path: Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    flops_from: int = 0,
) -> dict[str, Any]:
    """Train a network (``model.preset``/``model.arch``) with ``cfg.objective`` on ``images`` (uint8 (N, C, H, W)) into ``out_dir``.

    ``flops_from``: the step ``train_flops`` counts from (see :func:`~decentdiff.training.loop.train`).
    """
    if len(images) == 0:
        raise ConfigError(f"{role}: no training images")
    device = resolve_device(cfg.train.device)
    n_cls = num_classes if cfg.model.class_cond else 0
    if cfg.model.class_cond and (labels is None or num_classes == 0):
        raise ConfigError("model.class_cond = true needs a labelled data source")
    from ..latent import cache_dir_for, model_inputs, resumed_meta

    network_config(cfg.model.preset, 1, 0, cfg.model.arch)  # a bad preset fails before encoding
    check_resumed_objective(resumed_meta(out_dir, fresh), cfg.objective, out_dir)
    # With model.vae the network sees latents (encoded once, cached in RUN/latents).
    images, vae_meta = model_inputs(
        images,
        cfg.model.vae,
        cache_dir_for(out_dir),
        device,
        resumed=resumed_meta(out_dir, fresh),
    )
    ucfg = network_config(cfg.model.preset, images.shape[1], n_cls, cfg.model.arch)
    objective = objective_from(cfg.objective)
    torch.manual_seed(cfg.train.seed)  # parameter initialisation only
    model = build_network(ucfg).to(device)
    draw = image_batches(images, labels, cfg.train.batch, device, cfg.train.cond_drop, n_cls)

    def loss_fn(m: nn.Module, g: torch.Generator) -> Tensor:
        x0, cond, _ = draw(g)
        return objective.loss(m, x0, cond, g)

    full_meta = {
        **(meta or {}),
        "kind": "generative",
        "unet": ucfg.to_dict(),
        "objective": asdict(cfg.objective.resolved()),
        "model": asdict(cfg.model),
        "image_shape": list(images.shape[1:]),
        "num_images": len(images),
        **({"vae": vae_meta} if vae_meta else {}),
    }
    return train(
        model,
        loss_fn,
        out_dir,
        cfg.train,
        meta=full_meta,
        metrics_path=metrics_path,
        role=role,
        fresh=fresh,
        progress=progress,
        flops_from=flops_from,
    )


def load_generative(
    directory: Path, *, ema: bool = True, device: str | torch.device = "cpu", make_hint: str = ""
) -> tuple[Velocity, nn.Module, dict[str, Any], FlowMatching | DDPM]:
    """Rebuild a trained model from its directory alone.

    Returns:
        (velocity callable, the network (UNet or DiT) in eval mode, meta.json, the objective).
    """
    meta = read_meta(directory, make_hint)
    try:
        ucfg = config_from_dict(meta["unet"])
        ocfg = ObjectiveConfig.from_meta(meta["objective"])
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{directory}/meta.json lacks the model description; retrain"
        ) from None
    model = build_network(ucfg)
    model.load_state_dict(
        load_tensors(directory, "ema" if ema else "model", meta, expected=model.state_dict())
    )
    model.to(device).eval()
    objective = objective_from(ocfg)
    if meta.get("vae") and isinstance(objective, DDPM):
        # Latents are not confined to [−1, 1] as pixels are: x̂0 is not clipped there.
        return objective.velocity(model, clip_x0=None), model, meta, objective
    return objective.velocity(model), model, meta, objective
