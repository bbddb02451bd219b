"""The array-file sources: ``idx:DIR`` (MNIST-format IDX files, gzipped or not) and ``npz:FILE``
(a NumPy archive with ``x`` images and optional ``y`` labels)."""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
import zlib

import numpy as np

from decentdiff.data.sources.common import (
    Loaded,
    _check_count,
    _labels_from_values,
    _one_line,
    _round_half_up,
)
from decentdiff.errors import DataError

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
