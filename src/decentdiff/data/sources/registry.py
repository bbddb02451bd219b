"""The registry of data sources and :func:`load_source`: spec parsing, the in-process cache, and
the on-disk cache of decoded images (:mod:`decentdiff.data.cache`) for file-backed sources."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from decentdiff.data.sources.common import _WARNINGS
from decentdiff.data.sources.dataset import Dataset
from decentdiff.data.sources.images import ImageOptions, _fit_arrays, _Spilled
from decentdiff.errors import DataError

#: A source's loader, called as :func:`register_source` describes.
Loader = Callable[..., Any]


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
