"""Image inputs of the feature networks: checks them and converts them to float batches.

Owns :func:`image_batches`, shared by the classifier (:mod:`.classifier`) and Inception
(:mod:`.inception`) feature extraction: uint8 images in [0, 255] or float images in [-1, 1],
numpy or torch, converted one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from decentdiff.errors import DataError

__all__ = ["image_batches"]


def image_batches(
    images: np.ndarray | Tensor, batch: int, who: str
) -> tuple[tuple[int, ...], Iterator[Tensor]]:
    """Shape of images and an iterator over float32 batches in [-1, 1].

    uint8 images (numpy or torch) are scaled from [0, 255]; float ones are taken to be in [-1, 1]
    already. Conversion happens per batch, so a large uint8 set is never copied to float whole.
    """
    if isinstance(images, Tensor):
        t = images.detach().cpu()
        if not (t.dtype == torch.uint8 or t.dtype.is_floating_point):
            raise DataError(
                f"{who}: images must be uint8 in [0, 255] or float in [-1, 1], got {t.dtype}"
            )
        shape = tuple(t.shape)

        def get(i: int, j: int) -> Tensor:
            return t[i:j].float() / 127.5 - 1.0 if t.dtype == torch.uint8 else t[i:j].float()

    else:
        from decentdiff.data.cache import ImageRows

        # Rows of a memmap stay lazy: each batch reads only its rows.
        a = images if isinstance(images, ImageRows) else np.asarray(images)
        if not (a.dtype == np.uint8 or a.dtype.kind == "f"):
            raise DataError(
                f"{who}: images must be uint8 in [0, 255] or float in [-1, 1], got {a.dtype}"
            )
        shape = a.shape

        def get(i: int, j: int) -> Tensor:
            chunk = a[i:j].astype(np.float32)  # a writable copy: from_numpy warns on read-only
            return torch.from_numpy(chunk / 127.5 - 1.0 if a.dtype == np.uint8 else chunk)

    if len(shape) != 4:
        raise DataError(f"{who}: images must be (N, C, H, W), got shape {shape}")
    step = max(1, int(batch))

    def batches() -> Iterator[Tensor]:
        for i in range(0, shape[0], step):
            x = get(i, i + step)
            if not torch.isfinite(x).all():
                raise DataError(
                    f"{who}: images contain NaN or infinite values; check the sampler output"
                )
            yield x

    return shape, batches()
