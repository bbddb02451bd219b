"""Data owners leaving and joining a DDM run: remove an expert for good, add one for a new source.

Because experts never share anything (PAPERS.md §1), membership changes cost only a router:

- ``remove_expert(run, k)``: cluster k's owner withdraws. ``RUN/experts/k`` is deleted, the experts
  above k are renumbered (their weights are moved, not retrained), cluster k's rows are marked −1
  ("withdrawn") in ``partition.npz`` and the router is retrained, fresh, on the remaining rows.
  Models that saw cluster k's data (monolith, distilled student) are deleted too, so nothing trained
  on it remains; ``RUN/membership.json`` records what was withdrawn and deleted (the report reads it).
- ``add_expert(run, source)``: a new data source becomes cluster K. The original partition
  (``assignments``, hence ``partition_id``) is unchanged, so the other experts' files stay
  byte-identical; ``partition.npz`` gains ``added_<K>_source`` / ``added_<K>_fingerprint`` and
  ``num_parts`` K+1. The new expert is trained on the *training* part of the new source alone (its
  own held-out split, as for any source) and the router is retrained on every member's rows.

:func:`member_data` is the one place that assembles "every image of every current member with its
cluster": the router trainer here uses it, and so should any consumer that needs all members.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import ConfigError, DataError, RunError
from ..run import Run, RunData, load_data, training_only
from ..training.checkpoint import atomic_write_text
from .store import (
    PartitionRecord,
    expert_dir,
    load_partition,
    partition_extras,
    partition_path,
    save_partition,
)

WITHDRAWN = -1  # assignment of a training row whose owner withdrew


def membership_path(run: Run) -> Path:
    return run.path / "membership.json"


def added_sources(run: Run) -> dict[int, tuple[str, str]]:
    """{cluster: (source spec, fingerprint)} of the sources added with :func:`add_expert`."""
    path = partition_path(run)
    if not path.is_file():
        return {}
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            if name.startswith("added_") and name.endswith("_source"):
                k = int(name.split("_")[1])
                out[k] = (str(z[name]), str(z[f"added_{k}_fingerprint"]))
    return out


def _write_partition(
    run: Run, rec: PartitionRecord, train_idx: np.ndarray, added: dict[int, tuple[str, str]]
) -> None:
    """``store.save_partition`` keeping the clustering arrays, with the added sources."""
    # The stored prior counts the old membership: dropped here, recounted from the data by
    # cluster_prior until the next partition.
    extra: dict[str, Any] = {
        k: v for k, v in partition_extras(run).items() if not k.startswith(("added_", "prior_"))
    }
    for k, (spec, fp) in added.items():
        extra[f"added_{k}_source"] = np.str_(spec)
        extra[f"added_{k}_fingerprint"] = np.str_(fp)
    save_partition(run, rec, train_idx, extra)


def _added_data(spec: str, cfg: Config, shape: tuple[int, ...], fingerprint: str | None) -> RunData:
    data = load_data(training_only(replace(cfg.data, source=spec)))
    if data.shape != tuple(shape):
        raise DataError(
            f"{spec} has images of shape {tuple(data.shape)} but this RUN's are {tuple(shape)}; "
            "add data of the same shape, or start a new RUN"
        )
    if fingerprint is not None and data.fingerprint != fingerprint:
        raise RunError(
            f"added source {spec} changed since it was added (fingerprint {fingerprint[:12]}…); "
            "restore it or remove its expert"
        )
    return data


def member_data(
    run: Run, cfg: Config
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, PartitionRecord]:
    """Every current member's training images with their cluster.

    Returns:
        (images uint8 (N, C, H, W), labels (N,) or None, clusters int64 (N,) in 0..K−1, partition).
        Withdrawn rows are left out; added sources contribute their training part.
    """
    data = run.data(cfg, create=False)
    rec = load_partition(run, data)
    keep = rec.assignments >= 0
    images = [data.images[data.train_idx][keep]]
    labels = [data.labels[data.train_idx][keep]] if data.labels is not None else None
    clusters = [rec.assignments[keep]]
    for k, (spec, fp) in sorted(added_sources(run).items()):
        extra = _added_data(spec, cfg, data.shape, fp)
        images.append(extra.images[extra.train_idx])
        if labels is not None:
            if extra.labels is None:
                labels = None
            else:
                labels.append(extra.labels[extra.train_idx])
        clusters.append(np.full(len(extra.train_idx), k, np.int64))
    return (
        np.concatenate(images),
        np.concatenate(labels) if labels is not None else None,
        np.concatenate(clusters),
        rec,
    )


def prior_arrays(
    clusters: np.ndarray, labels: np.ndarray | None, num_classes: int, num_parts: int
) -> dict[str, np.ndarray]:
    """``prior_sizes`` (K,) and, with labels, ``prior_class_counts`` (C, K): images per cluster and
    per (class, cluster); rows marked withdrawn (< 0) are left out."""
    c = np.asarray(clusters, np.int64)
    keep = c >= 0
    k = num_parts
    out = {"prior_sizes": np.bincount(c[keep], minlength=k).astype(np.int64)}
    if labels is not None:
        y = np.asarray(labels, np.int64)[keep]
        table = np.zeros((max(num_classes, int(y.max()) + 1 if y.size else 0), k), np.int64)
        np.add.at(table, (y, c[keep]), 1)
        out["prior_class_counts"] = table
    return out


def cluster_prior(run: Run, cfg: Config, *, class_cond: bool, num_classes: int = 0) -> np.ndarray:
    """The prior the ``mixture`` routing draws each sample's expert from: images per cluster over
    the current members. Read from partition.npz when the partition stored it (no data needed to
    sample); after ``experts remove|add`` counted from the data (withdrawn rows out, added sources
    in).

    Returns:
        float64 (K,) images per cluster, or, when ``class_cond`` and labels exist, (C, K) images
        per (class, cluster) with C ≥ ``num_classes`` (row c ∝ p(k | c); a class without images
        is a row of zeros, which the ensemble replaces by the marginal).
    """
    rec = None
    stored = partition_extras(run)
    if "prior_sizes" in stored:
        rec = load_partition(run)
        sizes = np.asarray(stored["prior_sizes"], np.float64)
        table = stored.get("prior_class_counts")
        if len(sizes) == rec.num_parts and (not class_cond or table is not None):
            if not class_cond:
                return sizes
            table = np.asarray(table, np.float64)
            rows = max(num_classes, table.shape[0])
            return np.pad(table, ((0, rows - table.shape[0]), (0, 0)))
    data = run.data(cfg, create=False)
    rec = load_partition(run, data)
    keep = rec.assignments >= 0
    clusters = [rec.assignments[keep]]
    labels = [data.labels[data.train_idx][keep]] if data.labels is not None else None
    for k, (spec, fp) in sorted(added_sources(run).items()):
        extra = _added_data(spec, cfg, data.shape, fp)
        clusters.append(np.full(len(extra.train_idx), k, np.int64))
        if labels is not None:
            labels = None if extra.labels is None else [*labels, extra.labels[extra.train_idx]]
    c = np.concatenate(clusters)
    if not class_cond or labels is None:
        return np.bincount(c, minlength=rec.num_parts).astype(np.float64)
    arrays = prior_arrays(c, np.concatenate(labels), num_classes, rec.num_parts)
    return arrays["prior_class_counts"].astype(np.float64)


def train_member_router(
    run: Run, cfg: Config, *, fresh: bool = True, progress: bool = True
) -> dict[str, Any]:
    """``router.train_router`` over :func:`member_data` (withdrawn rows out, added sources in)."""
    from .router import fit_router

    images, labels, clusters, rec = member_data(run, cfg)
    n_cls = int(labels.max()) + 1 if (cfg.model.class_cond and labels is not None) else 0
    return fit_router(
        run,
        cfg,
        images,
        labels,
        clusters,
        rec,
        num_classes=n_cls,
        meta={
            "data_fingerprint": run.read_toml().get("data", {}).get("fingerprint"),
            "members": len(images),
        },
        fresh=fresh,
        progress=progress,
    )


def _record(run: Run, event: dict[str, Any]) -> None:
    path = membership_path(run)
    log = json.loads(path.read_text()) if path.is_file() else {"events": []}
    log["events"].append(event)
    atomic_write_text(path, json.dumps(log, indent=2) + "\n")


def remove_expert(run: Run, k: int, cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Withdraw cluster k for good; retrain only the router. Returns the membership event."""
    data = run.data(cfg, create=False)
    rec = load_partition(run, data)
    if not 0 <= k < rec.num_parts:
        raise RunError(f"expert {k} out of range: the partition has experts 0..{rec.num_parts - 1}")
    if rec.num_parts == 1:
        raise RunError("cannot remove the last expert: a RUN needs at least one; delete the RUN")
    from .experts import expert_metas

    metas = expert_metas(run, rec.num_parts, rec.partition_id)  # all present before we touch any
    added = added_sources(run)
    # The renumbering: cluster j > k becomes j − 1, cluster k's rows become WITHDRAWN.
    a = rec.assignments.copy()
    withdrawn_rows = (
        int((a == k).sum())
        if k not in added
        else len(_added_data(added[k][0], cfg, data.shape, added[k][1]).train_idx)
    )
    a[a == k] = WITHDRAWN
    a[a > k] -= 1
    new = replace(
        rec,
        assignments=a,
        num_parts=rec.num_parts - 1,
        centroids=None
        if rec.centroids is None
        else np.delete(rec.centroids, k, axis=0)
        if len(rec.centroids) == rec.num_parts
        else rec.centroids,
    )
    new_added = {(j - 1 if j > k else j): v for j, v in added.items() if j != k}
    shutil.rmtree(expert_dir(run, k))
    for j in range(k + 1, rec.num_parts):
        expert_dir(run, j).rename(expert_dir(run, j - 1))
        # The weights are untouched; only the bookkeeping follows the new numbering.
        meta = {
            **metas[j],
            "expert": j - 1,
            "partition_id": new.partition_id,
            "num_parts": new.num_parts,
        }
        atomic_write_text(expert_dir(run, j - 1) / "meta.json", json.dumps(meta, indent=2) + "\n")
    for j in range(k):
        meta = {**metas[j], "partition_id": new.partition_id, "num_parts": new.num_parts}
        atomic_write_text(expert_dir(run, j) / "meta.json", json.dumps(meta, indent=2) + "\n")
    _write_partition(run, new, data.train_idx, new_added)
    deleted = []
    for name in ("monolith", "distilled", "router"):
        if run.model_dir(name).exists():  # trained on cluster k's data: it must not remain
            shutil.rmtree(run.model_dir(name))
            deleted.append(name)
    if (run.path / "latents").exists():  # the cached latents hold cluster k's images too
        shutil.rmtree(run.path / "latents")
        deleted.append("latents")
    event = {
        "event": "remove",
        "expert": k,
        "source": added[k][0] if k in added else data.source,
        "withdrawn_images": withdrawn_rows,
        "renumbered": {str(j): j - 1 for j in range(k + 1, rec.num_parts)},
        "deleted": deleted,
        "partition_id": new.partition_id,
    }
    _record(run, event)
    train_member_router(run, cfg, fresh=True, progress=progress)
    return event


