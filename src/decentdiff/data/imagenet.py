"""Tiny ImageNet as it ships: ``tinyimagenet:DIR`` (training split) and ``tinyimagenet-val:DIR``
(the labelled validation split), DIR being the unpacked ``tiny-imagenet-200`` folder.

The layout read (Stanford CS231n's release)::

    DIR/wnids.txt                      one WordNet id per line: the classes
    DIR/words.txt                      "wnid<TAB>name, synonym, ..." (optional: class names)
    DIR/train/<wnid>/images/*.JPEG     500 training images per class
    DIR/val/images/*.JPEG              the validation images
    DIR/val/val_annotations.txt        "file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1" per image

Both splits share one label space: label k is the k-th WordNet id in sorted order (the order of
the class folders, so ``folder:DIR/train`` gives the same labels), and the class names are the
first name ``words.txt`` gives each id (the id itself when ``words.txt`` is absent). The
``test`` split has no labels and is not read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from decentdiff.data.sources import register_source
from decentdiff.data.sources.folder import _images_under, _is_image_name
from decentdiff.data.sources.images import _decode_files, _sink
from decentdiff.errors import DataError

__all__ = ["tiny_imagenet_classes"]


def _read_lines(path: str, key: str, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except FileNotFoundError:
        raise DataError(
            f"{key}: {what} {path} is missing; point the spec at the unpacked tiny-imagenet-200 "
            "folder (the one holding wnids.txt, train/ and val/)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{key}: cannot read {path} ({e}); restore the file") from None


def tiny_imagenet_classes(root: str, key: str = "tinyimagenet") -> tuple[list[str], list[str]]:
    """(WordNet ids sorted, one display name per id) of a tiny-imagenet-200 folder.

    Raises:
        DataError: wnids.txt missing, empty or repeating an id.
    """
    wnids = [w.strip() for w in _read_lines(os.path.join(root, "wnids.txt"), key, "class list")]
    wnids = [w for w in wnids if w]
    if not wnids:
        raise DataError(f"{key}: wnids.txt lists no classes; restore it from the download")
    if len(set(wnids)) != len(wnids):
        dup = next(w for w in wnids if wnids.count(w) > 1)
        raise DataError(f"{key}: wnids.txt lists {dup} twice; restore it from the download")
    wnids = sorted(wnids)
    names = dict.fromkeys(wnids, "")
    words = os.path.join(root, "words.txt")
    if os.path.isfile(words):
        for line in _read_lines(words, key, "name list"):
            wnid, _, text = line.partition("\t")
            if wnid in names and not names[wnid]:
                names[wnid] = text.split(",")[0].strip()
    return wnids, [names[w] or w for w in wnids]


def _check_root(key: str, root: str) -> None:
    if not os.path.isdir(root):
        raise DataError(f"{key}: is not a directory; give the unpacked tiny-imagenet-200 folder")
    if not os.path.isfile(os.path.join(root, "wnids.txt")):
        inner = os.path.join(root, "tiny-imagenet-200")
        hint = f" (did you mean {inner}?)" if os.path.isdir(inner) else ""
        raise DataError(
            f"{key}: holds no wnids.txt{hint}; give the unpacked tiny-imagenet-200 folder "
            "(with wnids.txt, train/ and val/)"
        )


def _load_train(key: str, root: str, options: Any, spill: str | None = None) -> Any:
    """The training split: ``train/<wnid>/images/*``, labelled by the sorted WordNet ids."""
    _check_root(key, root)
    wnids, names = tiny_imagenet_classes(root, key)
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        raise DataError(f"{key}: has no train/ folder; unpack the whole tiny-imagenet-200 archive")
    present = sorted(e for e in os.listdir(train) if os.path.isdir(os.path.join(train, e)))
    unknown = sorted(set(present) - set(wnids))
    if unknown:
        raise DataError(
            f"{key}: train/{unknown[0]} is not a class of wnids.txt ({len(unknown)} such folders); "
            "add the id to wnids.txt or remove the folder"
        )
    files, labels = [], []
    for k, wnid in enumerate(wnids):
        folder = os.path.join(train, wnid, "images")
        found = _images_under(folder) if os.path.isdir(folder) else []
        if not found:
            raise DataError(
                f"{key}: class {wnid} of wnids.txt has no images in train/{wnid}/images; "
                "restore them or remove the id from wnids.txt"
            )
        files += [(os.path.relpath(p, root), p) for p in found]
        labels += [k] * len(found)
    images, kept, skipped = _decode_files(files, key, options, _sink(spill))
    return images, np.asarray(labels, dtype=np.int64)[kept], tuple(names), skipped


def _load_val(key: str, root: str, options: Any, spill: str | None = None) -> Any:
    """The validation split: ``val/images/*`` labelled by ``val/val_annotations.txt``, in the
    file names' sorted order."""
    _check_root(key, root)
    wnids, names = tiny_imagenet_classes(root, key)
    label_of = {w: k for k, w in enumerate(wnids)}
    folder = os.path.join(root, "val", "images")
    if not os.path.isdir(folder):
        raise DataError(
            f"{key}: has no val/images folder; unpack the whole tiny-imagenet-200 archive"
        )
    notes = os.path.join(root, "val", "val_annotations.txt")
    annotated: dict[str, int] = {}
    for n, line in enumerate(_read_lines(notes, key, "validation labels"), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"val_annotations.txt line {n}"
        if len(fields) < 2 or not fields[0].strip():
            raise DataError(
                f"{key}: {where} is not 'file<TAB>wnid...' ({line[:60]!r}); restore the file"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise DataError(
                f"{key}: {where} labels {name} with {wnid!r}, which is not a class of wnids.txt; "
                "correct the line or add the id to wnids.txt"
            )
        if name in annotated:
            raise DataError(f"{key}: {where} labels {name} a second time; keep one line per image")
        if not os.path.isfile(os.path.join(folder, name)):
            raise DataError(
                f"{key}: {where} names {name}, which is not in val/images; "
                "restore the image or delete the line"
            )
        annotated[name] = label_of[wnid]
    if not annotated:
        raise DataError(f"{key}: val_annotations.txt labels no image; restore it from the download")
    loose = sorted(e for e in os.listdir(folder) if _is_image_name(e) and e not in annotated)
    if loose:
        raise DataError(
            f"{key}: val/images/{loose[0]} has no line in val_annotations.txt ({len(loose)} such "
            "images); add their labels or remove them"
        )
    order = sorted(annotated)
    files = [(f"val/images/{f}", os.path.join(folder, f)) for f in order]
    images, kept, skipped = _decode_files(files, key, options, _sink(spill))
    labels = np.asarray([annotated[f] for f in order], dtype=np.int64)[kept]
    return images, labels, tuple(names), skipped


register_source(
    "tinyimagenet",
    _load_train,
    "tinyimagenet:DIR",
    "Tiny ImageNet's training split as it ships (DIR = tiny-imagenet-200), names from words.txt",
    arg="path",
    fits=True,
    spills=True,
)
register_source(
    "tinyimagenet-val",
    _load_val,
    "tinyimagenet-val:DIR",
    "Tiny ImageNet's validation split, labels from val/val_annotations.txt (a held-out source)",
    arg="path",
    fits=True,
    spills=True,
)
