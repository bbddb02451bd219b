"""Experts: one flow-matching model per data cluster, each trained in complete isolation.

``train_expert`` reads only its own shard (the rows of the training part assigned to part k) and
writes only ``RUN/experts/<k>/``: a compute island needs nothing else from the RUN (PAPERS.md §1).
FLOP matching: by default an expert uses batch B/K (B = ``train.batch``, the monolith's batch) for
the same number of steps, so the K experts together cost what one monolith costs.

With ``init="monolith"`` (``--init monolith``) an expert starts from RUN/monolith's checkpoint at
step W instead of random weights (``ddm/warm.py``): that checkpoint is then the one other thing it
reads from the RUN, once, before its first step; it still draws only from its own shard.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..data.cache import rows_of
from ..errors import ConfigError, RunError
from ..run import Run, RunData
from ..training.checkpoint import read_meta
from ..training.generative import train_generative
from .store import check_expert_index, expert_dir, load_partition
from .warm import Start, plan_start, seed_expert


def expert_batch(cfg: Config, num_parts: int, batch: int | None) -> int:
    """The explicit ``--batch`` if given, else B/K (FLOP-matched to the monolith's batch B)."""
    return batch if batch is not None else max(1, cfg.train.batch // num_parts)


def train_expert(
    run: Run,
    k: int,
    cfg: Config,
    *,
    batch: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    train_images: np.ndarray | None = None,
    init: str = "random",
) -> dict[str, Any]:
    """Train expert k on shard k only.

    Args:
        batch: expert batch; None = B/K.
        init: ``random``, or ``monolith``: a new (or ``fresh``) expert starts from RUN/monolith's
            weights, EMA, optimizer state and step W; ``cfg.train.steps`` counts W in
            (``ddm/warm.py``).
        train_images: replaces the training part's images (same rows; uint8 or float in [−1, 1]);
            only rows of shard k are read — the isolation test fills the others with NaN.
    """
    job = expert_job(run, k, cfg, batch=batch)
    images = job.images
    if train_images is not None:
        if len(train_images) != len(job.data.train_idx):
            raise ConfigError("train_images must have one row per training image")
        images = train_images[job.shard]
    start = job.start(run, k, init, fresh=fresh)
    return train_generative(
        job.out_dir,
        images,
        job.labels,
        job.data.num_classes,
        job.cfg,
        role=f"expert {k}",
        meta=job.meta,
        metrics_path=job.out_dir / "metrics.jsonl",
        fresh=fresh and not start.record,  # a warm start resumes the checkpoint it just wrote
        progress=progress,
        flops_from=start.flops_from,
    )


@dataclass
class ExpertJob:
    """What one island trains: its shard's images and labels, its config (batch B/K) and meta."""

    out_dir: Path
    data: RunData
    shard: np.ndarray  # rows of the training part in cluster k
    images: np.ndarray  # uint8 (n_k, C, H, W)
    labels: np.ndarray | None
    cfg: Config
    meta: dict[str, Any]

    def start(self, run: Run, k: int, init: str, *, fresh: bool, write: bool = True) -> Start:
        """Check how the expert starts (``init``) and record it in ``meta``; with ``write``, a
        warm start's first checkpoint is written from the monolith's (``write=False``: a
        distributed island's rank 0 writes it later)."""
        start = plan_start(run, k, self.cfg, init, fresh=fresh, fingerprint=self.data.fingerprint)
        if start.record is not None:
            self.meta["init"] = start.record
        if start.seed and write:
            seed_expert(run, self.out_dir, start, self.meta, self.cfg, f"expert {k}")
        return start


def expert_job(run: Run, k: int, cfg: Config, *, batch: int | None = None) -> ExpertJob:
    """Expert k's share of RUN: only cluster k's rows are selected (nothing else is read later)."""
    data = run.data(cfg, create=False, heldout=False)
    rec = load_partition(run, data)
    check_expert_index(rec, k)
    shard = rec.parts()[k]
    labels = data.labels[data.train_idx][shard] if data.labels is not None else None
    ecfg = replace(cfg, train=replace(cfg.train, batch=expert_batch(cfg, rec.num_parts, batch)))
    return ExpertJob(
        out_dir=expert_dir(run, k),
        data=data,
        shard=shard,
        images=rows_of(rows_of(data.images, data.train_idx), shard),
        labels=labels,
        cfg=ecfg,
        meta={
            "expert": k,
            "num_parts": rec.num_parts,
            "partition_id": rec.partition_id,
            "data_fingerprint": data.fingerprint,
            "source": data.source,
            "shard_size": len(shard),
        },
    )


def expert_metas(run: Run, num_parts: int, partition_id: str | None = None) -> list[dict[str, Any]]:
    """Every expert's meta.json, checking each exists and was trained on this partition."""
    metas = []
    for k in range(num_parts):
        d = expert_dir(run, k)
        meta = read_meta(d, f"decentdiff train expert {run.path} --expert {k}")
        if partition_id is not None and meta.get("partition_id") != partition_id:
            raise RunError(
                f"expert {k} in {d} was trained on another partition; retrain it with "
                f"`decentdiff train expert {run.path} --expert {k} --fresh`"
            )
        metas.append(meta)
    return metas


def loss_text(loss: float | None) -> str:
    """A training loss for a summary line: 4 decimals (``n/a`` before the first step)."""
    return "n/a" if loss is None else f"{loss:.4f}"


def expert_summary(k: int, meta: dict[str, Any]) -> str:
    """One line per trained expert: step, shard size, loss (and the warm-up it started from)."""
    rec = meta.get("init")
    since = f", from the {rec['from']}'s step {rec['step']}" if isinstance(rec, dict) else ""
    return (
        f"expert {k}: step {meta['step']}{since}, {meta['shard_size']} images, "
        f"loss {loss_text(meta.get('loss'))}"
    )
