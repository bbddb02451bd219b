"""Memorisation: how close each generated image is to its nearest training images.

For every generated image, its two nearest training images by L2 distance, in pixels (images
in [0, 1]) and in the evaluation features. A generated image counts as a **copy** when

    d(x, NN1) / d(x, NN2) < threshold      (pixels; threshold 1/3 by default)

the ratio criterion of Yoon et al. 2023 ("Diffusion probabilistic models generalize when they
fail to memorize") as used by Gu et al. 2023 ("On memorization in diffusion models", arXiv
2310.02664): far nearer its nearest training image than the next one. The ratio ignores the scale
of the distances (digits and photographs alike) and a near-empty image close to many training
images at once is not a copy. The same ratio on the features is reported beside it.

The functions here are pure (arrays in, arrays out); :func:`check` is the whole check of one set
of generated images, optionally per group of training images (a federated run's clients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError

#: The default copy threshold on d(NN1) / d(NN2) (Yoon et al. 2023; Gu et al. 2023).
THRESHOLD = 1 / 3
#: Training rows compared at once: a chunk of 32×32×3 images is 50 MB in float32.
CHUNK = 4096
#: Candidates kept per query beyond k from the float32 pass, whose distances are then recomputed
#: exactly in float64 (the matmul form ||a||² + ||b||² − 2ab loses ~1e-3 to cancellation at
#: 3,072 pixels), and among which repeated training images are skipped.
SPARE = 16


@dataclass
class Neighbours:
    """The k nearest reference rows of each query row.

    Attributes:
        distance: float64 (N, k) L2 distances, ascending along each row.
        index: int64 (N, k) row of the reference set of each neighbour.
    """

    distance: np.ndarray
    index: np.ndarray

    def ratio(self) -> np.ndarray:
        """d(NN1) / d(NN2) per query, float64 (N,); 0 where both are 0."""
        d1, d2 = self.distance[:, 0], self.distance[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)


def _float_rows(rows: Any) -> np.ndarray:
    """(B, D) float32 of a block of reference rows: uint8 images scaled to [0, 1]."""
    a = np.asarray(rows)
    flat = a.reshape(len(a), -1)
    if a.dtype == np.uint8:
        return flat.astype(np.float32) / np.float32(255.0)
    return flat.astype(np.float32)


def _float64_rows(rows: Any) -> np.ndarray:
    a = np.asarray(rows)
    flat = a.reshape(len(a), -1)
    return flat.astype(np.float64) / 255.0 if a.dtype == np.uint8 else flat.astype(np.float64)


def nearest(
    queries: np.ndarray | torch.Tensor,
    refs: Any,
    k: int = 2,
    *,
    chunk: int = CHUNK,
    device: torch.device | str = "cpu",
    distinct: bool = False,
) -> Neighbours:
    """The ``k`` nearest rows of ``refs`` to each row of ``queries`` (L2).

    The reference set is read ``chunk`` rows at a time (a memmap or
    :class:`~decentdiff.data.cache.ImageRows` of 100,000 images never sits in memory whole);
    candidates found in float32 on ``device`` are re-ranked by exact float64 distances.

    Args:
        queries: (N, ...) float rows, flattened to (N, D) (pixels in [0, 1], or features).
        refs: (M, ...) rows indexable by slices and index arrays: uint8 images (scaled to
            [0, 1]) or float rows of the same D.
        k: neighbours per query, at most M.
        distinct: skip a row equal to a nearer neighbour's (an image the set holds twice), so
            that the second neighbour of a copy of a duplicated image is another image (among
            the ``k + SPARE`` nearest; repeated rows fill up when there are fewer distinct).

    Returns:
        :class:`Neighbours` with (N, k) distances and indices into ``refs``.

    Raises:
        DataError: fewer than ``k`` reference rows, or rows of another width than the queries.
    """
    q64 = np.asarray(torch.as_tensor(queries).detach().cpu(), dtype=np.float64)
    q64 = q64.reshape(len(q64), -1)
    m = len(refs)
    if m < k:
        raise DataError(f"the nearest-neighbour check needs at least {k} training images, got {m}")
    if len(q64) == 0:
        return Neighbours(np.zeros((0, k)), np.zeros((0, k), np.int64))
    keep = min(m, k + SPARE)
    q = torch.as_tensor(q64, dtype=torch.float32, device=device)
    qn = (q * q).sum(1, keepdim=True)
    best_d = torch.full((len(q), 0), float("inf"), device=device)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64, device=device)
    for start in range(0, m, chunk):
        r = torch.as_tensor(_float_rows(refs[start : start + chunk]), device=device)
        if r.shape[1] != q.shape[1]:
            raise DataError(
                f"training rows have {r.shape[1]} values each, generated rows {q.shape[1]}: "
                "not the same image shape or features"
            )
        d2 = (qn + (r * r).sum(1)[None, :] - 2.0 * (q @ r.T)).clamp_min_(0.0)
        idx = torch.arange(start, start + len(r), device=device).expand(len(q), -1)
        best_d = torch.cat([best_d, d2], 1)
        best_i = torch.cat([best_i, idx], 1)
        if best_d.shape[1] > keep:
            best_d, pos = best_d.topk(keep, dim=1, largest=False)
            best_i = best_i.gather(1, pos)
    cand = best_i.cpu().numpy()
    # Exact distances of the candidates, a few queries at a time (each gathers keep rows).
    dist = np.empty(cand.shape)
    dup = np.zeros(cand.shape, bool)
    step = max(1, 1024 // keep)
    for a in range(0, len(q64), step):
        c = cand[a : a + step]
        flat = np.sort(np.unique(c))  # a memmap reads sorted rows fastest
        rows = _float64_rows(refs[flat])[np.searchsorted(flat, c)]  # (step, keep, D)
        dist[a : a + step] = np.sqrt(((q64[a : a + step, None, :] - rows) ** 2).sum(-1))
        if distinct:  # a row equal to a nearer (or, at the same distance, lower) candidate's
            o = np.lexsort((c, dist[a : a + step]), axis=1)
            r = np.take_along_axis(rows, o[..., None], 1)
            same = (r[:, :, None, :] == r[:, None, :, :]).all(-1)  # (step, keep, keep)
            earlier = np.tril(np.ones((keep, keep), bool), -1)
            np.put_along_axis(dup[a : a + step], o, (same & earlier).any(-1), 1)
    # Distinct rows by distance (ties by index), then repeated rows, only to fill k.
    order = np.lexsort((cand, dist, dup), axis=1)[:, :k]
    return Neighbours(
        np.take_along_axis(dist, order, 1), np.take_along_axis(cand, order, 1).astype(np.int64)
    )


def to_unit(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Generated images, float (N, C, H, W) in [−1, 1], as float64 in [0, 1] (training images'
    uint8 / 255)."""
    x = np.asarray(torch.as_tensor(images).detach().cpu(), dtype=np.float64)
    return (np.clip(x, -1.0, 1.0) + 1.0) / 2.0


