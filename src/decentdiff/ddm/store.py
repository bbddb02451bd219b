"""The partition of a RUN (``RUN/partition.npz``) and the checks every DDM command makes on it."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..run import Run, RunData
from ..training.checkpoint import atomic_write_bytes


@dataclass
class PartitionRecord:
    """Cluster id of every training image of a RUN.

    ``assignments[i]`` is the part of ``data.images[data.train_idx[i]]``.
    """

    assignments: np.ndarray  # int64 (N_train,)
    num_parts: int
    method: str
    features: str
    seed: int
    fingerprint: str  # of the data it was made from
    centroids: np.ndarray | None = None

    @property
    def partition_id(self) -> str:
        """A short hash of the assignments: experts and router record it, and must agree."""
        return hashlib.sha256(self.assignments.astype(np.int64).tobytes()).hexdigest()[:16]

    def parts(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.assignments == k) for k in range(self.num_parts)]

    def sizes(self) -> np.ndarray:
        """Training images per part (rows withdrawn by ``experts remove``, marked −1, excluded;
        a part added from another source by ``experts add`` has none here)."""
        a = self.assignments
        return np.bincount(a[a >= 0], minlength=self.num_parts)


def partition_path(run: Run) -> Path:
    return run.path / "partition.npz"


#: Keys of partition.npz beyond the record: the clustering itself (``kmeans_*``: fine centroids,
#: fine -> coarse map, parameters; enough to assign new images) and sources added by
#: ``experts add`` (``added_*``), the cluster prior of ``mixture`` routing (``prior_*``: sizes and
#: class x cluster counts). Readers that do not know them ignore them.
EXTRA_PREFIXES = ("kmeans_", "added_", "prior_")


def partition_extras(run: Run) -> dict[str, np.ndarray]:
    """The extra arrays of RUN/partition.npz (see :data:`EXTRA_PREFIXES`); {} if none."""
    path = partition_path(run)
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(EXTRA_PREFIXES)}


def save_partition(
    run: Run,
    rec: PartitionRecord,
    train_idx: np.ndarray,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write RUN/partition.npz atomically: the record, indices per part, and ``extra`` arrays
    (names must start with one of :data:`EXTRA_PREFIXES`)."""
    bad = [k for k in extra or {} if not k.startswith(EXTRA_PREFIXES)]
    if bad:
        raise ValueError(f"partition extras must start with {EXTRA_PREFIXES}: {bad}")
    arrays = {
        "assignments": rec.assignments.astype(np.int64),
        "train_idx": train_idx.astype(np.int64),
        "num_parts": np.int64(rec.num_parts),
        "method": np.str_(rec.method),
        "features": np.str_(rec.features),
        "seed": np.int64(rec.seed),
        "fingerprint": np.str_(rec.fingerprint),
    }
    if rec.centroids is not None:
        arrays["centroids"] = rec.centroids.astype(np.float32)
    for k, idx in enumerate(rec.parts()):
        arrays[f"part_{k}"] = train_idx[idx].astype(np.int64)  # indices into the source, per part
    arrays.update(extra or {})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = partition_path(run)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_partition(run: Run, data: RunData | None = None) -> PartitionRecord:
    """Read RUN/partition.npz; with ``data``, check it was made from that data and split."""
    path = partition_path(run)
    if not path.is_file():
        raise RunError(
            f"{run.path} has no partition: run `decentdiff partition {run.path} --data SOURCE --parts K`"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            rec = PartitionRecord(
                assignments=z["assignments"].astype(np.int64),
                num_parts=int(z["num_parts"]),
                method=str(z["method"]),
                features=str(z["features"]),
                seed=int(z["seed"]),
                fingerprint=str(z["fingerprint"]),
                centroids=z["centroids"] if "centroids" in z.files else None,
            )
            train_idx = z["train_idx"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        raise RunError(
            f"{path} is unreadable or incomplete; recreate it with `decentdiff partition {run.path} ...`"
        ) from None
    if data is not None:
        if rec.fingerprint != data.fingerprint:
            raise RunError(
                f"{path} was made from other data (fingerprint {rec.fingerprint[:12]}… vs "
                f"{data.fingerprint[:12]}…); partition again or use the original data"
            )
        if len(train_idx) != len(data.train_idx) or not np.array_equal(train_idx, data.train_idx):
            raise RunError(
                f"{path} was made with another train/held-out split; keep [data] heldout and "
                "split_seed as in run.toml, or partition again"
            )
    return rec


def check_expert_index(rec: PartitionRecord, k: int) -> None:
    if not 0 <= k < rec.num_parts:
        raise RunError(f"expert {k} out of range: the partition has experts 0..{rec.num_parts - 1}")


def expert_dir(run: Run, k: int) -> Path:
    return run.path / "experts" / str(k)
