"""Experts from a shared warm-up: every expert starts from the monolith's checkpoint at step W.

``decentdiff train experts RUN --init monolith --steps S`` starts each expert that has no
checkpoint yet (or is trained with ``--fresh``) from ``RUN/monolith`` as it is now: its weights,
EMA weights, optimizer state (Adam's moments and step count) and step counter W. The expert then
trains its own S − W steps on its own shard, in complete isolation, so the learning-rate schedule
and the EMA's warm-up continue where the monolith's stopped. This costs one synchronisation, at the
start: the monolith's checkpoint is the only thing an expert reads from the rest of the RUN, once,
and the monolith's files are never written.

The data stream is the expert's own. A batch is a pure function of (``train.seed``, step) and the
rows it is drawn from (``training/generative.py``), so there is no sampler position to carry over:
at step s ≥ W the expert draws from its shard exactly the batch an expert started at random draws
at step s. The first checkpoint is written from the monolith's tensors with the expert's own meta
(its shard, its ``train`` settings, no ``flops_per_step`` or ``precision``: those are measured for
its own batch) and the normal resume path continues from it.

FLOPs: the expert's meta records ``"init": {"from": "monolith", "step": W, "train_flops": F_W}``
(F_W: the monolith's ``train_flops`` at step W) and its ``train_flops`` counts its own steps only,
(S − W) · ``flops_per_step``. :func:`total_train_flops` adds each distinct warm-up once to the
experts' own FLOPs: the shared W steps are paid for once, however many experts start from them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ObjectiveConfig
from ..errors import CheckpointError, ConfigError, RunError
from ..models.registry import config_from_dict, network_config, preset_name
from ..run import Run
from ..training.checkpoint import (
    PREVIOUS,
    TENSOR_FILES,
    load_tensors,
    read_meta,
    remove_stale_temps,
    save_checkpoint,
)
from ..training.generative import RELEVANT
from .store import expert_dir

#: ``--init`` choices: where an expert without a checkpoint starts.
INITS = ("random", "monolith")


def check_init(init: str) -> str:
    """``init`` if it is one of :data:`INITS`, else a one-line ConfigError."""
    if init not in INITS:
        raise ConfigError(f"unknown --init {init!r}; choose one of: {', '.join(INITS)}")
    return init


def init_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The warm-start record of a model's meta.json (None: it started from random weights)."""
    rec = meta.get("init")
    return rec if isinstance(rec, dict) and rec.get("from") in INITS else None


def total_train_flops(metas: list[dict[str, Any]]) -> float:
    """Training FLOPs of models used together (an ensemble's experts, or one model): each one's
    own ``train_flops`` plus each distinct warm-up it started from, once. (Experts started from
    the monolith at different steps each add their own F_W: an upper bound, since the monolith's
    steps up to the earlier W are counted twice.)"""
    own = sum(float(m.get("train_flops", 0.0)) for m in metas)
    shared = {}
    for m in metas:
        rec = init_of(m)
        if rec is not None:
            key = (rec["from"], int(rec["step"]), float(rec.get("train_flops", 0.0)))
            shared[key] = float(rec.get("train_flops", 0.0))
    return own + sum(shared.values())


@dataclass(frozen=True)
class Start:
    """How an expert starts: its ``init`` record and whether its first checkpoint is to be written
    from the monolith's (``seed``) before training."""

    record: dict[str, Any] | None  # None: random weights (or a random-started checkpoint)
    seed: bool

    @property
    def flops_from(self) -> int:
        """The step the expert's own ``train_flops`` counts from."""
        return int(self.record["step"]) if self.record else 0


def _current_meta(out: Path, init: str) -> dict[str, Any] | None:
    """The meta.json the training loop would resume (``out``'s, else ``.prev``'s), or None.

    A checkpoint whose meta.json does not parse is the training loop's to report (it may repair
    it from ``.prev``), except before a warm start, which would replace it: that is refused.
    """
    present = False
    for d in (out, out / PREVIOUS):
        p = d / "meta.json"
        present = present or p.is_file()
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            return meta
    if present and init == "monolith":
        raise CheckpointError(f"{out}/meta.json is unreadable; pass --fresh to start over")
    return None


def plan_start(
    run: Run, k: int, cfg: Config, init: str, *, fresh: bool, fingerprint: str | None = None
) -> Start:
    """How expert k starts with ``--init init``: checked before any training, reading only
    meta.json files (expert k's, and the monolith's when it is to start from it).

    Args:
        cfg: the experts' config (``train.steps`` = S, the total including the warm-up).
        fingerprint: the RUN's data fingerprint; the monolith must have been trained on that data.
    """
    check_init(init)
    out = expert_dir(run, k)
    existing = None if fresh else _current_meta(out, init)
    if existing is not None:
        rec = init_of(existing)
        was = rec["from"] if rec else "random"
        if was != init:
            raise RunError(
                f"expert {k} in {out} was started from {was} weights, not --init {init}; pass "
                f"--init {was} to continue it, or --fresh to start it over from {init}"
            )
        if rec is not None:
            _check_steps(cfg, int(rec["step"]))
        return Start(rec, seed=False)
    if init == "random":
        return Start(None, seed=False)
    mono = monolith_meta(run)
    check_fits(run, mono, cfg, fingerprint)
    w = int(mono["step"])
    _check_steps(cfg, w)
    rec = {"from": "monolith", "step": w, "train_flops": float(mono.get("train_flops", 0.0))}
    return Start(rec, seed=True)


