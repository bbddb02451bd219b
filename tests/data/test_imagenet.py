"""Tiny ImageNet read as it ships (a miniature tree written here: the layout, not the data), and a
RUN evaluated against a second source (its validation split): labels, names, fingerprints, refusals.

The expected labels and pixels are rebuilt here from the files written (sorted WordNet ids, the
annotations file, PIL decoding), not from the loader.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from decentdiff.config import Config
from decentdiff.data.sources import load_source
from decentdiff.errors import DataError, RunError
from decentdiff.run import Run, load_data

WNIDS = ["n02", "n01", "n03"]  # deliberately unsorted: labels follow the sorted ids
WORDS = {"n01": "goldfish, Carassius auratus", "n02": "tabby, tabby cat", "n03": "bullfrog"}


def _jpeg(path, seed, side=8, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format="JPEG", quality=95)


def make_tiny(root, per_class=3, val_per_class=2, side=8):
    """A miniature tiny-imagenet-200 tree; returns the val annotations {file: wnid}."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    with open(os.path.join(root, "words.txt"), "w") as f:
        f.write("n99\tsomething else\n")
        for w, text in WORDS.items():
            f.write(f"{w}\t{text}\n")
    for k, w in enumerate(WNIDS):
        for i in range(per_class):
            _jpeg(os.path.join(root, "train", w, "images", f"{w}_{i}.JPEG"), 100 * k + i, side)
        with open(os.path.join(root, "train", w, f"{w}_boxes.txt"), "w") as f:
            f.write("not an image\n")
    notes, n = {}, 0
    for w in WNIDS:
        for _ in range(val_per_class):
            name = f"val_{n}.JPEG"
            _jpeg(os.path.join(root, "val", "images", name), 1000 + n, side)
            notes[name] = w
            n += 1
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        for name, w in notes.items():
            f.write(f"{name}\t{w}\t0\t0\t7\t7\n")
    return notes


