"""The data set record: :class:`Dataset` (uint8 images, optional labels, names) and its content
:func:`fingerprint`, which run directories record so that a RUN made from other data is caught."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays element-wise makes no sense for ==
class Dataset:
    """An image data set held in memory.

    Attributes:
        images: uint8 array (N, C, H, W) with C in {1, 3}.
        labels: int64 array (N,) with values in 0..num_classes-1, or None for unlabeled data.
        fingerprint: sha256 hex digest of the content (see :func:`fingerprint`).
        name: the normalised source spec it was loaded from, e.g. ``"mnist5k"`` or
            ``"npz:/abs/path.npz"``.
        class_names: one name per class (index = label value), or None when the labels are their
            own names (0..K-1).
        skipped: the files left out as unusable (folder:DIR with ``data.skip_bad`` > 0), each as
            ``"relative/path: reason"``.
    """

    images: np.ndarray
    labels: np.ndarray | None
    fingerprint: str
    name: str
    class_names: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Internal invariants: loaders validate user input and raise DataError before this point,
        # so a failure here is a programming error and keeps its ValueError.
        x = self.images
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"images must be a uint8 array (N, C, H, W), got {_describe(x)}")
        if x.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got shape {x.shape}")
        y = self.labels
        if y is not None:
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"labels must be int64 of shape ({x.shape[0]},), got {_describe(y)}"
                )
            if y.size and int(y.min()) < 0:
                raise ValueError("labels must be non-negative")
            if self.class_names is not None and y.size and int(y.max()) >= len(self.class_names):
                raise ValueError(
                    f"label {int(y.max())} has no name among {len(self.class_names)} class_names"
                )

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: np.ndarray | None,
        name: str,
        class_names: Sequence[str] | None = None,
    ) -> Dataset:
        """Builds a Dataset from in-memory arrays, computing its fingerprint.

        Args:
            images: uint8 (N, C, H, W), C in {1, 3}.
            labels: integer (N,) with values 0..K-1, or None.
            name: a name for the data (shown in messages and recorded in runs).
            class_names: optional names, one per class.
        """
        images = np.ascontiguousarray(images)
        if labels is not None:
            labels = np.ascontiguousarray(labels, dtype=np.int64)
        return cls(
            images=images,
            labels=labels,
            fingerprint=fingerprint(images, labels),
            name=name,
            class_names=tuple(class_names) if class_names is not None else None,
        )

    @property
    def num_classes(self) -> int:
        """Number of classes: len(class_names), else max label + 1, or 0 without labels."""
        if self.labels is None:
            return 0
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        # The default dataclass repr would print the arrays.
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, shape={self.shape}, "
            f"num_classes={self.num_classes}, fingerprint={self.fingerprint[:12]}...)"
        )


def fingerprint(images: np.ndarray, labels: np.ndarray | None) -> str:
    """Content hash of a data set: sha256 over shapes, dtypes, image bytes and label bytes.

    The hash covers the C-ordered bytes, so the same pixels give the same fingerprint whatever the
    memory layout of the array passed in. The dtype enters with its byte order (e.g. ``<i8``).

    Args:
        images: array (N, C, H, W), normally uint8.
        labels: array (N,), normally int64, or None.

    Returns:
        64 hex characters.
    """
    from decentdiff.data.cache import StreamHash

    images = np.ascontiguousarray(images)
    h = StreamHash(images.dtype.str, tuple(images.shape))
    h.update(images)
    return h.finish(labels)


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__