def add_expert(
    run: Run, source: str, cfg: Config, *, batch: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """A new data source joins as cluster K: its expert alone on it, then the router. No other
    expert's file is read for writing. Returns the membership event."""
    from .experts import expert_metas

    data = run.data(cfg, create=False)
    rec = load_partition(run, data)
    expert_metas(run, rec.num_parts, rec.partition_id)  # the existing experts must be complete
    added = added_sources(run)
    extra = _added_data(source, cfg, data.shape, None)
    if extra.fingerprint == data.fingerprint or any(
        fp == extra.fingerprint for _, fp in added.values()
    ):
        raise ConfigError(f"{source} is already a member of this RUN; add a different data set")
    k = rec.num_parts
    if expert_dir(run, k).exists():
        shutil.rmtree(expert_dir(run, k))  # leftovers of an interrupted add (not yet a member)
    train_added_expert(run, k, source, cfg, batch=batch, progress=progress, num_parts=k + 1)
    # Membership is committed only once the expert exists: partition first, then the router.
    _write_partition(
        run,
        replace(rec, num_parts=k + 1),
        data.train_idx,
        {**added, k: (source, extra.fingerprint)},
    )
    event = {"event": "add", "expert": k, "source": source, "images": len(extra.train_idx)}
    _record(run, event)
    train_member_router(run, cfg, fresh=True, progress=progress)
    return event


def train_added_expert(
    run: Run,
    k: int,
    source: str,
    cfg: Config,
    *,
    batch: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    num_parts: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) expert k of an added source, on that source's training part alone."""
    from ..training.generative import train_generative
    from .experts import expert_batch

    data = run.data(cfg, create=False)
    rec = load_partition(run, data)
    num_parts = num_parts if num_parts is not None else rec.num_parts
    known = added_sources(run).get(k)
    extra = _added_data(source, cfg, data.shape, known[1] if known else None)
    ecfg = replace(cfg, train=replace(cfg.train, batch=expert_batch(cfg, num_parts, batch)))
    return train_generative(
        expert_dir(run, k),
        extra.images[extra.train_idx],
        extra.labels[extra.train_idx] if extra.labels is not None else None,
        extra.num_classes,
        ecfg,
        role=f"expert {k}",
        meta={
            "expert": k,
            "num_parts": num_parts,
            "partition_id": rec.partition_id,
            "data_fingerprint": extra.fingerprint,
            "source": source,
            "shard_size": len(extra.train_idx),
            "added": True,
        },
        metrics_path=expert_dir(run, k) / "metrics.jsonl",
        fresh=fresh,
        progress=progress,
    )


def membership_lines(run: Run) -> list[str]:
    """Human-readable lines for the report ("expert 1 withdrawn: …")."""
    path = membership_path(run)
    if not path.is_file():
        return []
    lines = []
    for e in json.loads(path.read_text())["events"]:
        if e["event"] == "remove":
            lines.append(
                f"Expert {e['expert']} withdrawn ({e['withdrawn_images']} training images of "
                f"{e['source']}): its expert and every model trained on its data "
                f"({', '.join(e['deleted']) or 'none'}) were deleted, the router retrained without it; "
                "nothing trained on it remains in this RUN."
            )
        else:
            lines.append(
                f"Expert {e['expert']} added: trained alone on {e['images']} images of {e['source']}; "
                "the router was retrained, no other expert was touched."
            )
    return lines
