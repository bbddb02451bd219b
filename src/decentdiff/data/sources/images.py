"""Decoding PIL images (folder:DIR, hf:NAME, and Tiny ImageNet in :mod:`decentdiff.data.imagenet`):
the :class:`ImageOptions` that bring images of any size and mode to one shape, the size and EXIF
checks made from a file's header before any pixel is decoded, and the sinks that stack decoded
images in memory or write them, in chunks, into a file for the data cache.

PIL is imported inside the functions, so that importing this module stays fast.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from decentdiff.data.sources.common import _check_count, _one_line, _warn
from decentdiff.errors import ConfigError, DataError

#: Images with a side shorter than this are refused: one pixel across is a dot or a line.
MIN_IMAGE_SIDE = 2
#: Images with more pixels than this (8192 x 8192) are refused from their header, before decoding.
MAX_IMAGE_PIXELS = 8192 * 8192
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


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


def _sink(spill: str | None) -> _ListSink | _SpillSink:
    return _SpillSink(spill) if spill else _ListSink()