def _pixels(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def test_training_split_labels_names_and_pixels(tmp_path):
    root = str(tmp_path / "tiny-imagenet-200")
    make_tiny(root)
    ds = load_source(f"tinyimagenet:{root}")
    ids = sorted(WNIDS)
    assert ds.class_names == tuple(WORDS[w].split(",")[0] for w in ids)
    assert ds.shape == (3, 8, 8) and len(ds) == 9
    # Rows in the order of the sorted ids, then sorted file names; the boxes files are not images.
    i = 0
    for k, w in enumerate(ids):
        for j in range(3):
            assert ds.labels[i] == k
            path = os.path.join(root, "train", w, "images", f"{w}_{j}.JPEG")
            assert np.array_equal(ds.images[i], _pixels(path))
            i += 1
    # The same labels as reading the train folder as a plain class-folder tree.
    plain = load_source(f"folder:{root}/train")
    assert np.array_equal(plain.labels, ds.labels) and np.array_equal(plain.images, ds.images)


def test_validation_split_labels_from_annotations(tmp_path):
    root = str(tmp_path / "t")
    notes = make_tiny(root)
    val = load_source(f"tinyimagenet-val:{root}")
    order = sorted(notes)
    ids = sorted(WNIDS)
    assert list(val.labels) == [ids.index(notes[f]) for f in order]
    for row, f in enumerate(order):
        assert np.array_equal(val.images[row], _pixels(os.path.join(root, "val", "images", f)))
    assert val.class_names == load_source(f"tinyimagenet:{root}").class_names


def test_missing_words_file_names_classes_by_id(tmp_path):
    root = str(tmp_path / "t")
    make_tiny(root)
    os.remove(os.path.join(root, "words.txt"))
    assert load_source(f"tinyimagenet:{root}").class_names == tuple(sorted(WNIDS))


@pytest.mark.parametrize(
    "damage, needles",
    [
        ("missing_file", ["val_annotations.txt line 1", "not in val/images"]),
        ("unknown_class", ["n77", "not a class of wnids.txt"]),
        ("unlabelled_image", ["extra.JPEG", "has no line in val_annotations.txt"]),
        ("duplicate", ["a second time"]),
        ("no_wnids", ["holds no wnids.txt", "tiny-imagenet-200"]),
    ],
)
def test_bad_validation_folders_get_one_line(tmp_path, damage, needles):
    root = str(tmp_path / "t")
    notes = make_tiny(root)
    ann = os.path.join(root, "val", "val_annotations.txt")
    first = sorted(notes, key=lambda f: int(f[4:-5]))[0]
    if damage == "missing_file":
        os.remove(os.path.join(root, "val", "images", first))
    elif damage == "unknown_class":
        text = open(ann).read().replace(f"{first}\t{notes[first]}", f"{first}\tn77")
        open(ann, "w").write(text)
    elif damage == "unlabelled_image":
        _jpeg(os.path.join(root, "val", "images", "extra.JPEG"), 5)
    elif damage == "duplicate":
        open(ann, "a").write(f"{first}\t{notes[first]}\t0\t0\t1\t1\n")
    elif damage == "no_wnids":
        os.remove(os.path.join(root, "wnids.txt"))
    with pytest.raises(DataError) as info:
        load_source(f"tinyimagenet-val:{root}")
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_a_training_folder_not_in_wnids_is_refused(tmp_path):
    root = str(tmp_path / "t")
    make_tiny(root)
    _jpeg(os.path.join(root, "train", "n55", "images", "n55_0.JPEG"), 1)
    with pytest.raises(DataError, match=r"train/n55 is not a class of wnids\.txt"):
        load_source(f"tinyimagenet:{root}")


def _cfg(root, held=None, **data):
    cfg = Config()
    cfg.data.source = f"tinyimagenet:{root}"
    cfg.data.heldout_source = held if held is not None else f"tinyimagenet-val:{root}"
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_heldout_source_is_the_reference_and_all_of_the_source_trains(tmp_path):
    root = str(tmp_path / "t")
    notes = make_tiny(root)
    d = load_data(_cfg(root).data)
    assert np.array_equal(d.train_idx, np.arange(9))
    array, rows, labels = d.heldout()
    val = load_source(f"tinyimagenet-val:{root}")
    assert np.array_equal(array[rows], val.images) and np.array_equal(labels, val.labels)
    assert d.heldout_fingerprint == val.fingerprint and len(rows) == len(notes)
    # Without a held-out source, the held-out rows are a share of the source itself.
    plain = load_data(_cfg(root, held="").data)
    arr, rows, labels = plain.heldout()
    assert arr is plain.images and np.array_equal(labels, plain.labels[rows])
    assert len(np.intersect1d(rows, plain.train_idx)) == 0


def test_run_records_and_checks_the_heldout_fingerprint(tmp_path):
    root = str(tmp_path / "t")
    make_tiny(root)
    run = Run(tmp_path / "run")
    d = run.data(_cfg(root))
    recorded = run.read_toml()["data"]
    assert recorded["heldout_fingerprint"] == d.heldout_fingerprint
    assert recorded["heldout_source"] == f"tinyimagenet-val:{root}"
    run.data(_cfg(root))  # the same data again: accepted
    with pytest.raises(RunError, match="evaluated against") as info:
        run.data(_cfg(root, held=""))  # the same training data, another reference
    assert "\n" not in str(info.value)
    # Changed validation images: another fingerprint, refused.
    _jpeg(os.path.join(root, "val", "images", "val_0.JPEG"), 4242)
    with pytest.raises(RunError, match="evaluated against"):
        run.data(_cfg(root))


def test_heldout_source_of_another_shape_or_classes_is_refused(tmp_path):
    root, other = str(tmp_path / "t"), str(tmp_path / "o")
    make_tiny(root)
    make_tiny(other, side=12)
    cfg = _cfg(root, held=f"tinyimagenet-val:{other}")
    with pytest.raises(DataError, match=r"3x12x12 but the training data 3x8x8.*data.size=8"):
        load_data(cfg.data)
    cfg.data.size = 8  # resizes both: accepted
    assert load_data(cfg.data).heldout()[0].shape[1:] == (3, 8, 8)
    # A labelled folder with other class names is not a split of the same data.
    for name in ("a", "b"):
        _jpeg(str(tmp_path / "f" / name / "x.jpg"), 3)
    with pytest.raises(DataError, match="names its classes differently"):
        load_data(_cfg(root, held=f"folder:{tmp_path / 'f'}").data)


def test_a_heldout_source_identical_to_the_training_data_is_refused(tmp_path):
    root = str(tmp_path / "t")
    make_tiny(root)
    with pytest.raises(DataError, match="holds the same images as the training data"):
        load_data(_cfg(root, held=f"folder:{root}/train").data)


def test_training_reads_no_heldout_source(tmp_path):
    """An island (or a federated client) trains without a copy of the held-out source: the same
    training rows and fingerprint, and the held-out folder may be absent."""
    import shutil

    from decentdiff.run import training_only

    root = str(tmp_path / "t")
    make_tiny(root)
    cfg = _cfg(root)
    run = Run(tmp_path / "run")
    full = run.data(cfg)
    val = tmp_path / "val-copy"
    shutil.copytree(os.path.join(root, "val"), val)
    shutil.rmtree(os.path.join(root, "val"))  # this island has no validation images
    only = run.data(cfg, create=False, heldout=False)
    assert only.fingerprint == full.fingerprint
    assert np.array_equal(only.train_idx, full.train_idx) and only.heldout_images is None
    plain = load_data(training_only(cfg.data))
    assert np.array_equal(plain.train_idx, full.train_idx) and len(plain.heldout_idx) == 0
    with pytest.raises(DataError):
        run.data(cfg, create=False)  # evaluation does need it
    shutil.copytree(val, os.path.join(root, "val"))
    # Other training data is still refused without the held-out source.
    _jpeg(os.path.join(root, "train", WNIDS[0], "images", "extra.JPEG"), 77)
    with pytest.raises(RunError, match="was made from data"):
        run.data(cfg, create=False, heldout=False)
