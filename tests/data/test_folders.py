"""folder:DIR as users have them (mixed sizes, modes and formats; data.size, data.channels,
data.skip_bad), bad files, and the embedded colour set cmnist5k.

Expected pixels are computed here independently: PIL decodes and resizes, the crop and the grey
conversion are numpy; cmnist5k's colours are recomputed from sha256 and a float blend.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from decentdiff.data import sources
from decentdiff.data.sources import (
    CMNIST5K_BACKGROUNDS,
    CMNIST5K_STROKES,
    ImageOptions,
    cmnist5k_colours,
    load_source,
)
from decentdiff.data.sources.images import _shown_size
from decentdiff.errors import ConfigError, DataError


def one_line_error(exc_type, *needles):
    """pytest.raises that also checks one line and every needle in the message."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(exc_type)
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


def rand(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def expected_fit(path, size, grey=False):
    """Independent oracle: PIL decode -> RGB (or numpy luma) -> PIL bicubic resize of the short
    side to ``size`` -> numpy centre crop. Returns (H, W, 3) or (H, W)."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    if grey:  # Pillow's L conversion: (19595 R + 38470 G + 7471 B + 2^15) >> 16
        arr = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        arr = arr.astype(np.uint8)
    else:
        arr = rgb.astype(np.uint8)
    h, w = arr.shape[:2]
    short = min(h, w)
    nh = int(np.floor(h * size / short + 0.5))
    nw = int(np.floor(w * size / short + 0.5))
    resized = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def png_header(width, height):
    """A PNG that only has a header (IHDR + IEND): its size can be read, its pixels cannot."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def mixed(tmp_path):
    """A flat folder as users have it: PNG, JPEG, WebP; RGB, grey, RGBA, palette, 1-bit; sizes
    from 16x20 to 41x23."""
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(rand((30, 40, 3), 0)).save(d / "a_rgb.png")
    Image.fromarray(rand((50, 20), 1)).save(d / "b_grey.jpg", quality=90)
    Image.fromarray(rand((23, 41, 4), 2), "RGBA").save(d / "c_rgba.png")
    Image.fromarray(rand((24, 24, 3), 3)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        d / "d_palette.png"
    )
    Image.fromarray(rand((20, 16, 3), 4)).save(d / "e_rgb.webp", lossless=True)
    Image.fromarray(rand((17, 33), 5) > 127).save(d / "f_bits.png")
    Image.fromarray(rand((16, 16, 3), 6)).save(d / "g_photo.JPEG", quality=80)
    (d / "notes.txt").write_text("not an image, ignored by its name")
    return d


def test_mixed_folder_resized_to_rgb(mixed):
    ds = load_source(f"folder:{mixed}", size=12)
    names = sorted(p.name for p in mixed.iterdir() if p.suffix != ".txt")
    assert ds.labels is None and ds.shape == (3, 12, 12) and len(ds) == len(names) == 7
    for i, name in enumerate(names):
        want = expected_fit(mixed / name, 12)
        np.testing.assert_array_equal(ds.images[i].transpose(1, 2, 0), want, err_msg=name)
    # Grey files stay grey in RGB: three equal channels.
    grey = names.index("b_grey.jpg")
    assert (ds.images[grey, 0] == ds.images[grey, 1]).all()
    assert ds.fingerprint == sources.fingerprint(ds.images, None)


def test_mixed_folder_as_grey(mixed):
    ds = load_source(f"folder:{mixed}", size=9, channels=1)
    names = sorted(p.name for p in mixed.iterdir() if p.suffix != ".txt")
    assert ds.shape == (1, 9, 9)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(ds.images[i, 0], expected_fit(mixed / name, 9, grey=True))


def test_mixed_sizes_need_data_size(mixed):
    with one_line_error(DataError, "different sizes", "--set data.size=S", "a_rgb.png"):
        load_source(f"folder:{mixed}")


def test_size_changes_the_fingerprint_and_the_cache_key(mixed):
    a = load_source(f"folder:{mixed}", size=12)
    assert load_source(f"folder:{mixed}", size=12) is a
    b = load_source(f"folder:{mixed}", size=13)
    assert b.shape == (3, 13, 13) and b.fingerprint != a.fingerprint


def test_labelled_folder_of_mixed_sizes(tmp_path):
    for cls, seeds in (("cat", (0, 1)), ("dog", (2,))):
        (tmp_path / cls / "sub").mkdir(parents=True)
        for s in seeds:
            Image.fromarray(rand((10 + 3 * s, 14, 3), s)).save(tmp_path / cls / f"{s}.png")
    Image.fromarray(rand((8, 8), 9)).save(tmp_path / "cat" / "sub" / "nested.webp", lossless=True)
    ds = load_source(f"folder:{tmp_path}", size=8)
    assert ds.class_names == ("cat", "dog") and ds.shape == (3, 8, 8)
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1])  # cat/0, cat/1, cat/sub/nested, dog/2
    np.testing.assert_array_equal(
        ds.images[2].transpose(1, 2, 0), expected_fit(tmp_path / "cat" / "sub" / "nested.webp", 8)
    )


