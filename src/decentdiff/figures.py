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
