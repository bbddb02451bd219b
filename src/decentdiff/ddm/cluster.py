"""Step 1 of DDM: cluster a RUN's training images into K disjoint parts and record them.

:func:`partition_run` is what ``decentdiff partition`` (and the demo) does: features (pixel PCA,
Inception or the classifier's; ``auto`` picks by the data), k-means / random / label partition, the record with the clustering itself (fine
centroids, fine → coarse map) and the cluster prior the default routing draws from, and a figure.
A failed partition of a new RUN leaves no half-made RUN behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import ConfigError, DecentDiffError
from ..run import Run
from .store import PartitionRecord, partition_path, save_partition


@dataclass
class Partitioned:
    record: PartitionRecord
    path: Path  # RUN/partition.npz
    figure: Path  # RUN/figures/partition.png
    images: int  # training images partitioned

    def summary(self) -> str:
        """One line: how, how many, the cluster sizes."""
        rec = self.record
        how = rec.method + (f", {rec.features}" if rec.features != "none" else "")
        sizes = " ".join(str(int(s)) for s in rec.sizes())
        return f"partition ({how}) of {self.images} images into {rec.num_parts}: sizes {sizes}"


def partition_features(features: str, channels: int, labelled: bool) -> str:
    """``auto``: pixel PCA for labelled grey images (digits cluster by shape in pixel space), the
    FID Inception network's pool3 features for colour or unlabeled data, which pixel PCA would
    cluster by brightness and colour rather than by content (docs/data.md). Other names are
    returned as they are."""
    if str(features).strip().lower() != "auto":
        return features
    return "pca" if channels == 1 and labelled else "inception"


def cluster_contents(
    assignments: np.ndarray,
    labels: np.ndarray,
    num_parts: int,
    class_names: Sequence[str] | None = None,
    top: int = 3,
) -> tuple[float, list[list[tuple[str, float]]]]:
    """What each cluster holds: (normalised mutual information of clusters and classes, and per
    cluster its ``top`` most frequent classes as (name, share of the cluster)). Rows assigned -1
    (a withdrawn expert's) are left out.

    NMI is sklearn's (arithmetic mean normalisation): 0 for clusters unrelated to the classes,
    1 when they are the classes.
    """
    from sklearn.metrics import normalized_mutual_info_score

    a = np.asarray(assignments, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    kept = a >= 0  # rows of a withdrawn expert are -1: not a cluster
    a, y = a[kept], y[kept]
    nmi = float(normalized_mutual_info_score(y, a)) if len(a) else float("nan")
    width = max(int(y.max()) + 1 if y.size else 0, len(class_names or ()))
    out = []
    for k in range(num_parts):
        counts = np.bincount(y[a == k], minlength=width)
        total = max(int(counts.sum()), 1)
        best = np.argsort(-counts, kind="stable")[:top]
        out.append(
            [
                (class_names[c] if class_names else str(c), counts[c] / total)
                for c in best
                if counts[c] > 0
            ]
        )
    return nmi, out


def _class_features(images, labels, features: str, seed: int, num_classes: int) -> np.ndarray:
    """(C, D) mean features of each class, from a seeded sample of every class (``--by classes``)."""
    from ..data.cache import rows_of
    from ..data.features import featurize
    from ..data.partition import class_means, class_sample

    if labels is None:
        raise ConfigError("--by classes needs labelled data; use --by kmeans for unlabelled images")
    pick = class_sample(labels, seed=seed)
    feats = featurize(rows_of(images, pick), features, labels=labels[pick], seed=seed)
    return class_means(feats, labels[pick], max(int(num_classes or 0), int(labels.max()) + 1))


def partition_run(
    run: Run,
    cfg: Config,
    parts: int,
    *,
    by: str = "kmeans",
    features: str = "auto",
    seed: int = 0,
    fine: int | None = None,
    force: bool = False,
) -> Partitioned:
    """Split RUN's training part into ``parts`` clusters into RUN/partition.npz.

    Args:
        by: ``kmeans`` (the paper), ``classes`` (k-means over whole classes' mean features, for
            many-class labelled data), ``random`` or ``label`` (controls).
        features: a featuriser (k-means only): ``auto`` (:func:`partition_features`), ``pca``,
            ``inception``, ``classifier`` or one registered with ``register_featurizer``.
        fine: fine k-means centroids (default min(1024, N/4)).
        force: replace a partition that experts were already trained on.
    """
    from ..data.cache import rows_of
    from ..data.features import featurize
    from ..data.partition import PARTITIONERS, make_partition
    from ..figures import partition_figure
    from .membership import prior_arrays

    if partition_path(run).exists() and (run.path / "experts").exists() and not force:
        raise ConfigError(
            f"{run.path} already has a partition with trained experts; use a new RUN, or --fresh "
            "(the experts and router must then be retrained with --fresh)"
        )
    new_run = not run.toml_path.is_file()
    codec = None
    if not new_run:
        recorded = run.read_toml().get("model", {}).get("vae", "")
        if cfg.model.vae != recorded:
            raise ConfigError(
                f"{run.path} was created {'with --vae ' + recorded if recorded else 'in pixel space'}"
                "; the latent space of a RUN is fixed: use a new RUN for another one"
            )
    if cfg.model.vae:
        from ..latent import LatentCodec

        codec = LatentCodec.load(cfg.model.vae)  # a bad --vae fails before anything is written
    d = run.data(cfg)
    if codec is not None:
        try:
            codec.check(tuple(d.images.shape[1:]))  # sides the VAE's downsampling divides
        except DecentDiffError:
            if new_run:
                run.toml_path.unlink(missing_ok=True)
            raise
    images = rows_of(d.images, d.train_idx)  # a memmap's rows are read in chunks, not copied
    labels = d.labels[d.train_idx] if d.labels is not None else None
    method = PARTITIONERS.get(
        str(by).strip().lower()
    )  # None: make_partition reports the unknown method
    featurised = method is not None and method.needs_features
    try:
        features = partition_features(features, d.shape[0], labels is not None)
        if featurised and method.per_class:
            feats = _class_features(images, labels, features, seed, d.num_classes)
        else:
            feats = featurize(images, features, labels=labels, seed=seed) if featurised else None
        p = make_partition(
            by, k=parts, features=feats, labels=labels, n=len(images), seed=seed, n_fine=fine
        )
    except DecentDiffError:
        if new_run:  # a failed partition leaves no half-made RUN behind
            run.toml_path.unlink(missing_ok=True)
        raise
    rec = PartitionRecord(
        assignments=np.asarray(p.assignments, dtype=np.int64),
        num_parts=parts,
        method=by,
        features=features if featurised else "none",
        seed=seed,
        fingerprint=d.fingerprint,
        centroids=p.centroids,
    )
    # The clustering itself travels too (fine centroids, fine -> coarse map, parameters): a new
    # image can be assigned to a cluster from RUN alone.
    extra = {
        f"kmeans_{k}": v
        for k, v in p.to_arrays().items()
        if k in ("fine_centroids", "fine_to_coarse", "params")
    }
    # The prior the default `mixture` routing draws experts from, so sampling needs no data.
    extra.update(prior_arrays(rec.assignments, labels, d.num_classes, rec.num_parts))
    path = save_partition(run, rec, d.train_idx, extra)
    fig = partition_figure(images, rec.parts(), run.path / "figures" / "partition.png")
    return Partitioned(record=rec, path=path, figure=fig, images=len(images))