def test_grey_folder_to_three_channels(tmp_path):
    arr = rand((6, 6), 0)
    Image.fromarray(arr).save(tmp_path / "g.png")
    assert load_source(f"folder:{tmp_path}").shape == (1, 6, 6)
    ds = load_source(f"folder:{tmp_path}", channels=3)
    np.testing.assert_array_equal(ds.images[0], np.stack([arr] * 3))


def test_array_sources_follow_the_options():
    base = load_source("mnist5k")
    ds = load_source("mnist5k", size=14, channels=3)
    assert ds.shape == (3, 14, 14) and ds.fingerprint != base.fingerprint
    np.testing.assert_array_equal(ds.labels, base.labels)
    for i in (0, 4999):
        small = np.asarray(
            Image.fromarray(base.images[i, 0]).resize((14, 14), Image.Resampling.BICUBIC)
        )
        np.testing.assert_array_equal(ds.images[i], np.stack([small] * 3))
    # The default options give the data set exactly as before (fingerprints pinned from the
    # code before data.size existed, so that existing RUNs still resume).
    assert base.fingerprint.startswith("0f49d1f80461834e708b1d0efee31b9b")
    assert load_source("digits").fingerprint.startswith("3680b1e33639978a09047d6680e4d1c3")


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"size": 1}, "data.size"),
        ({"size": -4}, "data.size"),
        ({"size": 2.5}, "data.size"),
        ({"channels": 2}, "data.channels"),
        ({"skip_bad": 1.0}, "data.skip_bad"),
        ({"skip_bad": -0.1}, "data.skip_bad"),
        ({"skip_bad": float("nan")}, "data.skip_bad"),
    ],
)
def test_options_are_checked(kw, needle):
    with one_line_error(ConfigError, needle, "--set"):
        ImageOptions(**kw)
    with one_line_error(ConfigError, needle):
        load_source("digits", **kw)


# ------------------------------------------------------------------ unusable files and bad folders


def good_folder(path, n=4, size=(8, 8)):
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rand((size[1], size[0], 3), i)).save(path / f"ok{i}.png")
    return path


BAD_FILES = {
    "not-an-image": (lambda p: p.write_text("hello, I am text"), "cannot read image"),
    "truncated": (lambda p: p.write_bytes(png_bytes()[:40]), "cannot read image"),
    "one-pixel": (lambda p: Image.new("RGB", (1, 1)).save(p), "1x1 pixels"),
    "huge-header": (lambda p: p.write_bytes(png_header(20000, 20000)), "67,108,864 pixels"),
    "large-header": (lambda p: p.write_bytes(png_header(9000, 9000)), "9000x9000"),
    "symlink-loop": (lambda p: os.symlink(p.name, p), "symlink loop"),
    "broken-link": (lambda p: os.symlink("nowhere.png", p), "broken symlink"),
    "empty-file": (lambda p: p.write_bytes(b""), "cannot read image"),
}