def monolith_meta(run: Run) -> dict[str, Any]:
    """RUN/monolith's meta.json, or a RunError that says how to make it."""
    d = run.model_dir("monolith")
    if not (d / "meta.json").is_file():
        raise RunError(
            f"{run.path} has no monolith to start the experts from: train the shared warm-up "
            f"first with `decentdiff train monolith {run.path} --steps W`"
        )
    return read_meta(d)


def _check_steps(cfg: Config, w: int) -> None:
    if cfg.train.steps <= w:
        raise ConfigError(
            f"--steps {cfg.train.steps} is not beyond the monolith's {w} steps: an expert started "
            f"from it counts them in its total and trains S − {w} of its own; pass --steps > {w}"
        )


def check_fits(run: Run, mono: dict[str, Any], cfg: Config, fingerprint: str | None) -> None:
    """A one-line error unless the monolith's checkpoint continues as one of these experts: the
    same data, network (preset, architecture, class conditioning, latent space), objective and
    optimizer."""
    where = run.model_dir("monolith")
    retrain = (
        "retrain the monolith like the experts "
        f"(`decentdiff train monolith {run.path} --steps W --fresh` with the same settings)"
    )
    if fingerprint is not None and mono.get("data_fingerprint") not in (None, fingerprint):
        raise RunError(f"{where} was trained on other data than this RUN's partition; {retrain}")
    model = mono.get("model") or {}
    theirs_name = preset_name(str(model.get("preset", "")), str(model.get("arch", "")))
    mine_name = preset_name(cfg.model.preset, cfg.model.arch)
    was = {
        "model.class_cond": bool(model.get("class_cond", False)),
        "model.vae": str(model.get("vae", "")),
        "model.preset": theirs_name,
        "train.optimizer": mono.get("train", {}).get("optimizer", "adamw"),
    }
    now = {
        "model.class_cond": cfg.model.class_cond,
        "model.vae": cfg.model.vae,
        "model.preset": mine_name,
        "train.optimizer": cfg.train.optimizer,
    }
    try:
        obj = asdict(ObjectiveConfig.from_meta(mono["objective"]))
        net = config_from_dict(mono["unet"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{where}/meta.json lacks the model description; retrain") from None
    mine_obj = asdict(cfg.objective.resolved())
    for key in ("kind", *RELEVANT.get(obj["kind"], ())):
        was[f"objective.{key}"], now[f"objective.{key}"] = obj.get(key), mine_obj.get(key)
    for key, value in was.items():
        if now[key] != value:
            raise ConfigError(
                f"{where} was trained with {key}={_text(value)}, the experts with "
                f"{_text(now[key])}: its weights do not fit them; start the experts with "
                f"--set {key}={_text(value)}, or {retrain}"
            )
    mine = network_config(cfg.model.preset, net.in_channels, net.num_classes, cfg.model.arch)
    if mine.to_dict() != net.to_dict():
        raise ConfigError(
            f"{where} holds another network than the experts' (model.preset={mine_name}); {retrain}"
        )


def _text(value: Any) -> str:
    """A setting's value as ``--set`` takes it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def seed_expert(
    run: Run, out_dir: Path, start: Start, meta: dict[str, Any], cfg: Config, role: str
) -> dict[str, Any]:
    """Write expert's first checkpoint into ``out_dir``: the monolith's tensors (weights, EMA,
    optimizer state, step W) with the expert's own meta (``meta``: its shard and ``init`` record).

    Any checkpoint already in ``out_dir`` is removed first (``--fresh``), so the resume path can
    never fall back to it. The write is atomic (``save_checkpoint``: meta.json last).
    """
    assert start.record is not None and start.seed
    src = run.model_dir("monolith")
    mono = read_meta(src)
    w = int(start.record["step"])
    if int(mono.get("step", -1)) != w:
        raise RunError(f"{src} moved from step {w} to {mono.get('step')} meanwhile; run again")
    tensors = {name: load_tensors(src, name, mono) for name in TENSOR_FILES}
    if "step" not in tensors["state"] or int(tensors["state"]["step"]) != w:
        raise CheckpointError(f"{src}: state and meta.json disagree on the step; retrain it")
    first = {
        **meta,
        "role": role,
        "kind": "generative",
        **{key: mono[key] for key in ("unet", "objective", "image_shape") if key in mono},
        "model": asdict(cfg.model),
        **({"vae": mono["vae"]} if mono.get("vae") else {}),
        "train": asdict(cfg.train),
        "step": w,
        "train_flops": 0.0,
        "loss": None,
    }
    clear_checkpoint(out_dir)
    save_checkpoint(out_dir, tensors, first)
    return first


def clear_checkpoint(out_dir: Path) -> None:
    """Remove the checkpoint in ``out_dir`` (``.prev`` first, so a crash part-way never leaves a
    ``.prev`` to fall back to, then meta.json, then its tensors); logs (metrics.jsonl,
    commands.txt) stay."""
    if not out_dir.is_dir():
        return
    remove_stale_temps(out_dir)
    shutil.rmtree(out_dir / PREVIOUS, ignore_errors=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    for name in TENSOR_FILES:
        (out_dir / f"{name}.safetensors").unlink(missing_ok=True)
