"""The ``folder:DIR`` source: PNG/JPEG/WebP images, one sub-folder per class or flat
(unlabeled), and the listing of image files that other folder-backed sources share."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from decentdiff.data.sources.images import ImageOptions, _decode_files, _sink
from decentdiff.errors import DataError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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
