"""One training loop for every model decentdiff trains (monolith, experts, router, students, clients).

The loop knows nothing about diffusion: it receives ``loss_fn(model, generator) -> loss | (loss,
logs)`` which draws its own batch. Every random number of step s comes from a generator seeded by
(seed, s) alone, and the learning rate depends on s alone (warm-up, then constant), so a run
resumed from any checkpoint is bitwise identical to an uninterrupted one, whatever ``steps`` is.
A model trained in pieces (a federated client's rounds, :class:`Carry`) counts s from its first
piece: s = offset + the piece's own step (since 2026-12-02; a client's batches differ from
earlier versions', so federated runs from before are not reproduced bitwise). With ``train.precision`` bf16 the loss (the model's forward passes) runs under ``torch.autocast``;
the weights, the optimizer, the EMA and the checkpoints stay fp32.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import OPTIMIZERS, TrainConfig
from ..errors import CheckpointError, ConfigError, TrainingError
from ..events import LOG_KINDS, EventWriter
from ..precision import autocast, resolve_precision
from .checkpoint import (
    PREVIOUS,
    load_optimizer_tensors,
    load_tensors,
    optimizer_tensors,
    read_meta,
    remove_stale_temps,
    save_checkpoint,
)

LossFn = Callable[[nn.Module, torch.Generator], "Tensor | tuple[Tensor, dict[str, float]]"]


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r} requested but CUDA is not available; use --device cpu "
            "(--set train.device=cpu)"
        )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(
            f"device {spec!r} requested but MPS is not available; use --device cpu "
            "(--set train.device=cpu)"
        )
    return dev


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step: a pure function of (seed, step), the basis of exact resume."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def lr_at(step: int, cfg: TrainConfig) -> float:
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.steps >= 1, f"train.steps must be ≥ 1, got {cfg.steps}"),
        (cfg.batch >= 1, f"train.batch must be ≥ 1, got {cfg.batch}"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"train.lr must be > 0, got {cfg.lr}"),
        (0 <= cfg.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {cfg.ema_decay}"),
        (cfg.warmup >= 0, f"train.warmup must be ≥ 0, got {cfg.warmup}"),
        (cfg.ckpt_every >= 1, f"train.ckpt_every must be ≥ 1, got {cfg.ckpt_every}"),
        (cfg.grad_clip >= 0, f"train.grad_clip must be ≥ 0 (0 = off), got {cfg.grad_clip}"),
        (0 <= cfg.cond_drop < 1, f"train.cond_drop must be in [0, 1), got {cfg.cond_drop}"),
        (
            cfg.optimizer in OPTIMIZERS,
            f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer``'s optimiser over ``model``'s parameters (see config.OPTIMIZERS)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def measure_flops(model: nn.Module, loss_fn: LossFn) -> float:
    """FLOPs of one forward + backward pass of ``loss_fn`` (torch.utils.flop_counter)."""
    from ..evaluation.flops import flop_counter

    counter = flop_counter()
    with counter:
        out = loss_fn(model, torch.Generator().manual_seed(0))
        (out[0] if isinstance(out, tuple) else out).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


class EMA:
    """Exponential moving average of parameters, with the usual short-run warm-up of the decay."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def append_jsonl(path: Path | None, row: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _resume(
    directory: Path, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA, cfg: TrainConfig
) -> dict[str, Any]:
    """Load the checkpoint in ``directory`` into model, optimizer and EMA; returns its meta."""
    old = read_meta(directory)
    start = int(old.get("step", 0))
    if start > cfg.steps:
        raise ConfigError(
            f"{directory} is already trained to step {start} > --steps {cfg.steps}; "
            f"pass --steps ≥ {start}, or --fresh to start over"
        )
    trained_with = old.get("train", {}).get("optimizer", "adamw")  # older checkpoints: AdamW
    if trained_with != cfg.optimizer:
        raise ConfigError(
            f"{directory} was trained with train.optimizer={trained_with}, not {cfg.optimizer}; "
            f"pass --set train.optimizer={trained_with} to resume it, or --fresh to start over"
        )
    model_sd = load_tensors(directory, "model", old, expected=model.state_dict())
    ema_sd = load_tensors(directory, "ema", old, expected=ema.shadow)
    state = load_tensors(directory, "state", old)
    if "step" not in state or int(state["step"]) != start:
        raise CheckpointError(f"{directory}: state and meta.json disagree on the step; retrain")
    model.load_state_dict(model_sd)
    ema.shadow = ema_sd
    if start > 0:
        try:
            load_optimizer_tensors(opt, state)
        except (ValueError, KeyError, RuntimeError):
            raise CheckpointError(
                f"{directory}/state.safetensors does not fit this model's optimizer; "
                "use the same preset or --fresh"
            ) from None
    return old


