"""Data larger than memory: the on-disk cache of decoded images and lazy row views over it.

A file-backed source (``folder:DIR``, ``idx:DIR``, ``npz:FILE``) is decoded once, in chunks, into
one entry of the cache::

    <cache>/data/<key>/images.npy   uint8 (N, C, H, W), read back with np.load(mmap_mode="r")
                       labels.npy   int64 (N,), when the data has labels
                       meta.json    format, spec, options, the files' stamp digest, shape,
                                    fingerprint, class names, skipped files

``<cache>`` is ``$DECENTDIFF_CACHE`` or ``~/.cache/decentdiff`` (the feature classifiers' cache
root too); ``DECENTDIFF_DATA_CACHE=0`` turns the data cache off (every command then decodes into
memory, as before). The key is a digest of the normalised spec, the image options
(``data.size``/``channels``/``skip_bad``) and the stamp of the files (names, sizes, modification
times): the fingerprint of the pixels can only be known after decoding, so it is recorded in
meta.json, not used as the key. An entry is written in a temporary folder and renamed into place
(atomic: a reader sees a whole entry or none, and two processes building the same entry do not
corrupt it). An entry whose meta.json is unreadable or made for other data, whose arrays have
another shape or dtype than meta.json says, or whose images.npy has another size than its header
implies (a truncated or padded file) is discarded and rebuilt, never trusted. Pixels altered in
place with the size kept are not detected (re-hashing every read would cost a full pass over the
data); delete the entry (or the ``data`` folder) to rebuild it.

:class:`ImageRows` is a row subset of such an array (the training part of a RUN, an expert's
shard) that gathers only the rows asked for, so nothing materialises the whole set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATA_CACHE_ENV",
    "FORMAT",
    "ImageRows",
    "StreamHash",
    "data_cache_dir",
    "data_cache_enabled",
    "default_cache_dir",
    "discard_entry",
    "entry_dir",
    "read_entry",
    "write_entry",
]

#: Set to 0 / off / false to decode into memory instead of the on-disk cache.
DATA_CACHE_ENV = "DECENTDIFF_DATA_CACHE"
#: Version of the entry layout and of how files are decoded into it; another version is rebuilt.
#: 2: EXIF orientation applied (an entry of version 1 holds such images unrotated).
FORMAT = 2
#: Rows per chunk when an entry is written or hashed (28 x 28 RGB: ~10 MB).
CHUNK_ROWS = 4096


def default_cache_dir() -> Path:
    """``$DECENTDIFF_CACHE`` if set, else ``~/.cache/decentdiff``."""
    env = os.environ.get("DECENTDIFF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decentdiff"


def data_cache_dir() -> Path:
    """The data cache: ``<cache>/data``."""
    return default_cache_dir() / "data"


def data_cache_enabled() -> bool:
    """False when ``DECENTDIFF_DATA_CACHE`` is 0, off, false or no."""
    return os.environ.get(DATA_CACHE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def entry_dir(want: dict[str, Any]) -> Path:
    """The entry folder of a source: ``<cache>/data/<digest of want>`` (32 hex characters)."""
    text = json.dumps(want, sort_keys=True, separators=(",", ":"))
    return data_cache_dir() / hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# The fingerprint, streamed
# --------------------------------------------------------------------------------------------------


class StreamHash:
    """``sources.fingerprint`` fed chunk by chunk: the same sha256 over the same bytes.

    Args:
        dtype: the images' dtype string (``np.dtype.str``, e.g. ``"|u1"``).
        shape: the shape of the whole images array, Python ints.
    """

    def __init__(self, dtype: str, shape: tuple[int, ...]) -> None:
        self._h = hashlib.sha256(b"decentdiff.dataset.v1\n")
        shape = tuple(int(s) for s in shape)
        self._h.update(f"images {dtype} {shape}\n".encode())

    def update(self, chunk: np.ndarray) -> None:
        """Adds the C-ordered bytes of the next rows."""
        self._h.update(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8))

    def finish(self, labels: np.ndarray | None) -> str:
        """Adds the labels (or their absence): the hex digest."""
        if labels is None:
            self._h.update(b"labels none\n")
        else:
            labels = np.ascontiguousarray(labels)
            self._h.update(f"labels {labels.dtype.str} {tuple(labels.shape)}\n".encode())
            self._h.update(labels.reshape(-1).view(np.uint8))
        return self._h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------------


def read_entry(directory: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """An intact entry made for ``want``: meta.json plus ``images`` (read-only memmap) and
    ``labels`` (int64 or None); None when it is missing, partial, corrupt or made for other data."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("want") != want:
            return None
        shape = tuple(int(s) for s in meta["shape"])
        path = directory / "images.npy"
        images = np.load(path, mmap_mode="r", allow_pickle=False)
        if (
            not isinstance(images, np.memmap)
            or images.dtype != np.uint8
            or images.shape != shape
            or len(shape) != 4
            or shape[1] not in (1, 3)
            or not images.flags.c_contiguous
            or os.path.getsize(path) != images.offset + images.nbytes
        ):
            return None
        labels = None
        if meta["labels"]:
            labels = np.load(directory / "labels.npy", allow_pickle=False)
            if labels.dtype != np.int64 or labels.shape != (shape[0],):
                return None
        if not isinstance(meta["fingerprint"], str) or len(meta["fingerprint"]) != 64:
            return None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return {**meta, "images": images, "labels": labels}


