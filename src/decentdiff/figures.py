"""Figures (matplotlib, imported lazily, Agg backend: works without a screen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def router_accuracy_figure(acc: dict[str, Any], path: Path) -> Path:
    """Router top-1 accuracy vs t, against the accuracy of always guessing the largest cluster."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(acc["t"], acc["accuracy"], "o-", label="router")
    ax.axhline(acc["prior"], color="gray", ls="--", label="largest cluster (prior)")
    ax.set_xlabel("t (0 = data, 1 = noise)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Router accuracy vs noise level")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def partition_figure(
    images: np.ndarray, parts: list[np.ndarray], path: Path, per_row: int = 12
) -> Path:
    """A row of random examples per cluster, labelled with the cluster's size."""
    plt = _plt()
    k = len(parts)
    fig, axes = plt.subplots(k, 1, figsize=(per_row * 0.6, 0.75 * k + 0.3), squeeze=False)
    rng = np.random.default_rng(0)
    for i, idx in enumerate(parts):
        chosen = rng.permutation(idx)[:per_row]
        tiles = [images[j].transpose(1, 2, 0) for j in chosen]
        h, w, c = images.shape[2], images.shape[3], images.shape[1]
        tiles += [np.full((h, w, c), 255, np.uint8)] * (per_row - len(tiles))
        row = np.concatenate(tiles, axis=1)
        ax = axes[i, 0]
        ax.imshow(row[..., 0] if c == 1 else row, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{i}\nn={len(idx)}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Clusters (one expert each)", fontsize=10)
    return _save(fig, path)


def training_curves_figure(curves: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Loss vs step of every trained model (log scale), one line each."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in curves.items():
        if pts:
            steps, losses = zip(*pts, strict=True)
            ax.plot(steps, losses, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Training curves")
    return _save(fig, path)


def _annotate_apart(ax, points: list[tuple[float, float, str]], fontsize: float) -> None:
    """Label each (x, y, text) point to its upper right; a label that would overlap one already
    placed (two routings of the same cost and about the same FID) moves down a line until it
    does not. Label sizes are estimated from the font size, in points."""
    fig = ax.figure
    to_pt = 72.0 / fig.dpi
    line = fontsize * 1.25
    placed: list[tuple[float, float, float, float]] = []  # x0, x1, y0, y1 in points
    for x, y, text in sorted(points, key=lambda p: -p[1]):  # the highest first
        px, py = (v * to_pt for v in ax.transData.transform((x, y)))
        x0, x1 = px + 4, px + 4 + 0.6 * fontsize * len(text)
        dy = 3.0
        while any(
            x0 < b[1] and b[0] < x1 and py + dy < b[3] and b[2] < py + dy + line for b in placed
        ):
            dy -= line
        placed.append((x0, x1, py + dy, py + dy + line))
        ax.annotate(text, (x, y), fontsize=fontsize, xytext=(4, dy), textcoords="offset points")


def fid_vs_flops_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """FID against sampling GFLOPs per image, one point per model/routing (the paper's Table 1 view)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    points = []
    for r in rows:
        name = r["model"] if r.get("routing") is None else f"{r['model']} {r['routing']}"
        marker = "s" if r["model"] == "monolith" else ("^" if r["model"] == "distilled" else "o")
        ax.scatter(r["sample_gflops_per_image"], r["fid"], marker=marker, s=40)
        points.append((r["sample_gflops_per_image"], r["fid"], name))
    floor = rows[0].get("floor", {}).get("fid") if rows else None
    if floor is not None:
        ax.axhline(
            floor, color="gray", ls="--", lw=1, label=f"floor (train vs held-out) {floor:.2f}"
        )
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("sampling GFLOPs per image (measured)")
    ax.set_ylabel("FID (classifier features)")
    ax.grid(alpha=0.3)
    ax.set_title("Quality vs sampling cost")
    ax.autoscale_view()  # the final limits, so that labels are placed apart where they will be
    _annotate_apart(ax, points, fontsize=7)
    return _save(fig, path)


def attribution_figure(
    samples: np.ndarray,
    routing: np.ndarray,
    real: np.ndarray,
    parts: list[np.ndarray],
    path: Path,
    per_row: int = 8,
) -> Path:
    """Samples grouped by their dominant expert, with real examples of that expert's cluster.

    Args:
        samples: uint8 (N, C, H, W) generated images.
        routing: (N, K) mean router weight of each expert along each sample's trajectory.
        real: uint8 training images; ``parts[k]`` indexes cluster k's rows.
    """
    plt = _plt()
    k = routing.shape[1]
    dom = routing.argmax(1)
    fig, axes = plt.subplots(k, 2, figsize=(per_row * 1.2, 0.8 * k + 0.5), squeeze=False)
    rng = np.random.default_rng(0)
    c, h, w = samples.shape[1:]
    blank = np.full((h, w, c), 255, np.uint8)

    def row(imgs):
        tiles = [im.transpose(1, 2, 0) for im in imgs] + [blank] * (per_row - len(imgs))
        r = np.concatenate(tiles[:per_row], axis=1)
        return r[..., 0] if c == 1 else r

    for j in range(k):
        mine = np.flatnonzero(dom == j)
        share = routing[mine, j].mean() if len(mine) else 0.0
        axes[j, 0].imshow(row(samples[mine[:per_row]]), cmap="gray", vmin=0, vmax=255)
        axes[j, 0].set_ylabel(
            f"expert {j}\n{len(mine)} samples\nweight {share:.2f}",
            rotation=0,
            ha="right",
            va="center",
            fontsize=7,
        )
        idx = rng.permutation(parts[j])[:per_row] if len(parts[j]) else []
        axes[j, 1].imshow(row(real[idx]), cmap="gray", vmin=0, vmax=255)
        for ax in axes[j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("generated (dominant expert)", fontsize=8)
    axes[0, 1].set_title("real images of that cluster", fontsize=8)
    return _save(fig, path)


def routing_diagnostics_figure(diag: dict[str, Any], path: Path) -> Path:
    """Router accuracy / ECE / entropy vs t, and each diagnosed routing's expert usage vs t."""
    plt = _plt()
    usage = diag["usage"]
    cols = 1 + len(usage)
    fig, axes = plt.subplots(1, cols, figsize=(4.6 * cols, 3.4), squeeze=False)
    cal, ax = diag["calibration"], axes[0, 0]
    ax.plot(cal["t"], cal["accuracy"], "o-", label="accuracy")
    ax.plot(cal["t"], cal["ece"], "s-", label="ECE")
    ax.axhline(cal["prior"], color="gray", ls="--", label="largest cluster")
    ax2 = ax.twinx()
    ax2.plot(cal["t"], cal["entropy"], "^-", color="tab:red", alpha=0.6, label="entropy (nats)")
    ax2.set_ylabel("entropy (nats)", color="tab:red")
    ax.set_xlabel("t (0 = data, 1 = noise)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Router vs noise level")
    ax.legend(loc="center left", fontsize=7)
    ax.grid(alpha=0.3)
    for i, u in enumerate(usage, start=1):
        ax = axes[0, i]
        share = np.asarray(u["share"])
        t = np.asarray(u["t"])
        ax.stackplot(t, share.T, labels=[f"expert {k}" for k in range(share.shape[1])], alpha=0.8)
        ax.plot(t, u["switch_rate"], "k.-", label="switch rate")
        if "prior" in u:  # where the expert mix should sit: the cluster sizes
            for c in np.cumsum(u["prior"])[:-1]:
                ax.axhline(c, color="k", ls=":", lw=1)
        ax.invert_xaxis()
        ax.set_xlabel("t (sampling runs right to left →)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{u['routing']}: {u['switches_per_image']:.1f} switches / image", fontsize=10)
        ax.legend(loc="upper left", fontsize=6, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def class_histogram_figure(
    rows: list[dict[str, Any]], real: np.ndarray, path: Path, max_rows: int = 6
) -> Path:
    """Share of generated images per predicted class, per model/routing, against the data's."""
    plt = _plt()
    rows = [r for r in rows if r.get("class_hist")][:max_rows]
    k = len(real)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * k + 2), 3.4))
    width = 0.8 / (len(rows) + 1)
    x = np.arange(k)
    ax.bar(x, real / real.sum(), width, color="gray", label="held-out data")
    for i, r in enumerate(rows, start=1):
        h = np.asarray(r["class_hist"], float)
        name = r["model"] if not r.get("routing") else f"{r['model']} {r['routing']}"
        ax.bar(x + i * width, h / h.sum(), width, label=f"{name} (FID {r['fid']:.1f})")
    ax.set_xticks(x + 0.4 - width / 2, [str(c) for c in range(k)])
    ax.set_xlabel("class predicted by the evaluation classifier")
    ax.set_ylabel("share of images")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def memorisation_figure(
    panels: list[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]], path: Path
) -> Path:
    """Generated images beside their nearest training images, one row of pairs per panel.

    Args:
        panels: (row label, pairs); each pair is (generated uint8 (C, H, W), nearest training
            image uint8 (C, H, W), caption).
    """
    plt = _plt()
    per_row = max([len(p) for _, p in panels] + [1])
    fig, axes = plt.subplots(
        len(panels), per_row, figsize=(1.5 * per_row + 1.2, 1.25 * len(panels) + 0.4), squeeze=False
    )
    for r, (label, pairs) in enumerate(panels):
        for q in range(per_row):
            ax = axes[r, q]
            ax.set_xticks([])
            ax.set_yticks([])
            if q >= len(pairs):
                ax.axis("off")
                continue
            gen, train, caption = pairs[q]
            c, h, w = gen.shape
            gap = np.full((c, h, max(1, w // 8)), 255, np.uint8)
            tile = np.concatenate([gen, gap, train], axis=2).transpose(1, 2, 0)
            ax.imshow(tile[..., 0] if c == 1 else tile, cmap="gray" if c == 1 else None,
                      vmin=0, vmax=255)  # fmt: skip
            ax.set_xlabel(caption, fontsize=6)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(
        "Most copy-like pairs: generated | nearest training image (* = a copy)", fontsize=8
    )
    return _save(fig, path)