def summarise(nb: Neighbours, threshold: float) -> dict[str, float]:
    """Fraction of copies (ratio < threshold) and the spread of the nearest distances."""
    d1 = nb.distance[:, 0]
    return {
        "copies": float(np.mean(nb.ratio() < threshold)),
        "nn_min": float(d1.min()),
        "nn_median": float(np.median(d1)),
        "nn_mean": float(d1.mean()),
    }


def check_threshold(threshold: float) -> float:
    """The copy threshold, refused outside (0, 1] (the ratio is at most 1)."""
    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(
            f"--copy-threshold must be in (0, 1] (d(NN1) / d(NN2) is at most 1), got {threshold}"
        )
    return float(threshold)


def check(
    generated: np.ndarray | torch.Tensor,
    train_images: Any,
    *,
    threshold: float = THRESHOLD,
    generated_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    groups: dict[str, np.ndarray] | None = None,
    chunk: int = CHUNK,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The memorisation check of ``generated`` against ``train_images``.

    Args:
        generated: float (N, C, H, W) in [−1, 1].
        train_images: uint8 (M, C, H, W) (an array, memmap or ImageRows).
        threshold: a generated image is a copy when d(NN1) / d(NN2) < threshold (pixels).
        generated_features, train_features: (N, F) and (M, F) evaluation features, or None.
        groups: name -> rows of ``train_images`` (disjoint; e.g. each federated client's): the
            check is repeated within each group, as that group's owner could run it on its own
            images alone.

    Returns:
        ``{"pixels": Neighbours, "features": Neighbours | None, "groups": {name: {"pixels",
        "features"}}, "summary": {...}}``; indices are rows of ``train_images``.

    Raises:
        DataError: shapes that do not match, fewer than 2 training images (or in a group).
        ConfigError: a threshold outside (0, 1].
    """
    threshold = check_threshold(threshold)
    gen = to_unit(generated)
    if gen.ndim != 4 or tuple(gen.shape[1:]) != tuple(train_images.shape[1:]):
        raise DataError(
            f"generated images {tuple(gen.shape)} and training images "
            f"{tuple(train_images.shape)} differ in shape; both must be (N, C, H, W) alike"
        )
    if not np.isfinite(gen).all():
        raise DataError("the generated images hold NaN or inf; nothing to compare")
    feats = generated_features is not None and train_features is not None
    if feats and (len(generated_features) != len(gen) or len(train_features) != len(train_images)):
        raise DataError(
            f"{len(generated_features)} generated features for {len(gen)} images, or "
            f"{len(train_features)} training features for {len(train_images)} images"
        )

    def within(rows: np.ndarray | None) -> dict[str, Neighbours | None]:
        from ..data.cache import rows_of

        img = train_images if rows is None else rows_of(train_images, rows)
        px = nearest(gen, img, chunk=chunk, device=device, distinct=True)
        ft = None
        if feats:
            f = train_features if rows is None else train_features[rows]
            ft = nearest(generated_features, f, chunk=chunk, device=device, distinct=True)
        if rows is not None:  # indices back to rows of train_images
            px = Neighbours(px.distance, rows[px.index])
            ft = None if ft is None else Neighbours(ft.distance, rows[ft.index])
        return {"pixels": px, "features": ft}

    out: dict[str, Any] = {"groups": {}}
    if groups:
        for name, rows in groups.items():
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) < 2:
                raise DataError(f"{name} holds {len(rows)} training image(s); the check needs 2")
            out["groups"][name] = within(rows)
        covered = np.concatenate([np.asarray(r, np.int64) for r in groups.values()])
        if len(np.unique(covered)) != len(covered):
            raise DataError("the groups of training images overlap; each image has one owner")
    # The whole set is searched again rather than merged from the groups: an image two groups
    # both hold must not be its own second neighbour.
    out.update(within(None))
    summary: dict[str, Any] = {
        "criterion": "d(NN1) / d(NN2) < threshold, L2 on pixels in [0, 1]",
        "threshold": threshold,
        "n": len(gen),
        "n_train": len(train_images),
        "pixels": summarise(out["pixels"], threshold),
        "features": None if out["features"] is None else summarise(out["features"], threshold),
    }
    if groups:
        summary["groups"] = {
            name: {
                "n_train": len(groups[name]),
                "pixels": summarise(g["pixels"], threshold),
                "features": None if g["features"] is None else summarise(g["features"], threshold),
            }
            for name, g in out["groups"].items()
        }
    out["summary"] = summary
    return out


def closest_pairs(nb: Neighbours, count: int = 8) -> list[tuple[int, int, float, float]]:
    """The ``count`` most copy-like (generated, training) pairs, by ascending d(NN1) / d(NN2):
    (generated row, training row, distance, ratio)."""
    r = nb.ratio()
    order = np.lexsort((nb.distance[:, 0], r))[:count]
    return [(int(i), int(nb.index[i, 0]), float(nb.distance[i, 0]), float(r[i])) for i in order]


def summary_line(s: dict[str, Any]) -> str:
    """One line for the terminal from a check's summary (as kept in an eval row)."""
    px, n = s["pixels"], s["n"]
    line = (
        f"{round(px['copies'] * n)} of {n} generated images ({px['copies']:.1%}) are copies of a "
        f"training image (d(NN1) / d(NN2) < {s['threshold']:.3g}, pixels)"
    )
    if s.get("heldout_pixels") is not None:
        line += f"; held-out images: {s['heldout_pixels']['copies']:.1%}"
    if s.get("features") is not None:
        line += f"; in the features: {s['features']['copies']:.1%}"
    groups = s.get("groups") or {}
    if groups:
        worst = max(groups, key=lambda g: groups[g]["pixels"]["copies"])
        line += f"; per client at most {groups[worst]['pixels']['copies']:.1%} ({worst})"
    line += f"; median nearest distance {px['nn_median']:.3g}"
    if s.get("figure"):
        line += f" -> {s['figure']}"
    return line