def png_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray(rand((32, 32), 7)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_one_bad_file_is_a_one_line_error(tmp_path, case):
    make, needle = BAD_FILES[case]
    d = good_folder(tmp_path / "d")
    make(d / "bad.png")
    with one_line_error(DataError, "bad.png", needle, "data.skip_bad"):
        load_source(f"folder:{d}")


def test_huge_images_are_refused_from_the_header(tmp_path, monkeypatch):
    """The limit is applied before any pixel is decoded: a header-only PNG of 9000x9000 (which
    would fail to decode) is reported as too large, and decoding is never attempted."""
    d = good_folder(tmp_path / "d", n=1)
    (d / "big.png").write_bytes(png_header(9000, 9000))
    loads = []
    real_load = Image.Image.load
    monkeypatch.setattr(
        Image.Image, "load", lambda self: loads.append(self.size) or real_load(self)
    )
    with one_line_error(DataError, "big.png is 9000x9000 pixels", "limit of 67,108,864"):
        load_source(f"folder:{d}")
    assert (9000, 9000) not in loads


def test_a_real_large_image_is_refused(tmp_path):
    d = good_folder(tmp_path / "d", n=1)
    Image.new("L", (8193, 8193)).save(d / "big.png")  # compresses to a few kB
    with one_line_error(DataError, "big.png is 8193x8193 pixels"):
        load_source(f"folder:{d}")


def test_skip_bad_skips_and_counts(tmp_path, capsys):
    d = good_folder(tmp_path / "d", n=8)
    (d / "x_text.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(d / "y_dot.png")
    # 2 of 10 files are unusable: 0.2 allows 2.
    ds = load_source(f"folder:{d}", skip_bad=0.2)
    assert len(ds) == 8 and ds.shape == (3, 8, 8)
    assert any("x_text.png" in s for s in ds.skipped) and any("y_dot.png" in s for s in ds.skipped)
    err = capsys.readouterr().err
    assert "2 of 10 image files are unusable (1 not an image, 1 too small)" in err
    assert "skipped them (data.skip_bad = 0.2 allows 2)" in err and len(err.splitlines()) == 1
    np.testing.assert_array_equal(ds.images[0].transpose(1, 2, 0), rand((8, 8, 3), 0))
    # 0.15 allows 1 of 10: an error that counts them.
    with one_line_error(DataError, "2 of 10 image files are unusable", "data.skip_bad = 0.15"):
        load_source(f"folder:{d}", skip_bad=0.15)


def test_skip_bad_keeps_labels_aligned(tmp_path, capsys):
    good_folder(tmp_path / "a", n=3)
    good_folder(tmp_path / "b", n=3)
    (tmp_path / "a" / "ok1.png").write_text("damaged")
    ds = load_source(f"folder:{tmp_path}", skip_bad=0.2)
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.images[1].transpose(1, 2, 0), rand((8, 8, 3), 2))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "only.png").write_text("damaged")
    with one_line_error(DataError, "'c'", "unusable"):
        load_source(f"folder:{tmp_path}", skip_bad=0.3)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: None, "no PNG/JPEG/WebP images"),
        (lambda d: (d / "readme.txt").write_text("x"), "it holds readme.txt"),
        (lambda d: (d / "cls").mkdir(), "class folder 'cls' contains no"),
    ],
)
def test_folders_without_images(tmp_path, make, needle):
    d = tmp_path / "d"
    d.mkdir()
    make(d)
    with one_line_error(DataError, needle):
        load_source(f"folder:{d}")