@dataclass
class Carry:
    """State one :func:`train` call hands to the next when a model trains in pieces.

    A federated client trains a few steps each round, in separate calls. Without a Carry every
    call is a new run: a new Adam, the learning-rate warm-up and the EMA's warm-up from step 0.
    With one, they continue: ``offset`` shifts the schedule and the EMA warm-up to the client's
    steps so far, ``optimizer`` (tensors as :func:`optimizer_tensors` flattens them) and ``ema``
    (the EMA's weights) are loaded at the start and replaced with the new state at the end.
    """

    offset: int = 0
    optimizer: dict[str, torch.Tensor] | None = None
    ema: dict[str, torch.Tensor] | None = None


def train(
    model: nn.Module,
    loss_fn: LossFn,
    out_dir: Path,
    cfg: TrainConfig,
    *,
    carry: Carry | None = None,
    meta: dict[str, Any] | None = None,
    metrics_path: Path | None = None,
    role: str = "model",
    fresh: bool = False,
    progress: bool = True,
    flops_per_step: float | None = None,
    flops_from: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` to ``cfg.steps`` steps, resuming from ``out_dir`` when it holds a checkpoint.

    Args:
        model: the module to train (already on its device).
        loss_fn: draws a batch with the given generator and returns the scalar loss (and logs).
        out_dir: checkpoint directory (``model``/``ema``/``state`` safetensors + ``meta.json``).
        cfg: optimiser and schedule settings.
        meta: extra JSON-able facts stored in ``meta.json`` (configs, data fingerprint, ...).
        metrics_path: JSONL file that receives a row every ``cfg.log_every`` steps.
        fresh: ignore an existing checkpoint and start over.
        flops_per_step: if None, measured once with the FLOP counter.
        flops_from: the step ``train_flops`` counts from: a model started at step W from another
            model's checkpoint (an expert's shared warm-up, ``ddm/warm.py``) pays only for its
            own steps, ``train_flops = flops_per_step · (step − W)``; the W steps are the other's.
        carry: continue the schedule, optimizer and EMA of an earlier call (see :class:`Carry`);
            updated in place at the end. Only with ``fresh`` (a checkpoint resume has its own).
    Returns:
        The final ``meta.json`` contents.
    """
    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    opt = make_optimizer(model, cfg)
    if cfg.log not in LOG_KINDS:
        raise ConfigError(f"train.log={cfg.log!r}: choose one of {', '.join(LOG_KINDS)}")
    ema = EMA(model, cfg.ema_decay)
    offset = 0
    if carry is not None:
        if not fresh:
            raise ValueError("train(carry=...) needs fresh=True")
        offset = carry.offset
        if carry.optimizer:
            load_optimizer_tensors(opt, carry.optimizer)
        if carry.ema:
            ema.shadow = {
                k: v.detach().clone().to(ema.shadow[k].device) for k, v in carry.ema.items()
            }
    start = 0
    meta = dict(meta or {})
    remove_stale_temps(out_dir)
    repair = False
    prev_dir = out_dir / PREVIOUS
    if not fresh and ((out_dir / "meta.json").is_file() or (prev_dir / "meta.json").is_file()):
        try:
            old = _resume(out_dir, model, opt, ema, cfg)
        except CheckpointError as e:
            # A crash while a checkpoint was renamed into place (or a damaged file) leaves the
            # previous complete checkpoint in .prev; resume from it, saying so, or report both.
            if not (prev_dir / "meta.json").is_file():
                raise
            try:
                old = _resume(prev_dir, model, opt, ema, cfg)
            except CheckpointError:
                raise e from None
            repair = True
            print(
                f"decentdiff: warning: {e}; resuming from the last good checkpoint "
                f"{prev_dir} (step {old.get('step', 0)})",
                file=sys.stderr,
            )
        start = int(old.get("step", 0))
        flops_per_step = flops_per_step or old.get("flops_per_step")
    if flops_per_step is None:
        flops_per_step = measure_flops(model, loss_fn)
    n_params = sum(p.numel() for p in model.parameters())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if cfg.precision == "auto" and start > 0 and old.get("precision") in ("fp32", "bf16"):
        precision = old["precision"]  # a resumed run keeps what auto chose (exact resume)
    else:
        # auto's size measure: forward FLOPs per image ≈ (forward + backward) / 3 per image.
        precision = resolve_precision(cfg.precision, device, flops_per_step / cfg.batch / 3)
    base_meta = {
        **meta,
        "role": role,
        "train": asdict(cfg),
        "precision": precision,
        "params": n_params,
        "flops_per_step": flops_per_step,
    }

    def checkpoint(step: int, last_loss: float | None) -> dict[str, Any]:
        own = step - flops_from
        m = {**base_meta, "step": step, "train_flops": flops_per_step * own, "loss": last_loss}
        save_checkpoint(
            out_dir,
            {
                "model": model.state_dict(),
                "ema": ema.shadow,
                "state": {"step": torch.tensor(step), **optimizer_tensors(opt)},
            },
            m,
        )
        return m

    if start >= cfg.steps:
        if start == 0 or repair:
            return checkpoint(start, None)
        return read_meta(out_dir)
    model.train()
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc=f"train {role}",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
    t0, seen, last, final = time.perf_counter(), 0, None, None
    # TensorBoard event files beside metrics.jsonl (`tensorboard --logdir RUN` shows each model).
    events = EventWriter(metrics_path.parent) if cfg.log == "tensorboard" and metrics_path else None
    for step in bar:
        g = step_generator(cfg.seed, step + offset)
        for group in opt.param_groups:
            group["lr"] = lr_at(step + offset, cfg)
        with autocast(precision, device):
            out = loss_fn(model, g)
        loss, logs = out if isinstance(out, tuple) else (out, {})
        loss = loss.float()
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingError(
                f"{role}: loss became {loss.item()} at step {step}; the last good checkpoint in "
                f"{out_dir} is kept — lower train.lr (now {cfg.lr}) or check the data"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model, step + offset)
        last = float(loss.detach())
        seen += cfg.batch
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            dt = time.perf_counter() - t0
            row = {
                "role": role,
                "step": done,
                "loss": last,
                "lr": lr_at(step + offset, cfg),
                "img_per_s": seen / max(dt, 1e-9),
                **logs,
            }
            append_jsonl(metrics_path, row)
            if events is not None:
                events.scalars(done, row, prefix="train/")
            bar.set_postfix(loss=f"{last:.4f}")
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            final = checkpoint(done, last)
        if on_step is not None:
            on_step(done)
    bar.close()
    if carry is not None:
        carry.offset = offset + cfg.steps
        carry.optimizer = {k: v.detach().cpu().clone() for k, v in optimizer_tensors(opt).items()}
        carry.ema = {k: v.detach().cpu().clone() for k, v in ema.shadow.items()}
    return final if final is not None else read_meta(out_dir)