def discard_entry(directory: Path) -> None:
    """Removes an entry that cannot be trusted: renamed aside first (atomic), then deleted."""
    aside = directory.parent / f".discard-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(directory, aside)
    except OSError:
        return  # already gone (another process discarded or replaced it)
    shutil.rmtree(aside, ignore_errors=True)


def new_temp(directory: Path) -> Path:
    """A fresh temporary folder beside ``directory`` (same file system, for the rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def write_entry(
    tmp: Path,
    directory: Path,
    want: dict[str, Any],
    shape: tuple[int, int, int, int],
    chunks: Iterable[np.ndarray],
    labels: np.ndarray | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Writes images chunk by chunk, labels and meta.json into ``tmp``, renames it to
    ``directory`` and returns the entry as :func:`read_entry` does.

    When another process renamed an intact entry into place first, its entry is used and ours
    deleted (both come from the same files and options). ``tmp`` is always removed.
    """
    shape = tuple(int(s) for s in shape)
    try:
        hasher = StreamHash("|u1", shape)
        rows = 0
        with open(tmp / "images.npy", "wb") as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
                if chunk.shape[1:] != shape[1:]:
                    raise ValueError(f"chunk of shape {chunk.shape} in images of shape {shape}")
                f.write(chunk.tobytes())
                hasher.update(chunk)
                rows += chunk.shape[0]
            f.flush()
            os.fsync(f.fileno())
        if rows != shape[0]:
            raise ValueError(f"wrote {rows} rows of {shape[0]}")
        if labels is not None:
            labels = np.ascontiguousarray(labels, dtype=np.int64)
            np.save(tmp / "labels.npy", labels, allow_pickle=False)
        meta = {
            "format": FORMAT,
            "want": want,
            "shape": list(shape),
            "fingerprint": hasher.finish(labels),
            "labels": labels is not None,
            **extra,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for _ in range(3):
            try:
                os.rename(tmp, directory)
                break
            except OSError:  # an entry is there: another process was faster, or it is broken
                theirs = read_entry(directory, want)
                if theirs is not None:
                    return theirs
                discard_entry(directory)
        entry = read_entry(directory, want)
        if entry is None:
            raise OSError(f"the data cache entry {directory} could not be written")
        return entry
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


# --------------------------------------------------------------------------------------------------
# Row views
# --------------------------------------------------------------------------------------------------


class ImageRows:
    """Rows ``index`` of a uint8 (N, C, H, W) array (a memmap, usually), gathered on access.

    Indexing (an int, a slice, an index array) reads only those rows and returns a NumPy array;
    ``np.asarray(rows)`` materialises all of them (avoid it for large data). ``len``, ``shape``,
    ``dtype`` and ``ndim`` are those of the materialised array.
    """

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        if self.index.ndim != 1:
            raise ValueError(f"index must be 1-D, got shape {self.index.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.index.shape[0]), *(int(s) for s in self.base.shape[1:]))

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return int(self.base.ndim)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        sel = self.index[key]
        if np.ndim(sel) == 0:
            return np.array(self.base[int(sel)])
        return gather(self.base, sel)

    def subset(self, idx: np.ndarray) -> ImageRows:
        """The rows ``idx`` of these rows, still lazy."""
        return ImageRows(self.base, self.index[np.asarray(idx)])

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """The rows in order, ``size`` at a time."""
        for i in range(0, len(self), max(1, int(size))):
            yield self[i : i + size]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = gather(self.base, self.index)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageRows(n={len(self)}, shape={self.shape})"


def gather(base: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``base[idx]`` as a plain in-memory array (reads only those rows of a memmap)."""
    return np.asarray(np.take(base, np.asarray(idx, dtype=np.int64), axis=0))


def rows_of(images: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of ``images``: lazy (:class:`ImageRows`) for a memmap or an ImageRows,
    ``images[idx]`` (a copy, as before) for an in-memory array."""
    if isinstance(images, ImageRows):
        return images.subset(idx)
    if isinstance(images, np.memmap):
        return ImageRows(images, idx)
    return images[idx]