def test_the_folder_itself_is_a_symlink_loop(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    with one_line_error(DataError, "symlink loop"):
        load_source(f"folder:{tmp_path / 'loop'}")


def test_a_looping_folder_link_is_not_followed(tmp_path):
    d = good_folder(tmp_path / "cls", n=2)
    os.symlink("..", d / "up")  # cls/up -> the data folder itself
    ds = load_source(f"folder:{tmp_path}")
    assert len(ds) == 2 and ds.class_names == ("cls",)


# ------------------------------------------------------------------ cmnist5k

#: Pinned: a change of the construction (palette, hash, blend) is a change of the data set.
CMNIST5K_FINGERPRINT = "e99ca430ab6a2d6cbbb4061ea31dee2c73e9316828dc28eea2d55ee2f8695a56"


def test_cmnist5k_construction():
    sources.clear_cache()
    ds = load_source("cmnist5k")
    grey = load_source("mnist5k")
    assert ds.shape == (3, 28, 28) and len(ds) == 5000 and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, grey.labels)
    assert ds.class_names == grey.class_names
    # The colours: recomputed from the documented hash, independently of the module.
    stroke, back = cmnist5k_colours()
    for i in (0, 1, 2, 4321, 4999):
        d = hashlib.sha256(f"decentdiff.cmnist5k.v1:{i}".encode()).digest()
        assert stroke[i] == int(d[:8].hex(), 16) % 3 and back[i] == int(d[8:16].hex(), 16) % 2
    # Every stroke on every background, about equally often (5000 / 6 = 833).
    combos = np.bincount(stroke * 2 + back, minlength=6)
    assert combos.min() > 760 and combos.max() < 910, combos
    fg = np.asarray(CMNIST5K_STROKES)[stroke]
    bg = np.asarray(CMNIST5K_BACKGROUNDS)[back]
    m = grey.images[:, 0].astype(np.float64) / 255  # (N, 28, 28)
    want = np.rint(bg[:, :, None, None] + m[:, None] * (fg - bg)[:, :, None, None])
    np.testing.assert_array_equal(ds.images, want.astype(np.uint8))
    # The digit mask is exactly mnist5k's non-zero pixels; full-intensity pixels are the stroke.
    differs = (ds.images != bg[:, :, None, None].astype(np.uint8)).any(axis=1)
    np.testing.assert_array_equal(differs, grey.images[:, 0] > 0)
    full = grey.images[:, 0] == 255
    n_full = full.sum()
    assert n_full > 0
    got = ds.images.transpose(0, 2, 3, 1)[full]
    np.testing.assert_array_equal(
        got, np.broadcast_to(fg[:, None, None, :], (*full.shape, 3))[full]
    )
    # Deterministic: loaded afresh it is the same data set, with a pinned fingerprint.
    sources.clear_cache()
    again = load_source("cmnist5k")
    assert again is not ds and again.fingerprint == ds.fingerprint
    assert ds.fingerprint == CMNIST5K_FINGERPRINT


def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 is shown turned 90° clockwise; a
    folder reads it as shown (numpy's rot90 is the oracle), so its sides match an upright image
    of the shown size without data.size. Orientations 3 (180°) and 2 (mirror) likewise."""
    cases = {"a_rot6.png": (6, lambda a: np.rot90(a, k=-1)),
             "b_rot3.png": (3, lambda a: np.rot90(a, k=2)),
             "c_mirror2.png": (2, lambda a: a[:, ::-1])}  # fmt: skip
    stored = {}
    for i, (name, (tag, _)) in enumerate(cases.items()):
        shape = (12, 20, 3) if tag == 6 else (20, 12, 3)  # the sideways one is stored 20 wide
        stored[name] = rand(shape, 10 + i)
        exif = Image.Exif()
        exif[0x0112] = tag
        Image.fromarray(stored[name]).save(tmp_path / name, exif=exif)
    upright = rand((20, 12, 3), 20)
    Image.fromarray(upright).save(tmp_path / "d_upright.png")
    ds = load_source(f"folder:{tmp_path}")
    assert ds.shape == (3, 20, 12)
    for i, (name, (_, shown)) in enumerate(cases.items()):
        np.testing.assert_array_equal(ds.images[i].transpose(1, 2, 0), shown(stored[name]))
    np.testing.assert_array_equal(ds.images[3].transpose(1, 2, 0), upright)


def test_reading_the_orientation_decodes_nothing(tmp_path, monkeypatch):
    """The size limits are checked from the header, before any decode: looking for an EXIF
    orientation must not decode a PNG (Pillow's getexif loads a PNG without an eXIf chunk)."""
    Image.fromarray(rand((10, 12, 3), 0)).save(tmp_path / "plain.png")
    with Image.open(tmp_path / "plain.png") as img:
        loaded = []
        real = img.load
        monkeypatch.setattr(img, "load", lambda: loaded.append(1) or real())
        assert _shown_size(img) == (12, 10) and loaded == []
