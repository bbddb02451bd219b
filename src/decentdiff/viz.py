"""Image grids as PNG (PIL only: fast, no matplotlib needed for samples)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def grid(
    images: np.ndarray, nrow: int | None = None, pad: int = 2, min_size: int = 28
) -> np.ndarray:
    """Tile uint8 (N, C, H, W) images into one (H', W', C) uint8 array, upscaled to ≥ min_size px."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    n, c, h, w = images.shape
    scale = max(1, math.ceil(min_size / max(h, w)))
    if scale > 1:
        images = images.repeat(scale, axis=2).repeat(scale, axis=3)
        h, w = h * scale, w * scale
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    out = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return out


def save_grid(images: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
    from PIL import Image

    arr = grid(images, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    img.save(path)
    return path
