"""The partition record: :class:`Partition`, K disjoint parts of N items as
``RUN/partition.npz`` stores them, with the centroids a k-means partition places new items by; and
the feature geometry (checks, L2 normalisation, nearest centroid) it shares with the k-means
partitions of :mod:`decentdiff.data.partition`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from decentdiff.errors import ConfigError, DataError


@dataclass(eq=False)  # eq=False: element-wise array comparison makes no sense for ==
class Partition:
    """A partition of N items into K disjoint, non-empty parts.

    Attributes:
        assignments: int64 (N,), the part id 0..K-1 of each item.
        centroids: float32 (K, D), coarse centroids in the L2-normalised feature space (kmeans
            only, else None).
        fine_centroids: float32 (F, D), fine centroids in the same space (kmeans only).
        fine_assignments: int64 (N,), the fine cluster 0..F-1 of each item (kmeans only).
        method: "kmeans", "random", "label" or "classes".
        params: JSON-able settings that produced it; always holds ``k`` and ``seed``.
        fine_to_coarse: int64 (F,), the coarse cluster of each fine centroid (kmeans only), so
            that ``assignments == fine_to_coarse[fine_assignments]``.
    """

    assignments: np.ndarray
    centroids: np.ndarray | None
    fine_centroids: np.ndarray | None
    fine_assignments: np.ndarray | None
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    fine_to_coarse: np.ndarray | None = None

    @property
    def k(self) -> int:
        """Number of parts K."""
        return int(self.params["k"])

    @property
    def n(self) -> int:
        """Number of items N."""
        return int(self.assignments.shape[0])

    def parts(self) -> list[np.ndarray]:
        """Item indices of each part.

        Returns:
            K sorted int64 arrays, disjoint, whose union is arange(N).
        """
        order = np.argsort(self.assignments, kind="stable")  # stable: indices stay sorted per part
        return np.split(order.astype(np.int64), np.cumsum(self.sizes())[:-1])

    def sizes(self) -> np.ndarray:
        """int64 (K,): number of items in each part."""
        return np.bincount(self.assignments, minlength=self.k).astype(np.int64)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Parts of new items, by the same rule as the fit (kmeans only).

        Each row is L2-normalised, goes to its nearest fine centroid, and takes that centroid's
        coarse cluster. Useful for held-out images (e.g. the oracle routing strategy).

        Args:
            features: (M, D) features from the same featuriser as the partition.

        Returns:
            int64 (M,) part ids.

        Raises:
            ConfigError: the partition is not a kmeans partition.
            DataError: features of the wrong width or not finite.
        """
        if self.fine_centroids is None or self.fine_to_coarse is None:
            raise ConfigError(
                f"a {self.method} partition cannot place new items; only --by kmeans can"
            )
        x = _normalise(_check_features(features, "assign"))
        if x.shape[1] != self.fine_centroids.shape[1]:
            raise DataError(
                f"features have {x.shape[1]} dimensions but the partition was made with "
                f"{self.fine_centroids.shape[1]}; use the same featuriser"
            )
        return self.fine_to_coarse[_nearest(x, self.fine_centroids)]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (e.g. RUN/partition.npz); inverse of :meth:`from_arrays`."""
        out = {
            "assignments": self.assignments,
            "method": np.array(self.method),
            "params": np.array(json.dumps(self.params, sort_keys=True)),
        }
        for name in ("centroids", "fine_centroids", "fine_assignments", "fine_to_coarse"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_arrays(cls, arrays: Any) -> Partition:
        """Rebuilds a Partition from :meth:`to_arrays` output (a dict or an opened ``.npz``).

        Raises:
            DataError: a required array is missing.
        """
        try:
            params = json.loads(str(arrays["params"]))
            method = str(arrays["method"])
            assignments = np.asarray(arrays["assignments"], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"partition arrays lack {e}; recreate the partition") from None

        def get(name: str, dtype: Any) -> np.ndarray | None:
            return np.asarray(arrays[name], dtype=dtype) if name in arrays else None

        return cls(
            assignments=assignments,
            centroids=get("centroids", np.float32),
            fine_centroids=get("fine_centroids", np.float32),
            fine_assignments=get("fine_assignments", np.int64),
            method=method,
            params=params,
            fine_to_coarse=get("fine_to_coarse", np.int64),
        )

    def __repr__(self) -> str:
        # The default dataclass repr would print the arrays.
        return (
            f"Partition(method={self.method!r}, n={self.n}, sizes={self.sizes().tolist()}, "
            f"params={self.params})"
        )


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _check_features(features: Any, who: str) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0 or x.dtype.kind not in "fiu":
        raise DataError(
            f"{who}: features must be a non-empty numeric array (N, D), got "
            f"{x.dtype} {x.shape}; pass one feature row per item"
        )
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{who}: features contain NaN or inf; check the featuriser")
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (they have no direction)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row (squared L2), int64 (M,)."""
    d = (centroids * centroids).sum(1)[None, :] - 2.0 * (x @ centroids.T)  # ||x||² is constant
    return d.argmin(1).astype(np.int64)
